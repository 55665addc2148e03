import math

import pytest
import torch

import cbda
from cbda.errors import InputError


def test_class_weights_by_hand():
    # B_c = 1000 * 0.3 * (1/3) * 1/1 = 100
    w = cbda.class_weights([0, 50, 100], num_pixels=1000, budget=0.3, round_index=1, rounds=1)
    assert w.dtype == torch.float32
    assert w.tolist() == pytest.approx([1.0, 0.5, 1e-6])


def test_class_weights_grow_with_round_and_follow_goal():
    # round 2 of 4: B_c = 1000 * 0.4 * g_c * 0.5
    w = cbda.class_weights([10, 10], 1000, 0.4, 2, 4, goal=[3, 1])
    assert w.tolist() == pytest.approx([1 - 10 / 150, 1 - 10 / 50])


def test_class_weights_zero_goal_gets_eps():
    w = cbda.class_weights([0, 0, 0], 100, 0.5, 1, 1, goal=[1, 1, 0], eps=1e-3)
    assert w.tolist() == pytest.approx([1.0, 1.0, 1e-3])


@pytest.mark.parametrize(
    "kwargs, name",
    [
        (dict(budget=0.0), "budget"),
        (dict(budget=1.5), "budget"),
        (dict(round_index=0), "round_index"),
        (dict(round_index=6), "round_index"),
        (dict(num_pixels=0), "num_pixels"),
        (dict(labelled_counts=[1]), "labelled_counts"),
        (dict(labelled_counts=[1, -2]), "labelled_counts"),
        (dict(goal=[1, 2, 3]), "goal"),
    ],
)
def test_class_weights_errors(kwargs, name):
    args = dict(labelled_counts=[1, 2], num_pixels=100, budget=0.1, round_index=1, rounds=5)
    args.update(kwargs)
    with pytest.raises(InputError, match=name):
        cbda.class_weights(**args)


def test_imbalance_score_extremes():
    assert cbda.imbalance_score([5, 5, 5, 5]) == pytest.approx(0.0, abs=1e-12)
    assert cbda.imbalance_score([0, 7, 0, 0]) == pytest.approx(1.0)
    q = torch.tensor([0.5, 0.25, 0.25])
    want = float((q * torch.log(q * 3)).sum()) / math.log(3)
    assert cbda.imbalance_score(q * 40) == pytest.approx(want)


@pytest.mark.parametrize("bad", [[0, 0], [1], [1, float("nan")], [-1, 2]])
def test_imbalance_score_errors(bad):
    with pytest.raises(InputError, match="class_histogram"):
        cbda.imbalance_score(bad)
