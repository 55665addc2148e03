"""The reference selection (the argmax-and-block loop) against a brute-force sort-and-scan, and
da against the dataset-wide greedy."""

import numpy as np
import pytest
import torch
from hypothesis import given, settings, strategies as st

from cbda.reference import greedy_argmax, image_ranking, select_regions
from helpers import brute_select, tie_scores


def _blocked(b, h, w, seed, frac=0.2):
    g = torch.Generator().manual_seed(seed)
    return torch.rand(b, h, w, generator=g) < frac


@settings(max_examples=60, deadline=None)
@given(
    b=st.integers(1, 3), h=st.integers(1, 9), w=st.integers(1, 9), radius=st.integers(0, 2),
    seed=st.integers(0, 10_000), levels=st.integers(1, 6), quota=st.integers(0, 12), frac=st.floats(0, 0.6),
)
def test_per_image_greedy_matches_brute_force(b, h, w, radius, seed, levels, quota, frac):
    scores = tie_scores(b, h, w, seed, levels)
    blocked = _blocked(b, h, w, seed, frac)
    ids = torch.randperm(50, generator=torch.Generator().manual_seed(seed))[:b]
    out = select_regions(scores, torch.zeros_like(scores, dtype=torch.int64), ids, blocked, radius, quota, None)
    want = brute_select(scores.numpy(), ids.tolist(), blocked.numpy(), radius, per_image=quota)
    got = list(zip(out["image_ids"].tolist(), out["ys"].tolist(), out["xs"].tolist()))
    assert got == want


@settings(max_examples=60, deadline=None)
@given(
    b=st.integers(1, 4), h=st.integers(1, 8), w=st.integers(1, 8), radius=st.integers(0, 2),
    seed=st.integers(0, 10_000), levels=st.integers(1, 6), total=st.integers(0, 40), frac=st.floats(0, 0.5),
)
def test_dataset_greedy_is_top_k_of_union(b, h, w, radius, seed, levels, total, frac):
    scores = tie_scores(b, h, w, seed, levels)
    blocked = _blocked(b, h, w, seed, frac)
    ids = torch.randperm(20, generator=torch.Generator().manual_seed(seed + 1))[:b]
    out = select_regions(scores, torch.zeros_like(scores, dtype=torch.int64), ids, blocked, radius, None, total)
    want = brute_select(scores.numpy(), ids.tolist(), blocked.numpy(), radius, total=total)
    got = list(zip(out["image_ids"].tolist(), out["ys"].tolist(), out["xs"].tolist()))
    assert got == want


def test_picked_windows_never_overlap():
    scores = torch.rand(1, 20, 20)
    n, ys, xs = greedy_argmax(scores, torch.zeros_like(scores, dtype=torch.bool), 1, 1000)
    pts = list(zip(ys.tolist(), xs.tolist()))
    for i in range(len(pts)):
        for j in range(i + 1, len(pts)):
            assert max(abs(pts[i][0] - pts[j][0]), abs(pts[i][1] - pts[j][1])) > 2


def test_hand_case_blocking():
    # best at (0,0); (0,1) and (1,2) are within 2 of it; (0,3) is 3 away
    s = torch.tensor([[[9.0, 8.0, 1.0, 7.0], [0.0, 0.0, 6.0, 0.0]]])
    n, ys, xs = greedy_argmax(s, torch.zeros_like(s, dtype=torch.bool), 1, 10)
    assert list(zip(ys.tolist(), xs.tolist())) == [(0, 0), (0, 3)]
    n, ys, xs = greedy_argmax(s, torch.zeros_like(s, dtype=torch.bool), 0, 3)
    assert list(zip(ys.tolist(), xs.tolist())) == [(0, 0), (0, 1), (0, 3)]


def test_ties_go_to_lowest_global_index_across_images():
    s = torch.zeros(2, 2, 2)
    ids = torch.tensor([5, 3])  # unsorted: image 3 has the lower global indices
    out = select_regions(s, torch.zeros(2, 2, 2, dtype=torch.int64), ids, torch.zeros(2, 2, 2, dtype=torch.bool), 0, None, 3)
    assert out["image_ids"].tolist() == [3, 3, 3]
    assert list(zip(out["ys"].tolist(), out["xs"].tolist())) == [(0, 0), (0, 1), (1, 0)]


def test_budget_larger_than_candidates():
    s = torch.rand(2, 3, 3)
    out = select_regions(s, torch.zeros(2, 3, 3, dtype=torch.int64), torch.tensor([0, 1]), torch.zeros(2, 3, 3, dtype=torch.bool), 1, None, 100)
    assert len(out["ys"]) == 2  # one 3x3 window fits each 3x3 image


def test_image_ranking():
    means = torch.tensor([0.5, 0.9, 0.9, 0.1])
    ids = torch.tensor([10, 4, 2, 7])
    excluded = torch.tensor([False, False, False, False])
    assert image_ranking(means, ids, 3, excluded).tolist() == [2, 4, 10]
    excluded[2] = True
    assert image_ranking(means, ids, 3, excluded).tolist() == [4, 10, 7]
