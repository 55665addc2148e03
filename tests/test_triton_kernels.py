"""Triton kernels against the reference: scores, labels, histogram, greedy, keys, top-K.

Runs on the CPU through the Triton interpreter (tiny shapes: the interpreter is slow) and,
when a GPU is present, the same cases on CUDA (marked ``gpu``).
"""

from _triton_env import DEVICES, interpret  # noqa: F401,I001  (interpreter set-up first)

import numpy as np
import pytest
import torch

from cbda.reference import reference_score
from cbda.reference.select import sort_picks
from cbda.scores import ScoreSpec, random_scores
from cbda.triton.score import Candidates, run_fused, score_maps
from cbda.triton.topk import RoundBuffer, desc_score_key, order_desc
from helpers import triton_greedy_case, brute_greedy_sequence, random_logits, tie_scores

# dtype -> (rtol, atol) of the scores against the float32 reference on the same input
TOL = {torch.float32: (1e-5, 1e-6), torch.bfloat16: (1e-5, 1e-6), torch.float16: (1e-5, 1e-6)}


def _ref(logits, heuristic, radius, out_size, ids, seed=0):
    return reference_score(logits.cpu(), ScoreSpec(heuristic, radius, out_size, seed), ids.cpu())


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize(
    "heuristic,radius",
    [("ripu", 0), ("ripu", 1), ("ripu", 2), ("entropy", 1), ("margin", 1), ("least_confidence", 1), ("ripu_pixel", 1)],
)
def test_scores_and_labels_match_reference(device, heuristic, radius):
    logits = random_logits(2, 4, 6, 8, seed=3).to(device)
    ids = torch.tensor([5, 1], device=device)
    s, lab = score_maps(logits, heuristic, radius, (12, 16), ids)
    rs, rl = _ref(logits, heuristic, radius, (12, 16), ids)
    assert s.dtype == torch.float32 and lab.dtype == torch.int64 and s.shape == (2, 12, 16)
    torch.testing.assert_close(s.cpu(), rs, rtol=1e-5, atol=1e-6)
    assert torch.equal(lab.cpu(), rl)


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_low_precision_logits_upcast_like_the_reference(device, dtype):
    logits = random_logits(1, 5, 5, 7, seed=4, dtype=dtype).to(device)
    ids = torch.tensor([0], device=device)
    s, lab = score_maps(logits, "ripu", 1, (9, 13), ids)
    rs, rl = _ref(logits, "ripu", 1, (9, 13), ids)
    torch.testing.assert_close(s.cpu(), rs, rtol=TOL[dtype][0], atol=TOL[dtype][1])
    assert torch.equal(lab.cpu(), rl)


@pytest.mark.parametrize("device", DEVICES)
def test_random_is_bit_identical_with_64_bit_ids(device):
    logits = random_logits(3, 3, 4, 5, seed=0).to(device)
    ids = torch.tensor([0, 2**33 + 7, 123456789], device=device)
    s, _ = score_maps(logits, "random", 1, (7, 11), ids, seed=2**32 + 99)
    assert torch.equal(s.cpu(), random_scores(ids.cpu(), 7, 11, 2**32 + 99))


@pytest.mark.parametrize("device", DEVICES)
def test_no_upsampling_non_contiguous_and_multi_tile(device):
    # channels-last strides, no resize, and a map wider than one tile (several programs,
    # halos across tile borders)
    base = random_logits(1, 3, 20, 70, seed=8)
    logits = base.to(device).to(memory_format=torch.channels_last)
    ids = torch.tensor([0], device=device)
    s, lab = score_maps(logits, "ripu", 1, None, ids)
    rs, rl = _ref(base, "ripu", 1, None, ids)
    torch.testing.assert_close(s.cpu(), rs, rtol=1e-5, atol=1e-6)
    assert torch.equal(lab.cpu(), rl)


@pytest.mark.parametrize("device", DEVICES)
def test_histogram_candidates_and_determinism(device):
    logits = random_logits(2, 4, 6, 8, seed=6).to(device)
    ids = torch.tensor([3, 0], device=device)
    weights = torch.tensor([1.0, 0.5, 0.25, 2.0], device=device)
    blocked = torch.zeros(2 * 12 * 16, dtype=torch.uint8, device=device)
    blocked[::7] = 1
    rs, rl = _ref(logits, "ripu", 1, (12, 16), ids)
    # the cut-off sits exactly on a score, so the expected set comes from the kernel's own
    # maps (the same arithmetic), which match the reference within float tolerance
    ms, ml = score_maps(logits, "ripu", 1, (12, 16), ids)
    torch.testing.assert_close(ms.cpu(), rs, rtol=1e-5, atol=1e-6)
    assert torch.equal(ml.cpu(), rl)
    ws = (ms.cpu() * weights.cpu()[rl]).flatten()
    cut = (torch.tensor([float(ws.median())], device=device), torch.tensor([10**9], device=device))
    runs = []
    for _ in range(2):
        hist = torch.zeros(4, dtype=torch.int64, device=device)
        cand = Candidates(2 * 12 * 16, torch.device(device))
        cand.score.fill_(float("nan"))  # poison: every slot we read must be written
        run_fused(logits, 0, 1, (12, 16), ids, weights=weights, blocked=blocked, cutoff=cut, cand=cand, hist=hist)
        n = int(cand.count.item())
        perm = torch.sort(cand.li[:n].cpu()).indices
        runs.append((cand.li[:n].cpu()[perm], cand.score[:n].cpu()[perm], cand.label[:n].cpu()[perm], hist.cpu()))
    li, sc, lb, hist = runs[0]
    assert all(torch.equal(a, b) for a, b in zip(runs[0], runs[1]))  # bit-identical reruns
    assert torch.equal(hist, torch.bincount(rl.flatten(), minlength=4))
    gidx = ids.cpu().repeat_interleave(12 * 16) * 192 + torch.arange(192).repeat(2)
    want = (blocked.cpu() == 0) & ((ws > cut[0].item()) | ((ws == cut[0].item()) & (gidx < 10**9)))
    assert torch.equal(li, torch.nonzero(want).flatten())
    assert torch.equal(sc, ws[li])
    assert torch.equal(lb.to(torch.int64), rl.flatten()[li])


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("radius", [0, 1, 2])
def test_greedy_equals_brute_force_on_ties(device, radius):
    b, h, w = 2, 9, 11
    scores = tie_scores(b, h, w, seed=radius, levels=3)
    scores[0, 0, 0] = -0.0
    scores[0, 0, 1] = 0.0  # -0.0 == +0.0: index decides
    blocked = torch.rand(b, h, w, generator=torch.Generator().manual_seed(radius)) < 0.2
    got = triton_greedy_case(scores, blocked, radius, 12, device, chunk=16)
    for i in range(b):
        want = brute_greedy_sequence(scores[i].numpy(), blocked[i].numpy(), radius, i, 12)
        assert got[i] == [(y, x) for _, _, y, x in want]


@pytest.mark.parametrize("device", DEVICES)
def test_greedy_on_a_smooth_chain(device):
    # one long chain of decreasing scores: every next-best pixel is blocked by the last pick
    h, w, r = 12, 14, 1
    yy, xx = torch.meshgrid(torch.arange(h), torch.arange(w), indexing="ij")
    scores = (-(yy * w + xx).to(torch.float32) * 1e-3).unsqueeze(0)
    blocked = torch.zeros(1, h, w, dtype=torch.bool)
    got = triton_greedy_case(scores, blocked, r, 1000, device, chunk=16)
    want = brute_greedy_sequence(scores[0].numpy(), blocked[0].numpy(), r, 0)
    assert got[0] == [(y, x) for _, _, y, x in want]


def test_keys_order_like_the_reference():
    g = torch.Generator().manual_seed(0)
    s = torch.randint(-3, 4, (200,), generator=g).to(torch.float32) * 0.5
    s[s == 0] = torch.where(torch.rand(int((s == 0).sum()), generator=g) < 0.5, -0.0, 0.0)
    s[:3] = torch.tensor([float("-inf"), 3e38, -3e38])
    gidx = torch.randperm(200, generator=g).to(torch.int64) + 2**40
    assert torch.equal(order_desc(s, gidx), sort_picks(s, gidx))
    assert desc_score_key(torch.tensor([-0.0])) == desc_score_key(torch.tensor([0.0]))


def test_round_buffer_trims_to_exactly_k():
    g = torch.Generator().manual_seed(1)
    buf = RoundBuffer(torch.device("cpu"), limit=10)
    all_s, all_g = [], []
    for i in range(6):
        s = torch.randint(0, 5, (7,), generator=g).to(torch.float32)
        gi = torch.arange(7) + 7 * i
        buf.append(s, gi, torch.zeros(7, dtype=torch.int32))
        all_s.append(s)
        all_g.append(gi)
        assert buf.size <= 20
    s, gi = torch.cat(all_s), torch.cat(all_g)
    perm = sort_picks(s, gi)[:10]
    out_s, out_g, _ = buf.result()
    assert torch.equal(out_g, gi[perm]) and torch.equal(out_s, s[perm])
    assert float(buf.cut_s) <= float(out_s[-1])
