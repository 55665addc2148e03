"""cbda.select / cbda.score with backend="triton" against the reference and brute force,
plus the backend's dispatch contract."""

from _triton_env import DEVICES, INTERPRET, interpret  # noqa: F401,I001  (interpreter set-up first)

import subprocess
import sys

import numpy as np
import pytest
from hypothesis import given, settings, strategies as st
import torch

import cbda
from cbda.api import dispatch
from cbda.backends import triton as tb
from helpers import brute_select, random_logits, tie_scores


def _picks(sel):
    return list(zip(sel.image_ids.tolist(), sel.ys.tolist(), sel.xs.tolist()))


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("strategy,radius,heuristic", [
    ("ra", 1, "ripu"), ("da", 1, "ripu"), ("cbda", 2, "ripu"), ("cbra", 0, "entropy"),
    ("cbda", 0, "margin"), ("da", 1, "random"), ("cbda", 1, "ripu_pixel"), ("image", 1, "least_confidence"),
])
def test_logits_round_matches_reference(device, strategy, radius, heuristic):
    logits = random_logits(3, 4, 6, 8, seed=9)
    kw = dict(budget=0.3, rounds=3, strategy=strategy, heuristic=heuristic, radius=radius,
              out_size=(12, 16), image_ids=[4, 0, 9], num_images=10, subset=True)
    a = cbda.select(logits.to(device), backend="triton", **kw)
    b = cbda.select(logits, backend="reference", **kw)
    assert _picks(a) == _picks(b)
    torch.testing.assert_close(a.scores, b.scores, rtol=1e-5, atol=1e-6)
    assert torch.equal(a.classes, b.classes)
    assert torch.equal(a.predicted_counts, b.predicted_counts)


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("strategy", ["ra", "da", "cbra", "cbda"])
def test_precomputed_tie_scores_match_brute_force(device, strategy):
    b, h, w, r = 3, 12, 10, 1
    scores = tie_scores(b, h, w, seed=4, levels=4)
    labels = torch.randint(0, 3, (b, h, w), generator=torch.Generator().manual_seed(1))
    ids = torch.tensor([7, 2, 5])
    weights = torch.tensor([1.0, 0.5, 0.25]) if strategy.startswith("cb") else None
    sel = cbda.select(scores=scores.to(device), pseudo_labels=labels.to(device), image_ids=ids, budget=0.5,
                      rounds=5, strategy=strategy, radius=r, class_weights=weights, backend="triton")
    weighted = scores * (weights[labels] if weights is not None else 1.0)
    m = int(np.ceil(h * w * 0.1 / 9))
    want = brute_select(weighted.numpy(), ids.tolist(), np.zeros((b, h, w), bool), r,
                        m if strategy in ("ra", "cbra") else None, b * m if strategy in ("da", "cbda") else None)
    assert _picks(sel) == want


@pytest.mark.parametrize("device", DEVICES)
def test_streaming_small_k_raises_the_cutoff(device):
    # K small against the batches: the buffer is trimmed and the cut-off prunes later batches
    logits = random_logits(6, 3, 5, 6, seed=2)
    kw = dict(budget=0.2, rounds=4, strategy="da", radius=1, out_size=(8, 10))
    whole = cbda.select(logits, backend="reference", **kw)
    order = [3, 0, 5, 1, 4, 2]
    batches = [(order[i:i + 2], logits[order[i:i + 2]].to(device)) for i in range(0, 6, 2)]
    batches.insert(1, ([], logits[:0].to(device)))  # an empty batch
    streamed = cbda.select(iter(batches), num_images=6, backend="triton", **kw)
    assert _picks(streamed) == _picks(whole)


@pytest.mark.parametrize("device", DEVICES)
def test_state_blocks_earlier_picks(device):
    n, c, h, w = 3, 3, 10, 12
    logits = random_logits(n, c, 5, 6, seed=1)
    gt = torch.randint(0, c, (n, h, w), generator=torch.Generator().manual_seed(0)).to(torch.uint8)
    states = {b: cbda.ActiveLabelState((h, w), c, num_images=n) for b in ("reference", "triton")}
    for _ in range(2):
        sels = {}
        for b, st in states.items():
            x = logits.to(device) if b == "triton" else logits
            sels[b] = cbda.select(x, budget=0.4, rounds=2, strategy="cbda", radius=1, out_size=(h, w), state=st, backend=b)
            st.label_from_ground_truth(lambda i: gt[i])
        assert _picks(sels["triton"]) == _picks(sels["reference"])


@pytest.mark.parametrize("device", DEVICES)
def test_score_api(device):
    logits = random_logits(2, 3, 4, 5, seed=3)
    s, lab = cbda.score(logits.to(device), "ripu", 1, (7, 9), backend="triton")
    rs, rl = cbda.score(logits, "ripu", 1, (7, 9), backend="reference")
    assert s.device.type == device
    torch.testing.assert_close(s.cpu(), rs, rtol=1e-5, atol=1e-6)
    assert torch.equal(lab.cpu(), rl)


def test_dispatch_contract(monkeypatch):
    if INTERPRET:
        assert tb.not_supported_reasons(torch.device("cpu"), torch.float32) == []
    assert "triton" not in dispatch.auto_order(torch.device("cpu"))
    assert any("dtype" in r for r in tb.not_supported_reasons(torch.device("cpu"), torch.float64))
    monkeypatch.delenv("TRITON_INTERPRET", raising=False)
    why = tb.not_supported_reasons(torch.device("cpu"), torch.float32)
    assert why and "CUDA" in why[0]
    with pytest.raises(cbda.BackendUnavailableError):
        cbda.score(torch.zeros(1, 2, 2, 2), backend="triton")


def test_import_cbda_does_not_import_triton():
    code = "import sys, cbda; cbda.select; assert 'triton' not in sys.modules, 'triton imported'"
    subprocess.run([sys.executable, "-c", code], check=True, cwd=str(__import__("pathlib").Path(cbda.__file__).parents[1]))


@pytest.mark.skipif(not INTERPRET, reason="property test runs on the CPU interpreter")
@settings(max_examples=8, deadline=None)
@given(
    b=st.integers(1, 3), h=st.integers(1, 9), w=st.integers(1, 9), radius=st.integers(0, 2),
    seed=st.integers(0, 9999), levels=st.integers(1, 6), budget=st.sampled_from([0.2, 1.0]),
    strategy=st.sampled_from(["ra", "da"]), negative=st.booleans(),
)
def test_property_ties_equal_reference(b, h, w, radius, seed, levels, budget, strategy, negative):
    radius = min(radius, (min(h, w) - 1) // 2)  # a region must fit in the image
    scores = tie_scores(b, h, w, seed, levels, negative)
    ids = torch.randperm(50, generator=torch.Generator().manual_seed(seed))[:b]
    kw = dict(scores=scores, image_ids=ids, budget=budget, rounds=2, strategy=strategy, radius=radius)
    assert _picks(cbda.select(backend="triton", **kw)) == _picks(cbda.select(backend="reference", **kw))
