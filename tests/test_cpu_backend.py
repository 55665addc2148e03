"""The fused C++ backend against the reference: scores within float tolerance, pseudo labels
identical, picks identical (for identical scores always; for logits on inputs without
near-ties), over seeds, shapes, classes, radii, dtypes, layouts, priors and batch orders."""

import numpy as np
import pytest
import torch
from hypothesis import given, settings, strategies as st

import cbda
from cbda import _native
from cbda.reference import reference_score
from cbda.scores import ScoreSpec, random_scores
from helpers import brute_select, random_logits, tie_scores

pytestmark = pytest.mark.skipif(_native.load("_cpu") is None, reason="cbda._cpu not built")

HEURISTICS = ["ripu", "ripu_pixel", "entropy", "margin", "least_confidence", "random"]
# scores within 1e-5 relative; an absolute floor for ripu scores near zero (pure windows give
# P = -ln(1 + 1e-6)/ln C, tiny and negative). exp/log differ from SLEEF's by about an ulp.
RTOL, ATOL = 1e-5, 1e-6


def _picks(sel):
    return list(zip(sel.image_ids.tolist(), sel.ys.tolist(), sel.xs.tolist()))


def _both(logits, heuristic, radius, out_size, ids=None, seed=0):
    ids = torch.arange(logits.shape[0]) if ids is None else ids
    spec = ScoreSpec(heuristic, radius, out_size, seed)
    want = reference_score(logits, spec, ids)
    got = cbda.score(logits, heuristic, radius, out_size, backend="cpu", image_ids=ids, seed=seed)
    return got, want


def _check(got, want):
    (s, lab), (rs, rl) = got, want
    assert s.dtype == torch.float32 and lab.dtype == torch.int64 and s.shape == rs.shape
    assert torch.equal(lab, rl)  # argmax of bit-identical upsampled logits
    torch.testing.assert_close(s, rs, rtol=RTOL, atol=ATOL)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float16])
@pytest.mark.parametrize("c", [2, 16, 19])
@pytest.mark.parametrize("radius", [0, 1, 2])
@pytest.mark.parametrize("shape", [((5, 7), (16, 21)), ((6, 6), None), ((1, 1), (3, 4)), ((1, 9), None), ((9, 1), (17, 1)), ((4, 5), (4, 11))])
def test_ripu_scores_match_reference(dtype, c, radius, shape):
    (h, w), out = shape
    logits = random_logits(2, c, h, w, seed=c * 7 + radius, dtype=dtype)
    _check(*_both(logits, "ripu", radius, out))


@pytest.mark.parametrize("heuristic", HEURISTICS)
@pytest.mark.parametrize("seed", [0, 1, 2])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float16])
def test_every_heuristic_matches_reference(heuristic, seed, dtype):
    logits = random_logits(3, 19, 9, 13, seed=seed, dtype=dtype)
    ids = torch.tensor([5, 2**33 + 1, 0])
    got, want = _both(logits, heuristic, 1, (33, 47), ids=ids, seed=seed + 2**32)
    _check(got, want)
    if heuristic == "random":  # the counter-based hash, bit for bit
        assert torch.equal(got[0], random_scores(ids, 33, 47, seed + 2**32))


def test_ripu_pixel_window_larger_than_image_and_large_image():
    # 65x65 window clipped on every side, and one wider than the image
    for h, w in [(80, 90), (20, 100)]:
        _check(*_both(random_logits(1, 5, h // 2, w // 2, seed=h), "ripu_pixel", 1, (h, w)))


@pytest.mark.parametrize("layout", ["channels_last", "permuted", "sliced", "expanded"])
def test_non_contiguous_logits(layout):
    base = random_logits(3, 6, 10, 12, seed=3)
    if layout == "channels_last":
        x = base.contiguous(memory_format=torch.channels_last)
    elif layout == "permuted":
        x = base.permute(0, 1, 3, 2)
    elif layout == "sliced":
        x = random_logits(4, 8, 20, 25, seed=4)[::2, 1:7, ::2, 1::2]
    else:
        x = base[:1].expand(3, -1, -1, -1)
    assert not x.is_contiguous()
    _check(*_both(x, "ripu", 1, (23, 29)))
    _check(*_both(x, "ripu", 1, None))


def test_deterministic_and_every_output_written():
    logits = random_logits(2, 19, 11, 13, seed=5)
    a = cbda.score(logits, "ripu", 2, (31, 37), backend="cpu")
    b = cbda.score(logits, "ripu", 2, (31, 37), backend="cpu")
    assert torch.equal(a[0], b[0]) and torch.equal(a[1], b[1])
    assert torch.isfinite(a[0]).all() and ((a[1] >= 0) & (a[1] < 19)).all()


def test_thread_count_does_not_change_results():
    logits = random_logits(2, 7, 13, 9, seed=6)
    kw = dict(budget=0.3, rounds=2, strategy="cbda", radius=1, out_size=(37, 29), num_images=2, backend="cpu")
    n = torch.get_num_threads()
    try:
        torch.set_num_threads(1)
        one = cbda.select(logits, **kw)
        s1 = cbda.score(logits, "ripu", 1, (37, 29), backend="cpu")
    finally:
        torch.set_num_threads(n)
    many = cbda.select(logits, **kw)
    s2 = cbda.score(logits, "ripu", 1, (37, 29), backend="cpu")
    assert _picks(one) == _picks(many) and torch.equal(one.scores, many.scores)
    assert torch.equal(s1[0], s2[0])


# -- selection -------------------------------------------------------------------------------

@pytest.mark.parametrize("strategy", ["ra", "da", "cbra", "cbda"])
@pytest.mark.parametrize("heuristic", ["ripu", "entropy", "margin", "random"])
@pytest.mark.parametrize("radius", [0, 1, 2])
def test_logits_path_picks_equal_reference(strategy, heuristic, radius):
    logits = random_logits(4, 5, 7, 9, seed=radius + 11)
    kw = dict(budget=0.4, rounds=4, strategy=strategy, heuristic=heuristic, radius=radius,
              out_size=(19, 23), image_ids=[9, 3, 6, 0], num_images=10, subset=True)
    a = cbda.select(logits, backend="cpu", **kw)
    b = cbda.select(logits, backend="reference", **kw)
    assert _picks(a) == _picks(b)
    assert a.classes.tolist() == b.classes.tolist()
    torch.testing.assert_close(a.scores, b.scores, rtol=RTOL, atol=ATOL)
    assert torch.equal(a.predicted_counts, b.predicted_counts)


def test_scores_given_precomputed_reference_scores_pick_identically():
    # picks from the reference's own score maps: the selection is exact, bit for bit
    logits = random_logits(5, 19, 16, 20, seed=12)
    scores, labels = reference_score(logits, ScoreSpec("ripu", 1, (48, 64)))
    ids = torch.tensor([4, 0, 3, 1, 2])
    w = torch.rand(19, generator=torch.Generator().manual_seed(1))
    for strategy in ("ra", "da", "cbra", "cbda"):
        kw = dict(scores=scores, pseudo_labels=labels, image_ids=ids, budget=0.2, rounds=2, strategy=strategy,
                  radius=1, class_weights=w if strategy.startswith("cb") else None)
        a, b = cbda.select(backend="cpu", **kw), cbda.select(backend="reference", **kw)
        assert _picks(a) == _picks(b) and torch.equal(a.scores, b.scores) and torch.equal(a.classes, b.classes)


def test_streaming_buffer_trims_and_stays_exact():
    # many images, small per-image quota: the buffer passes 2K many times and the cut-off
    # rejects whole images; batches arrive in a scrambled order, one of them empty
    n, h, w = 24, 15, 17
    logits = random_logits(n, 4, 8, 9, seed=13)
    kw = dict(budget=0.1, rounds=3, strategy="da", radius=1, out_size=(h, w))
    whole = cbda.select(logits, backend="reference", **kw)
    order = torch.randperm(n, generator=torch.Generator().manual_seed(2)).tolist()
    batches = [(order[i:i + 5], logits[order[i:i + 5]]) for i in range(0, n, 5)]
    batches.insert(2, ([], logits[:0]))
    streamed = cbda.select(iter(batches), num_images=n, backend="cpu", **kw)
    assert _picks(streamed) == _picks(whole)


def test_native_round_cutoff_is_the_kth_key():
    mod = _native.load("_cpu")
    h, w, k = 6, 7, 5
    rnd = mod.Round(h, w, 0, k, k, 2)
    scores = tie_scores(4, h, w, seed=3, levels=3)
    ids = torch.tensor([3, 1, 0, 2])
    from cbda.state import PriorPicks
    pr = PriorPicks.empty(4)
    t = [pr.offsets, pr.ys, pr.xs, pr.radii, pr.whole_image.to(torch.uint8)]
    rnd.add_scores(scores.data_ptr(), 0, 4, ids.data_ptr(), 0, *[x.data_ptr() for x in t])
    active, cs, cg = rnd.cutoff()
    flat = sorted((-float(scores[i, y, x]), int(ids[i]) * h * w + y * w + x) for i in range(4) for y in range(h) for x in range(w))
    assert active and (-cs, cg) == flat[k - 1]
    assert rnd.finish_size() == k


@settings(max_examples=60, deadline=None)
@given(
    b=st.integers(1, 6), h=st.integers(1, 12), w=st.integers(1, 12), radius=st.integers(0, 2),
    seed=st.integers(0, 10**6), levels=st.integers(1, 6), budget=st.sampled_from([0.05, 0.3, 1.0]),
    strategy=st.sampled_from(["ra", "da", "cbra", "cbda"]), negative=st.booleans(), split=st.integers(1, 6),
)
def test_property_precomputed_ties_equal_brute_force(b, h, w, radius, seed, levels, budget, strategy, negative, split):
    radius = min(radius, (min(h, w) - 1) // 2)  # a region must fit in the image
    scores = tie_scores(b, h, w, seed, levels, negative)
    g = torch.Generator().manual_seed(seed)
    labels = torch.randint(0, 3, (b, h, w), generator=g)
    ids = torch.randperm(b, generator=g)  # the whole set 0..b-1, scrambled
    weights = torch.tensor([1.0, 0.5, 0.0]) if strategy.startswith("cb") else None
    kw = dict(budget=budget, rounds=2, strategy=strategy, radius=radius, class_weights=weights, num_images=b, backend="cpu")
    rnd = cbda.AcquisitionRound(**kw)
    for i in range(0, b, split):  # batches in id-scrambled order
        rnd.add_scores(ids[i:i + split], scores[i:i + split], labels[i:i + split])
    sel = rnd.finish()
    weighted = scores * (weights[labels] if weights is not None else 1.0)
    m = int(np.ceil(h * w * budget / 2 / (2 * radius + 1) ** 2))
    per_image = m if strategy in ("ra", "cbra") else None
    total = b * m if strategy in ("da", "cbda") else None
    want = brute_select(weighted.numpy(), ids.tolist(), np.zeros((b, h, w), bool), radius, per_image, total)
    assert _picks(sel) == want


def _gt(n, h, w, c, seed=0):
    return torch.randint(0, c, (n, h, w), generator=torch.Generator().manual_seed(seed)).to(torch.uint8)


@pytest.mark.parametrize("strategy", ["ra", "cbda"])
@pytest.mark.parametrize("radius", [0, 1, 2])
def test_priors_from_state_over_rounds(strategy, radius):
    n, c, h, w = 5, 3, 13, 11
    logits = random_logits(n, c, 7, 6, seed=radius)
    gt = _gt(n, h, w, c)
    states = {b: cbda.ActiveLabelState((h, w), c, num_images=n) for b in ("reference", "cpu")}
    for _ in range(3):
        sels = {}
        for b, s in states.items():
            batches = [([4, 1], logits[[4, 1]]), ([0, 3, 2], logits[[0, 3, 2]])]
            sels[b] = cbda.select(iter(batches), budget=0.5, rounds=3, strategy=strategy, radius=radius,
                                  out_size=(h, w), state=s, backend=b)
            s.label_from_ground_truth(lambda i: gt[i])
        assert _picks(sels["cpu"]) == _picks(sels["reference"])


def test_whole_image_priors_are_skipped():
    n, c, h, w = 4, 3, 9, 9
    logits = random_logits(n, c, 9, 9, seed=21)
    gt = _gt(n, h, w, c, seed=1)
    states = {b: cbda.ActiveLabelState((h, w), c, num_images=n) for b in ("reference", "cpu")}
    for b, s in states.items():
        cbda.select(logits, budget=0.8, rounds=4, strategy="image", state=s, backend=b)
        s.label_from_ground_truth(lambda i: gt[i])
    sels = {b: cbda.select(logits, budget=0.8, rounds=4, strategy="cbda", state=s, backend=b) for b, s in states.items()}
    assert _picks(sels["cpu"]) == _picks(sels["reference"])
    whole = set(states["cpu"].selection(1).image_ids.tolist())
    assert whole and not whole & set(sels["cpu"].image_ids.tolist())


def test_portable_build_is_bit_identical_to_avx2(tmp_path):
    # the ISA variants share one source; std::fma keeps them equal bit for bit
    import os
    import subprocess
    import sys

    import cbda

    tests_dir = os.path.dirname(os.path.abspath(__file__))
    code = (
        f"import torch, cbda, sys; sys.path.insert(0, {tests_dir!r}); from helpers import random_logits;"
        "x = random_logits(2, 19, 9, 13, seed=3, dtype=torch.bfloat16);"
        "s, l = cbda.score(x, 'ripu', 1, (29, 41), backend='cpu');"
        "m, _ = cbda.score(x, 'margin', 1, (29, 41), backend='cpu');"
        "torch.save((s, l, m), sys.argv[1])"
    )
    # the child must import the cbda under test (installed or in-tree), never another copy:
    # run it outside the repository with that cbda's parent first on the path
    pkg_parent = os.path.dirname(os.path.dirname(os.path.abspath(cbda.__file__)))
    outs = []
    for flag in ("0", "1"):
        path = str(tmp_path / f"{flag}.pt")
        env = {**os.environ, "CBDA_CPU_GENERIC": flag, "PYTHONPATH": pkg_parent}
        subprocess.run([sys.executable, "-c", code, path], check=True, env=env, cwd=str(tmp_path))
        outs.append(torch.load(path))
    for a, b in zip(*outs):
        assert torch.equal(a, b)
