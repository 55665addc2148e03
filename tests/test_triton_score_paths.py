"""The fused score kernel's specialised paths (issue 15, part 4) against the reference.

- C <= 32: a pixel's logits stay in registers (unrolled classes); C > 32 loops over the
  classes and reads the logits once per pass.
- r = 1, C <= 32: the 3×3 label window is counted bit-sliced from one-hot words (a class
  in bit 31 included) and the impurity read from a per-window-size table; r = 2 and
  C > 32 count per class.

Runs on the Triton interpreter (the GPU cases run the same code on CUDA, marked ``gpu``).
"""

from _triton_env import DEVICES, interpret  # noqa: F401,I001  (interpreter set-up first)

import pytest
import torch

from cbda.reference import reference_score
from cbda.scores import LOG_EPS, ScoreSpec
from cbda.triton import score as ks
from helpers import random_logits


def _blocky_logits(c, h, w, seed, classes, block=2):
    """Logits whose argmax is constant on block×block patches drawn from ``classes``: windows
    with one label (q = 1), two or three labels and every count in between, plus a margin
    large enough that the upsampled argmax is the patch's class away from patch borders."""
    g = torch.Generator().manual_seed(seed)
    x = random_logits(1, c, h, w, seed=seed, scale=0.5)
    hb, wb = -(-h // block), -(-w // block)
    pick = torch.tensor(classes)[torch.randint(0, len(classes), (hb, wb), generator=g)]
    lab = pick.repeat_interleave(block, 0).repeat_interleave(block, 1)[:h, :w]
    x[0].scatter_add_(0, lab[None], torch.full((1, h, w), 6.0))
    return x


def _check(x, heuristic, radius, out_size, device, rtol=1e-5, atol=1e-6):
    ids = torch.tensor([3] * x.shape[0])
    s, lab = ks.score_maps(x.to(device), heuristic, radius, out_size, ids.to(device))
    rs, rl = reference_score(x, ScoreSpec(heuristic, radius, out_size), ids)
    assert torch.equal(lab.cpu(), rl)
    torch.testing.assert_close(s.cpu(), rs, rtol=rtol, atol=atol)
    return s.cpu(), rs, rl


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("c,classes", [(2, [0, 1]), (19, [0, 7, 18]), (32, [0, 30, 31]), (32, [31])])
def test_bit_sliced_window_counts_match_the_reference(device, c, classes):
    # few labels per window (ties of every count 1..9), the image border (windows of 4 and
    # 6 pixels) and class 31, the sign bit of the one-hot word
    x = _blocky_logits(c, 9, 12, seed=c + len(classes), classes=classes)
    s, rs, rl = _check(x, "ripu", 1, None, device)
    # a uniform window scores about -3e-7·u, below the absolute tolerance: relative only
    # (an impurity formed as ln n - Σ n_c ln n_c / n would cancel to ~10 % here)
    mx = torch.nn.functional.max_pool2d(rl[:, None].float(), 3, 1, 1)[:, 0]
    mn = -torch.nn.functional.max_pool2d(-rl[:, None].float(), 3, 1, 1)[:, 0]
    uni = mx == mn
    assert uni.any()
    torch.testing.assert_close(s[uni], rs[uni], rtol=1e-5, atol=0.0)


@pytest.mark.parametrize("device", DEVICES)
def test_bit_sliced_window_with_upsampling_and_tiles(device):
    # upsampled, several tiles per image (owned 14×30 blocks, halos across tile borders)
    x = _blocky_logits(19, 9, 11, seed=5, classes=[2, 3, 4, 5])
    _check(x, "ripu", 1, (33, 70), device)


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("heuristic,radius", [("ripu", 1), ("ripu", 2), ("ripu", 0), ("entropy", 0), ("margin", 0),
                                              ("least_confidence", 0)])
def test_more_than_32_classes_loop_over_the_classes(device, heuristic, radius):
    x = random_logits(1, 37, 5, 6, seed=radius)
    x[0, 36, 1:3, 1:4] += 9.0  # the top class index lands in the labels
    _check(x, heuristic, radius, (9, 11), device)


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_low_precision_logits_at_cityscapes_classes(device, dtype):
    # C = 19 in registers, two-byte loads widened per tap
    x = random_logits(1, 19, 5, 7, seed=9, dtype=dtype)
    ids = torch.tensor([0])
    s, lab = ks.score_maps(x.to(device), "ripu", 1, (17, 25), ids.to(device))
    rs, rl = reference_score(x, ScoreSpec("ripu", 1, (17, 25)), ids)
    assert torch.equal(lab.cpu(), rl)
    torch.testing.assert_close(s.cpu(), rs, rtol=1e-5, atol=1e-6)


def test_impurity_table_holds_the_reference_class_terms():
    t = ks.impurity_table(torch.device("cpu")).reshape(10, 16)
    for n in range(1, 10):
        for k in range(1, n + 1):
            q = torch.tensor(k / n, dtype=torch.float64).to(torch.float32)
            assert t[n, k] == q * torch.log(q + LOG_EPS)
        assert (t[n, n + 1 :] == 0).all() and t[n, 0] == 0


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("nprog", [1, 4, 7])
@pytest.mark.parametrize("radius", [0, 1, 2])
def test_persistent_programs_step_through_every_tile(device, nprog, radius, monkeypatch):
    # fewer programs than tiles: each steps by nprog tiles with carries across tile columns,
    # rows and images (3 images of 2×3 tiles at r = 1)
    monkeypatch.setattr(ks, "_num_programs", lambda ntiles, dev: min(ntiles, nprog))
    x = random_logits(3, 4, 9, 11, seed=4)
    _check(x, "ripu", radius, (20, 70), device)


def test_logits_spanning_2_31_elements_per_image_are_refused():
    # tap offsets inside one image are int32; a (meta) tensor with a huge class stride
    x = torch.empty(1, 3, 4, 4, device="meta").as_strided((1, 3, 4, 4), (3 * 2**30, 2**30, 4, 1))
    with pytest.raises(ValueError, match="logits: one image spans"):
        ks.run_fused(x, 0, 1, (8, 8), torch.zeros(1, dtype=torch.int64, device="meta"))


@pytest.mark.parametrize("device", DEVICES)
def test_a_fused_launch_reads_nothing_back_to_the_host(device):
    # the scales, the seed hash and the impurity table are made without a tensor read
    from sync_probe import SyncProbe

    x = random_logits(2, 5, 4, 6, seed=1).to(device)
    cand = ks.Candidates(2 * 9 * 13, torch.device(device))
    hist = torch.zeros(5, dtype=torch.int64, device=device)
    ks._IMP_TABLES.clear()
    with SyncProbe() as probe:
        ks.run_fused(x, 0, 1, (9, 13), torch.tensor([4, 2], device=device), seed=2**33 + 5, cand=cand, hist=hist)
    assert probe.total == 0, dict(probe.sites)
    assert int(hist.sum()) == 2 * 9 * 13
