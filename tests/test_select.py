"""cbda.select across backends: identical picks to the reference and to brute force."""

import numpy as np
import pytest
import torch
from hypothesis import given, settings, strategies as st

import cbda
from cbda import _native
from helpers import brute_select, random_logits, tie_scores

needs_cpu = pytest.mark.skipif(_native.load("_cpu") is None, reason="cbda._cpu not built")
BACKENDS = ["reference", pytest.param("cpu", marks=needs_cpu)]


def _picks(sel):
    return list(zip(sel.image_ids.tolist(), sel.ys.tolist(), sel.xs.tolist()))


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("strategy", ["ra", "da", "cbra", "cbda"])
def test_precomputed_scores_match_brute_force(backend, strategy):
    b, h, w, r = 3, 12, 10, 1
    scores = tie_scores(b, h, w, seed=4, levels=4)
    labels = torch.randint(0, 3, (b, h, w), generator=torch.Generator().manual_seed(1))
    ids = torch.tensor([7, 2, 5])
    weights = torch.tensor([1.0, 0.5, 0.25]) if strategy.startswith("cb") else None
    sel = cbda.select(scores=scores, pseudo_labels=labels, image_ids=ids, budget=0.5, rounds=5,
                      strategy=strategy, radius=r, class_weights=weights, backend=backend)
    weighted = scores * (weights[labels] if weights is not None else 1.0)
    m = int(np.ceil(h * w * 0.1 / 9))
    per_image = m if strategy in ("ra", "cbra") else None
    total = b * m if strategy in ("da", "cbda") else None
    want = brute_select(weighted.numpy(), ids.tolist(), np.zeros((b, h, w), bool), r, per_image, total)
    assert _picks(sel) == want
    assert sel.scores.dtype == torch.float32 and sel.classes.dtype == torch.int64
    assert sel.classes.tolist() == [int(labels[ids.tolist().index(i), y, x]) for i, y, x in want]


@needs_cpu
@settings(max_examples=40, deadline=None)
@given(
    b=st.integers(1, 5), h=st.integers(1, 14), w=st.integers(1, 14), radius=st.integers(0, 2),
    seed=st.integers(0, 9999), levels=st.integers(1, 8), budget=st.sampled_from([0.05, 0.2, 0.5, 1.0]),
    strategy=st.sampled_from(["ra", "da"]), negative=st.booleans(),
)
def test_cpu_equals_reference_on_random_ties(b, h, w, radius, seed, levels, budget, strategy, negative):
    radius = min(radius, (min(h, w) - 1) // 2)  # a region must fit in the image
    scores = tie_scores(b, h, w, seed, levels, negative)
    ids = torch.randperm(100, generator=torch.Generator().manual_seed(seed))[:b]
    kw = dict(scores=scores, image_ids=ids, budget=budget, rounds=2, strategy=strategy, radius=radius)
    assert _picks(cbda.select(backend="cpu", **kw)) == _picks(cbda.select(backend="reference", **kw))


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("heuristic", ["ripu", "entropy", "margin", "least_confidence", "random", "ripu_pixel"])
def test_logits_path_matches_reference(backend, heuristic):
    logits = random_logits(3, 5, 6, 8, seed=9)
    kw = dict(budget=0.3, rounds=3, strategy="cbda", heuristic=heuristic, radius=1, out_size=(16, 20), image_ids=[4, 0, 9], num_images=10,
              subset=True)
    a = cbda.select(logits, backend=backend, **kw)
    b = cbda.select(logits, backend="reference", **kw)
    assert _picks(a) == _picks(b)
    torch.testing.assert_close(a.scores, b.scores)
    assert a.predicted_counts is not None and int(a.predicted_counts.sum()) == 3 * 16 * 20


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("strategy", ["ra", "da", "cbda", "image"])
def test_streaming_batches_in_any_order_equal_one_tensor(backend, strategy):
    logits = random_logits(6, 4, 5, 7, seed=2)
    kw = dict(budget=0.5, rounds=2, strategy=strategy, radius=1, out_size=(10, 14), backend=backend)
    whole = cbda.select(logits, **kw)
    order = [3, 0, 5, 1, 4, 2]
    batches = [(order[i:i + 2], logits[order[i:i + 2]]) for i in range(0, 6, 2)]
    batches.insert(1, ([], logits[:0]))  # an empty batch
    streamed = cbda.select(iter(batches), num_images=6, **kw)
    assert _picks(streamed) == _picks(whole)
    torch.testing.assert_close(streamed.scores, whole.scores)


def test_image_strategy_by_hand():
    scores = torch.zeros(4, 2, 2)
    scores[1] += 3.0
    scores[3] += 3.0
    scores[2] += 1.0
    sel = cbda.select(scores=scores, budget=1.0, rounds=2, strategy="image", image_ids=[0, 1, 2, 3])
    assert sel.image_ids.tolist() == [1, 3]  # ceil(4 * 1.0 / 2) = 2 images, tie -> lower id
    assert sel.ys.tolist() == [-1, -1] and sel.unit == "image"
    assert sel.scores.tolist() == [3.0, 3.0]


def test_quota_follows_ripu_count():
    # 5 % over 5 rounds of a 1024x2048 image in 3x3 regions -> 2331 regions (docs/semantics.md, Budget)
    from cbda.api.validate import per_image_quota

    assert per_image_quota(1024, 2048, 0.05, 5, 1) == 2331
    assert per_image_quota(1024, 2048, 0.10, 5, 1) == 4661
    assert per_image_quota(1024, 2048, 0.20, 5, 1) == 9321


@pytest.mark.parametrize("backend", BACKENDS)
def test_round_api_and_selection_fields(backend):
    logits = random_logits(2, 3, 8, 8, seed=5)
    rnd = cbda.AcquisitionRound(budget=0.2, rounds=2, strategy="da", radius=0, num_images=2, backend=backend)
    rnd.add([1], logits[1:])
    rnd.add([0], logits[:1])
    sel = rnd.finish()
    m = int(np.ceil(64 * 0.1))
    assert len(sel) == 2 * m
    assert sel.image_size == (8, 8) and sel.round_index == 1 and sel.radius == 0
    assert torch.equal(sel.global_indices, sel.image_ids * 64 + sel.ys * 8 + sel.xs)
    keys = list(zip((-sel.scores).tolist(), sel.global_indices.tolist()))
    assert keys == sorted(keys)
    with pytest.raises(cbda.StateError):
        rnd.finish()
