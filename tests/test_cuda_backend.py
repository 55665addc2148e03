"""The cuda backend (cbda._cuda) against the reference, on a GPU (skipped without one).

Grid: heuristic × dtype × radius × out_size for scores; strategy × radius × seeds for picks,
with ties, negative scores, prior picks, streaming batches in any order and trims of the
top-K buffer. Scores within 1e-5 rel / 1e-6 abs of the reference on the same GPU, labels
identical; picks identical when the scores are identical (precomputed scores, or the
reference selecting on the cuda backend's own scores).
"""

from __future__ import annotations

import numpy as np
import pytest
import torch

import cbda
from cbda import _native
from helpers import brute_select, random_logits, tie_scores

pytestmark = [
    pytest.mark.gpu,
    pytest.mark.skipif(_native.load("_cuda") is None, reason="cbda._cuda not built"),
]

HEURISTICS = ["ripu", "entropy", "margin", "least_confidence", "random", "ripu_pixel"]
DTYPES = [torch.float32, torch.bfloat16, torch.float16]
STRATEGIES = ["ra", "da", "cbra", "cbda", "image"]


def _picks(sel):
    return list(zip(sel.image_ids.tolist(), sel.ys.tolist(), sel.xs.tolist()))


def _cuda(t):
    return t.to("cuda")


# -- scores ------------------------------------------------------------------------------------
@pytest.mark.parametrize("heuristic", HEURISTICS)
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("radius", [0, 1, 2, 3])
@pytest.mark.parametrize("out_size", [None, (37, 50)])
def test_scores_match_reference(heuristic, dtype, radius, out_size):
    if heuristic != "ripu" and radius not in (0, 1):
        pytest.skip("radius only matters for ripu")
    logits = _cuda(random_logits(3, 7, 13, 17, seed=radius + 11, dtype=dtype))
    ids = torch.tensor([5, 0, 2**33 + 7], device="cuda")
    kw = dict(heuristic=heuristic, radius=radius, out_size=out_size, image_ids=ids, seed=3)
    s, lab = cbda.score(logits, backend="cuda", **kw)
    rs, rlab = cbda.score(logits, backend="reference", **kw)
    assert s.dtype == torch.float32 and lab.dtype == torch.int64 and s.device.type == "cuda"
    assert torch.equal(lab, rlab)
    torch.testing.assert_close(s, rs, rtol=1e-5, atol=1e-6)
    s2, lab2 = cbda.score(logits, backend="cuda", **kw)  # deterministic, bit for bit
    assert torch.equal(s, s2) and torch.equal(lab, lab2)


@pytest.mark.parametrize("c", [2, 19, 33, 150])
def test_scores_any_class_count(c):
    logits = _cuda(random_logits(2, c, 9, 11, seed=c))
    for heuristic in ("ripu", "margin"):
        s, lab = cbda.score(logits, heuristic=heuristic, radius=1, out_size=(20, 31), backend="cuda")
        rs, rlab = cbda.score(logits, heuristic=heuristic, radius=1, out_size=(20, 31), backend="reference")
        assert torch.equal(lab, rlab)
        torch.testing.assert_close(s, rs, rtol=1e-5, atol=1e-6)


def test_random_scores_are_the_shared_hash():
    logits = _cuda(random_logits(2, 3, 4, 5))
    ids = torch.tensor([2**40 + 3, 9], device="cuda")
    s, _ = cbda.score(logits, heuristic="random", out_size=(8, 9), image_ids=ids, seed=-5, backend="cuda")
    want = cbda.scores.random_scores(ids, 8, 9, -5)
    assert torch.equal(s, want)


def test_non_contiguous_logits():
    base = _cuda(random_logits(2, 5, 12, 14, seed=4))
    logits = base.permute(0, 1, 3, 2)  # (2, 5, 14, 12), not contiguous
    s, lab = cbda.score(logits, out_size=(20, 19), backend="cuda")
    rs, rlab = cbda.score(logits.contiguous(), out_size=(20, 19), backend="reference")
    assert torch.equal(lab, rlab)
    torch.testing.assert_close(s, rs, rtol=1e-5, atol=1e-6)


# -- selection on identical scores -------------------------------------------------------------
@pytest.mark.parametrize("strategy", ["ra", "da", "cbra", "cbda"])
@pytest.mark.parametrize("radius", [0, 1, 2])
@pytest.mark.parametrize("seed", [0, 1, 2])
def test_precomputed_scores_match_brute_force(strategy, radius, seed):
    b, h, w = 4, 23, 19
    scores = tie_scores(b, h, w, seed=seed, levels=5)
    labels = torch.randint(0, 3, (b, h, w), generator=torch.Generator().manual_seed(seed))
    ids = torch.tensor([7, 2, 5, 11])
    weights = torch.tensor([1.0, 0.5, 0.25]) if strategy.startswith("cb") else None
    kw = dict(image_ids=ids, budget=0.5, rounds=5, strategy=strategy, radius=radius, class_weights=weights)
    sel = cbda.select(scores=_cuda(scores), pseudo_labels=_cuda(labels), backend="cuda", **kw)
    ref = cbda.select(scores=scores, pseudo_labels=labels, backend="reference", **kw)
    assert _picks(sel) == _picks(ref)
    assert torch.equal(sel.scores, ref.scores) and torch.equal(sel.classes, ref.classes)
    weighted = scores * (weights[labels] if weights is not None else 1.0)
    k = (2 * radius + 1) ** 2
    m = int(np.ceil(round(h * w * 0.1 / k, 6)))
    per_image = m if strategy in ("ra", "cbra") else None
    total = b * m if strategy in ("da", "cbda") else None
    assert _picks(sel) == brute_select(weighted.numpy(), ids.tolist(), np.zeros((b, h, w), bool), radius, per_image, total)


def test_signed_zero_and_smooth_chains():
    # a smooth ramp (the worst case of "iterate local maxima") with -0.0 / +0.0 ties
    h, w = 64, 96
    ramp = torch.arange(h * w, dtype=torch.float32).flip(0).reshape(1, h, w) / (h * w)
    scores = torch.cat([ramp, -ramp, torch.zeros(1, h, w), -torch.zeros(1, h, w)])
    for strategy in ("ra", "da"):
        kw = dict(image_ids=[3, 1, 0, 2], budget=1.0, rounds=2, strategy=strategy, radius=1)
        sel = cbda.select(scores=_cuda(scores), backend="cuda", **kw)
        ref = cbda.select(scores=scores, backend="reference", **kw)
        assert _picks(sel) == _picks(ref)


@pytest.mark.parametrize("strategy", ["da", "cbda"])
def test_streaming_trim_equals_one_shot(strategy):
    # many small batches and a small K: the buffer is trimmed and the cut-off raised often
    n, h, w = 24, 17, 13
    scores = tie_scores(n, h, w, seed=5, levels=7)
    labels = torch.randint(0, 4, (n, h, w), generator=torch.Generator().manual_seed(2))
    weights = torch.tensor([1.0, 0.3, 0.7, 0.1]) if strategy == "cbda" else None
    order = torch.randperm(n, generator=torch.Generator().manual_seed(0)).tolist()
    kw = dict(budget=0.05, rounds=3, strategy=strategy, radius=1, class_weights=weights, num_images=n)
    rnd = cbda.AcquisitionRound(backend="cuda", **kw)
    for i in range(0, n, 3):
        idx = order[i : i + 3]
        rnd.add_scores(idx, _cuda(scores[idx]), _cuda(labels[idx]))
    sel = rnd.finish()
    ref = cbda.select(scores=scores, pseudo_labels=labels, image_ids=list(range(n)), backend="reference", **kw)
    assert _picks(sel) == _picks(ref)


# -- the fused path on logits ------------------------------------------------------------------
@pytest.mark.parametrize("strategy", STRATEGIES)
@pytest.mark.parametrize("heuristic", HEURISTICS)
@pytest.mark.parametrize("radius", [0, 1, 2])
def test_logits_path_equals_reference_on_own_scores(strategy, heuristic, radius):
    n, c, out = 5, 6, (21, 26)
    logits = _cuda(random_logits(n, c, 9, 11, seed=radius))
    ids = [4, 0, 9, 2, 7]
    weights = torch.tensor([1.0, 0.2, 0.5, 0.9, 0.05, 0.6])
    kw = dict(budget=0.3, rounds=3, strategy=strategy, heuristic=heuristic, radius=radius, out_size=out,
              image_ids=ids, num_images=10, subset=True, class_weights=weights if strategy.startswith("cb") else None)
    sel = cbda.select(logits, backend="cuda", **kw)
    s, lab = cbda.score(logits, heuristic=heuristic, radius=radius, out_size=out,
                        image_ids=torch.tensor(ids), backend="cuda")
    kw2 = {k: v for k, v in kw.items() if k not in ("heuristic", "out_size")}
    ref = cbda.select(scores=s.cpu(), pseudo_labels=lab.cpu(), backend="reference", **kw2)
    assert _picks(sel) == _picks(ref)
    assert torch.equal(sel.scores, ref.scores)
    if strategy != "image":
        assert torch.equal(sel.classes, ref.classes)
    want_counts = torch.bincount(lab.flatten().cpu(), minlength=c)
    assert torch.equal(sel.predicted_counts, want_counts)
    # and against the reference on the logits themselves (identical unless scores differ by
    # rounding at a near tie, which these seeds do not have)
    full = cbda.select(logits, backend="reference", **kw)
    assert _picks(sel) == _picks(full)


@pytest.mark.parametrize("dtype", DTYPES)
def test_dtypes_and_streaming_on_logits(dtype):
    logits = _cuda(random_logits(6, 4, 5, 7, seed=2, dtype=dtype))
    kw = dict(budget=0.5, rounds=2, strategy="cbda", radius=1, out_size=(10, 14), num_images=6,
              class_weights=torch.tensor([0.9, 0.1, 0.5, 0.7]))
    whole = cbda.select(logits, backend="cuda", **kw)
    order = [3, 0, 5, 1, 4, 2]
    batches = [(order[i : i + 2], logits[order[i : i + 2]]) for i in range(0, 6, 2)]
    streamed = cbda.select(iter(batches), backend="cuda", **kw)
    assert _picks(streamed) == _picks(whole)
    ref = cbda.select(logits, backend="reference", **kw)
    assert _picks(whole) == _picks(ref)


# -- prior picks (earlier rounds) ----------------------------------------------------------------
@pytest.mark.parametrize("strategy", ["ra", "da", "cbra", "cbda"])
@pytest.mark.parametrize("radius", [0, 1, 2])
def test_rounds_with_prior_picks_match_reference(strategy, radius):
    n, c, h, w = 4, 3, 18, 22
    logits = random_logits(n, c, 6, 8, seed=1)
    gt = torch.randint(0, c, (n, h, w), generator=torch.Generator().manual_seed(0)).to(torch.uint8)
    states = {b: cbda.ActiveLabelState((h, w), c, num_images=n) for b in ("reference", "cuda")}
    for _ in range(3):
        sels = {}
        for b, st in states.items():
            x = _cuda(logits) if b == "cuda" else logits
            sels[b] = cbda.select(x, budget=0.3, rounds=3, strategy=strategy, radius=radius, out_size=(h, w),
                                  state=st, backend=b)
            st.label_from_ground_truth(lambda i: gt[i])
        assert _picks(sels["cuda"]) == _picks(sels["reference"])


def test_errors_name_the_problem():
    with pytest.raises(cbda.BackendUnavailableError, match="cuda"):
        cbda.score(random_logits(1, 3, 4, 4), backend="cuda")  # CPU tensors


# -- pruning and host reads (issue 15) -----------------------------------------------------------
@pytest.mark.parametrize("strategy", ["ra", "da", "cbra", "cbda"])
@pytest.mark.parametrize("radius", [0, 1, 2])
def test_pruned_rounds_equal_the_reference(strategy, radius):
    # 40x56 images and a 1 % share: the bound is far below a batch's candidates, so the radix
    # select prunes (several 8-bit passes, many blocks), the trim and both cut-offs act
    n, c, h, w = 24, 4, 40, 56
    g = torch.Generator().manual_seed(radius)
    scores = tie_scores(n, h, w, seed=radius, levels=6)
    labels = torch.randint(0, c, (n, h, w), generator=g)
    weights = torch.tensor([1.0, 0.3, 0.7, 0.1]) if strategy.startswith("cb") else None
    order = torch.randperm(n, generator=g).tolist()
    kw = dict(budget=0.05, rounds=5, strategy=strategy, radius=radius, class_weights=weights, num_images=n)
    rnd = cbda.AcquisitionRound(backend="cuda", **kw)
    for i in range(0, n, 6):
        idx = order[i : i + 6]
        rnd.add_scores(idx, _cuda(scores[idx]), _cuda(labels[idx]))
    sel = rnd.finish()
    ref = cbda.select(scores=scores, pseudo_labels=labels, image_ids=list(range(n)), backend="reference", **kw)
    assert _picks(sel) == _picks(ref)
    assert torch.equal(sel.scores, ref.scores) and torch.equal(sel.classes, ref.classes)
    cnt = rnd.counters
    assert all(g_in <= bound for g_in, bound in rnd._acc.greedy_per_launch)
    assert cnt.greedy_in <= cnt.greedy_bound and cnt.greedy_in < cnt.candidates


@pytest.mark.parametrize("strategy", ["ra", "da", "cbra", "cbda"])
@pytest.mark.parametrize("heuristic", ["ripu", "ripu_pixel"])
def test_one_synchronisation_per_batch(strategy, heuristic):
    """torch's own sync detector: at most one synchronising call per add() (the count read)."""
    import warnings

    n, c, h, w = 12, 5, 48, 64
    logits = _cuda(random_logits(n, c, 12, 16, seed=3))
    state = cbda.ActiveLabelState((h, w), c, num_images=n)
    cbda.select(logits, budget=0.05, rounds=5, strategy="ra", radius=1, state=state, backend="cuda")
    state.label_from_ground_truth(lambda i: torch.zeros((h, w), dtype=torch.uint8))
    rnd = cbda.AcquisitionRound(budget=0.05, rounds=5, strategy=strategy, radius=1, heuristic=heuristic,
                                out_size=(h, w), state=state, backend="cuda")
    rnd.add([0, 1], logits[:2])  # first batch: workspace allocations
    torch.cuda.synchronize()
    for i in range(2, n, 5):
        idx = list(range(i, min(n, i + 5)))
        with warnings.catch_warnings(record=True) as seen:
            warnings.simplefilter("always")
            torch.cuda.set_sync_debug_mode("warn")
            try:
                rnd.add(idx, logits[idx])
            finally:
                torch.cuda.set_sync_debug_mode("default")
        syncs = [str(x.message) for x in seen if "synchroniz" in str(x.message)]
        assert len(syncs) <= 1, syncs
    assert len(rnd.finish()) > 0
