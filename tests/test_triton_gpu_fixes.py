"""Issue 13's fixes of the triton backend, on the interpreter (and the same cases on a GPU):
wide windows without a register halo, masked (-inf) classes, the in-kernel NaN/+inf flag,
the greedy at wide radii, exact image means, and the device guard of every launch."""

from _triton_env import DEVICES, interpret  # noqa: F401,I001  (interpreter set-up first)

import contextlib

import pytest
import torch

import cbda
from cbda.errors import InputError
from cbda.reference import reference_score
from cbda.scores import ScoreSpec
from cbda.triton import greedy as tg
from cbda.triton import score as ks
from cbda.triton import window as tw
from helpers import POISONS, poisoned_logits, triton_greedy_case, brute_greedy_sequence, random_logits, tie_scores


def _picks(sel):
    return list(zip(sel.image_ids.tolist(), sel.ys.tolist(), sel.xs.tolist()))


def _masked(b=2, c=5, h=6, w=7, seed=0):
    """Masked classes: a whole channel, scattered entries, and the leading class 0 (the first
    logit of the online softmax) at -inf for many pixels; never a whole pixel."""
    x = random_logits(b, c, h, w, seed=seed)
    g = torch.Generator().manual_seed(seed + 11)
    x[0, 3] = float("-inf")
    holes = torch.rand(x.shape, generator=g) < 0.25
    holes[:, c - 1] = False
    x[holes] = float("-inf")
    x[:, 0, ::2] = float("-inf")
    return x


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("radius", [3, 5])
def test_wide_radius_window_pass_matches_reference(device, radius):
    # several column tiles and row strips: COL_TILE/ROW_STRIP shrunk so tiny maps span many
    logits = random_logits(2, 4, 9, 11, seed=radius).to(device)
    ids = torch.tensor([1, 0], device=device)
    with _tiles(5, 4):
        s, lab = ks.score_maps(logits, "ripu", radius, (19, 23), ids)
    rs, rl = reference_score(logits.cpu(), ScoreSpec("ripu", radius, (19, 23)), ids.cpu())
    assert torch.equal(lab.cpu(), rl)
    torch.testing.assert_close(s.cpu(), rs, rtol=1e-5, atol=1e-6)


@contextlib.contextmanager
def _tiles(rows, cols):
    old = tw.ROW_STRIP, tw.COL_TILE
    tw.ROW_STRIP, tw.COL_TILE = rows, cols
    try:
        yield
    finally:
        tw.ROW_STRIP, tw.COL_TILE = old


@pytest.mark.parametrize("device", DEVICES)
def test_fused_kernel_refuses_radius_past_its_halo(device):
    x = random_logits(1, 3, 4, 4).to(device)
    with pytest.raises(ValueError, match="radius"):
        ks.run_fused(x, 0, ks.MAX_FUSED_RADIUS + 1, (4, 4), torch.tensor([0], device=device))


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("strategy,radius", [("da", 3), ("ra", 4), ("cbda", 3)])
def test_wide_radius_rounds_match_reference(device, strategy, radius):
    logits = random_logits(3, 4, 6, 8, seed=2).to(device)
    kw = dict(budget=0.4, rounds=2, strategy=strategy, radius=radius, out_size=(15, 18), image_ids=[2, 7, 4],
              num_images=8, subset=True)
    a = cbda.select(logits, backend="triton", **kw)
    r = cbda.select(logits.cpu(), backend="reference", **kw)
    assert _picks(a) == _picks(r)
    torch.testing.assert_close(a.scores, r.scores, rtol=1e-5, atol=1e-6)
    assert torch.equal(a.predicted_counts, r.predicted_counts)


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("heuristic,radius,out_size", [
    ("ripu", 0, (11, 13)), ("ripu", 1, (11, 13)), ("ripu", 1, None), ("ripu", 2, (11, 13)), ("ripu", 3, (11, 13)),
    ("entropy", 0, None), ("margin", 0, (11, 13)), ("least_confidence", 0, (11, 13)), ("ripu_pixel", 0, (11, 13)),
])
def test_masked_classes_score_like_the_reference(device, heuristic, radius, out_size):
    x = _masked(seed=radius)
    ids = torch.tensor([0, 1])
    s, lab = ks.score_maps(x.to(device), heuristic, radius, out_size, ids.to(device))
    rs, rl = reference_score(x, ScoreSpec(heuristic, radius, out_size), ids)
    assert torch.isfinite(rs).all() and torch.isfinite(s.cpu()).all()
    assert torch.equal(lab.cpu(), rl)
    torch.testing.assert_close(s.cpu(), rs, rtol=1e-5, atol=1e-6)


def test_reference_upsampling_keeps_weight_zero_masked_taps_out():
    # plain interpolation makes 0 * -inf = NaN at every output row/column that lands exactly
    # on a source row/column next to a masked one
    x = torch.zeros(1, 2, 3, 3)
    x[0, 0, 1] = float("-inf")
    up = cbda.reference.scores.upsample_logits(x, (5, 5))
    assert not torch.isnan(up).any()
    assert torch.isneginf(up[0, 0, 1:4]).all() and torch.isfinite(up[0, 0, [0, 4]]).all()


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("poison", POISONS)
@pytest.mark.parametrize("call", ["score", "da", "wide"])
def test_nonfinite_logits_raise_from_the_kernel_flag(device, poison, call):
    x = poisoned_logits(poison, seed=1)
    x = x.to(device)
    for backend in ("triton", "reference"):
        with pytest.raises(InputError, match="logits"):
            if call == "score":
                cbda.score(x, out_size=(9, 11), backend=backend)
            elif call == "wide":
                cbda.score(x, radius=4, out_size=(9, 11), backend=backend)
            else:
                cbda.select(x, budget=0.2, strategy=call, out_size=(9, 11), num_images=2, backend=backend)


def test_validation_does_not_scan_the_logits(monkeypatch):
    # the check lives in the kernels; the argument validation must not add a full pass
    from cbda.api import validate

    def boom(*a, **k):
        raise AssertionError("validation scanned the logits")

    monkeypatch.setattr(validate.torch, "isfinite", boom)
    validate.check_logits(torch.full((1, 3, 2, 2), float("nan")))


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("radius", [3, 8])
def test_greedy_wide_radius_equals_brute_force(device, radius):
    b, h, w = 2, 23, 29
    scores = tie_scores(b, h, w, seed=radius, levels=3)
    blocked = torch.rand(b, h, w, generator=torch.Generator().manual_seed(radius)) < 0.1
    quota = 20
    got = triton_greedy_case(scores, blocked, radius, quota, device, chunk=8)
    for i in range(b):
        want = brute_greedy_sequence(scores[i].numpy(), blocked[i].numpy(), radius, i, quota)
        assert got[i] == [(y, x) for _, _, y, x in want]


@pytest.mark.parametrize("device", DEVICES)
def test_image_strategy_ranks_near_ties_exactly(device):
    # image means that differ by far less than a float32 reduction's rounding: a pairwise
    # (GPU-like) sum and a sequential one disagree on their order, the exact means do not
    h, w = 64, 64
    base = torch.full((h, w), 0.1)
    s = torch.stack([base.clone() for _ in range(4)])
    s[1, 0, 0] += 2e-8  # +2e-8 / 4096 on the mean: below float32 resolution of the mean
    s[2, 0, 0] -= 2e-8
    s[3, 5, 5] += 6e-8
    kw = dict(scores=s.to(device), budget=1.0, rounds=2, strategy="image", image_ids=[0, 1, 2, 3], num_images=4)
    a = cbda.select(backend="triton", **kw)
    r = cbda.select(backend="reference", scores=s, **{k: v for k, v in kw.items() if k != "scores"})
    assert a.image_ids.tolist() == r.image_ids.tolist() == [3, 1]


def test_exact_means_are_exact():
    from fractions import Fraction

    from cbda.backends.base import exact_means

    g = torch.Generator().manual_seed(0)
    x = torch.randn(3, 9, 13, generator=g) * torch.tensor([1e-30, 1.0, 1e30]).view(3, 1, 1)
    x[0, 0, 0] = 1e-45  # subnormal
    x[1, 0, 0] = -0.0
    m = exact_means(x)
    for i in range(3):
        want = float(sum(Fraction(v) for v in x[i].flatten().tolist()) / x[i].numel())
        assert m[i].item() == want


class _Recorder:
    """Stands in for torch.cuda.device: records which device is current at each launch."""

    def __init__(self):
        self.stack = ["cuda:0"]  # cuda:0 current, as in the bug report
        self.launches = []

    def device(self, dev):
        rec = self

        class Ctx:
            def __enter__(self):
                rec.stack.append(str(torch.device(dev)))

            def __exit__(self, *exc):
                rec.stack.pop()

        return Ctx()

    def kernel(self, name):
        rec = self

        class K:
            def __getitem__(self, grid):
                def launch(*args, **kwargs):
                    rec.launches.append((name, rec.stack[-1]))
                return launch

        return K()


def test_device_guard_makes_the_tensors_device_current(monkeypatch):
    rec = _Recorder()
    monkeypatch.setattr(ks.torch.cuda, "device", rec.device)
    with ks.device_guard(torch.device("cuda", 1)):
        assert rec.stack[-1] == "cuda:1"
    assert rec.stack[-1] == "cuda:0"
    with ks.device_guard(torch.device("cpu")):
        assert rec.stack[-1] == "cuda:0"  # off CUDA: nothing to switch


def test_every_launch_runs_under_the_guard(monkeypatch):
    # every kernel of the backend launched from its public entry points, with the tensors
    # on "cuda:1" (the guard is fed the tensors' device) while "cuda:0" is current
    rec = _Recorder()
    monkeypatch.setattr(ks.torch.cuda, "device", rec.device)
    target = torch.device("cuda", 1)
    real_guard = ks.device_guard

    def guard(dev):
        assert dev.type == "cpu"  # the test's tensors; pretend they live on cuda:1
        return real_guard(target)

    for mod in (ks, tg):
        monkeypatch.setattr(mod, "device_guard", guard)
    monkeypatch.setattr(ks, "fused_score_kernel", rec.kernel("fused"))
    monkeypatch.setattr(ks, "emit_kernel", rec.kernel("emit"))
    monkeypatch.setattr(tg, "greedy_scan_kernel", rec.kernel("greedy"))
    monkeypatch.setattr(tw, "window_score_kernel", rec.kernel("window"))
    x = random_logits(1, 3, 4, 4)
    ids = torch.tensor([0])
    ks.score_maps(x, "ripu", 1, (6, 6), ids)
    ks.score_maps(x, "ripu", 4, (6, 6), ids)
    cand = ks.Candidates(36, torch.device("cpu"))
    ks.run_emit(torch.rand(1, 6, 6), None, ids, None, None, None, cand)
    tg.greedy_scan(torch.arange(4), torch.tensor([0, 4]), 1, (6, 6), 1, 2, seg_out=False)
    names = [n for n, _ in rec.launches]
    assert set(names) == {"fused", "window", "emit", "greedy"}
    assert all(d == "cuda:1" for _, d in rec.launches), rec.launches
