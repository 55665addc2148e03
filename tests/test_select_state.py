"""select() with an ActiveLabelState: blocking across rounds, class weights from the
state's counts, error paths that leave the state untouched."""

import numpy as np
import pytest
import torch

import cbda
from cbda import _native
from cbda.errors import BackendUnavailableError, InputError, StateError
from helpers import random_logits

needs_cpu = pytest.mark.skipif(_native.load("_cpu") is None, reason="cbda._cpu not built")
BACKENDS = ["reference", pytest.param("cpu", marks=needs_cpu)]


def _picks(sel):
    return list(zip(sel.image_ids.tolist(), sel.ys.tolist(), sel.xs.tolist()))


def _gt(n, h, w, c, seed=0):
    return torch.randint(0, c, (n, h, w), generator=torch.Generator().manual_seed(seed)).to(torch.uint8)


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("strategy", ["ra", "da", "cbra", "cbda"])
def test_rounds_never_overlap_and_match_reference(backend, strategy):
    n, c, h, w = 4, 3, 12, 16
    logits = random_logits(n, c, 6, 8, seed=1)
    gt = _gt(n, h, w, c)
    states = {b: cbda.ActiveLabelState((h, w), c, num_images=n) for b in ("reference", backend)}
    for r in range(1, 4):
        sels = {}
        for b, st in states.items():
            sels[b] = cbda.select(logits, budget=0.3, rounds=3, strategy=strategy, radius=1,
                                  out_size=(h, w), state=st, backend=b)
            st.label_from_ground_truth(lambda i: gt[i])
        assert _picks(sels[backend]) == _picks(sels["reference"])
    st = states[backend]
    assert st.num_rounds == 3
    picks = st.picks()
    pts = list(zip(picks["image_ids"].tolist(), picks["ys"].tolist(), picks["xs"].tolist()))
    for i in range(len(pts)):
        for j in range(i + 1, len(pts)):
            if pts[i][0] == pts[j][0]:
                assert max(abs(pts[i][1] - pts[j][1]), abs(pts[i][2] - pts[j][2])) > 2


def test_class_weights_come_from_state_counts():
    n, c, h, w = 3, 4, 8, 8
    logits = random_logits(n, c, 8, 8, seed=2)
    gt = _gt(n, h, w, c, seed=3)
    st = cbda.ActiveLabelState((h, w), c, num_images=n)
    cbda.select(logits, budget=0.5, rounds=2, strategy="cbda", state=st)
    st.label_from_ground_truth(lambda i: gt[i])
    sel = cbda.select(logits, budget=0.5, rounds=2, strategy="cbda", state=st, commit=False)
    want = cbda.class_weights(st.class_counts(before_round=2), n * h * w, 0.5, 2, 2)
    torch.testing.assert_close(sel.class_weights, want)
    assert st.num_rounds == 1  # commit=False


def test_pending_labels_block_class_balancing():
    st = cbda.ActiveLabelState((8, 8), 3, num_images=2)
    logits = random_logits(2, 3, 8, 8)
    cbda.select(logits, budget=0.5, rounds=2, strategy="cbda", state=st)
    with pytest.raises(StateError, match="pending"):
        cbda.select(logits, budget=0.5, rounds=2, strategy="cbda", state=st)
    # without class balancing the next round can go ahead
    cbda.select(logits, budget=0.5, rounds=2, strategy="da", state=st)
    assert st.num_rounds == 2


def test_whole_images_are_not_picked_again():
    st = cbda.ActiveLabelState((4, 4), 2, num_images=4)
    logits = random_logits(4, 2, 4, 4, seed=8)
    a = cbda.select(logits, budget=1.0, rounds=2, strategy="image", state=st)
    b = cbda.select(logits, budget=1.0, rounds=2, strategy="image", state=st)
    assert len(a) == 2 and len(b) == 2
    assert not set(a.image_ids.tolist()) & set(b.image_ids.tolist())


@pytest.mark.parametrize(
    "call, name",
    [
        (lambda lg, st: cbda.select(lg * float("nan"), budget=0.1, state=st), "logits"),
        (lambda lg, st: cbda.select(lg[:, :1], budget=0.1, state=st), "logits"),
        (lambda lg, st: cbda.select(lg, budget=0.0, state=st), "budget"),
        (lambda lg, st: cbda.select(lg, budget=1.5, state=st), "budget"),
        (lambda lg, st: cbda.select(lg, budget=0.1, rounds=5, round_index=6, state=st), "round_index"),
        (lambda lg, st: cbda.select(lg, budget=0.1, round_index=0, state=st), "round_index"),
        (lambda lg, st: cbda.select(lg, budget=0.1, round_index=3, state=st), "round_index"),
        (lambda lg, st: cbda.select(lg, budget=0.1, image_ids=[0, 0, 1], state=st), "image_ids"),
        (lambda lg, st: cbda.select(lg, budget=0.1, image_ids=[0, 1, 9], state=st), "image_ids"),
        (lambda lg, st: cbda.select(lg, budget=0.1, image_ids=[0, 1], state=st), "image_ids"),
        (lambda lg, st: cbda.select(lg, budget=0.1, strategy="nope", state=st), "strategy"),
        (lambda lg, st: cbda.select(lg, budget=0.1, heuristic="nope", state=st), "heuristic"),
        (lambda lg, st: cbda.select(lg, budget=0.1, backend="nope", state=st), "backend"),
        (lambda lg, st: cbda.select(lg, budget=0.1, radius=-1, state=st), "radius"),
        (lambda lg, st: cbda.select(lg, budget=0.1, out_size=(5, 5), state=st), "out_size"),
        (lambda lg, st: cbda.select(lg[..., :4], budget=0.1, state=st), "logits"),
        (lambda lg, st: cbda.select(lg.to(torch.int32), budget=0.1, state=st), "logits"),
        (lambda lg, st: cbda.select(torch.cat([lg, lg[:, :1]], 1), budget=0.1, state=st), "logits"),
        (lambda lg, st: cbda.select(lg, budget=0.1, class_weights=[1.0, 2.0], state=st), "class_weights"),
        (lambda lg, st: cbda.select(lg, budget=0.1, goal=[1.0], state=st), "goal"),
        (lambda lg, st: cbda.select(scores=torch.rand(3, 8, 8), pseudo_labels=torch.full((3, 8, 8), 7), budget=0.1, state=st), "pseudo_labels"),
        (lambda lg, st: cbda.select(scores=torch.rand(3, 8, 8), budget=0.1, state=st), "pseudo_labels"),
        (lambda lg, st: cbda.select(scores=torch.rand(3, 8, 8).masked_fill(torch.rand(3, 8, 8) > 0.5, float("inf")), budget=0.1, strategy="da", state=st), "scores"),
        (lambda lg, st: cbda.select(lg, scores=torch.rand(3, 8, 8), budget=0.1, state=st), "logits"),
        (lambda lg, st: cbda.select([(torch.tensor([0, 1]), lg[:2]), (torch.tensor([1]), lg[1:2])], budget=0.1, state=st), "image_ids"),
    ],
)
def test_errors_name_the_argument_and_leave_state_untouched(call, name):
    n, c, h, w = 3, 3, 8, 8
    logits = random_logits(n, c, h, w, seed=4)
    st = cbda.ActiveLabelState((h, w), c, num_images=n)
    cbda.select(logits, budget=0.5, rounds=5, strategy="cbda", state=st)
    st.label_from_ground_truth(lambda i: _gt(n, h, w, c)[i])
    before = st.to_bytes()
    with pytest.raises((InputError, StateError)) as info:
        call(logits, st)
    assert name in str(info.value)
    assert st.to_bytes() == before


def test_forced_unavailable_backend_says_why():
    logits = random_logits(1, 3, 4, 4)
    for name in ("cuda", "triton"):
        try:
            cbda.score(logits, backend=name)
        except BackendUnavailableError as err:
            assert name in str(err)
        else:  # pragma: no cover - only on a machine where it runs on CPU tensors
            pytest.fail(f"backend {name} accepted CPU tensors")


def test_iterable_needs_num_images():
    logits = random_logits(2, 3, 4, 4)
    with pytest.raises(InputError, match="num_images"):
        cbda.select([([0, 1], logits)], budget=0.1, strategy="da")


def test_info_runs(capsys):
    from cbda import info

    assert info.main([]) == 0
    out = capsys.readouterr().out
    assert "backend='auto' on cpu tensors picks" in out
