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
        # issue 12, item 4: each of these used to run (or crash with a raw Python error)
        (lambda lg, st: cbda.select(lg, budget=True, state=st), "budget"),
        (lambda lg, st: cbda.select(lg, budget="0.05", state=st), "budget"),
        (lambda lg, st: cbda.select(lg, budget=0.1, radius=4, state=st), "radius"),
        (lambda lg, st: cbda.select(lg, budget=0.1, radius=10**18, state=st), "radius"),
        (lambda lg, st: cbda.select(lg, budget=0.1, num_images=2, state=st), "num_images"),
        (lambda lg, st: cbda.select(lg, budget=0.1, num_images=5, state=st), "num_images"),
        (lambda lg, st: cbda.select(lg[:2], budget=0.1, state=st), "logits"),  # covers 2 of 3 images
        (lambda lg, st: cbda.select([(torch.tensor([0, 2]), lg[:2])], budget=0.1, state=st), "logits"),
        (lambda lg, st: cbda.select(iter([]), budget=0.1, state=st), "logits"),  # an empty stream
        (lambda lg, st: cbda.select(lg[:0], image_ids=[], budget=0.1, state=st, subset=True), "logits"),
        (lambda lg, st: cbda.select(lg[:2], budget=0.1, state=st, subset="yes"), "subset"),
        (lambda lg, st: cbda.select(lg, budget=0.1, state=st, seed="1"), "seed"),
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


@pytest.mark.parametrize("state", ["x", 3, {"num_images": 3}])
def test_state_must_be_an_active_label_state(state):
    with pytest.raises(InputError, match=r"^state: expected a cbda.ActiveLabelState"):
        cbda.select(random_logits(2, 3, 4, 4), budget=0.1, state=state)
    with pytest.raises(InputError, match=r"^state:"):
        cbda.AcquisitionRound(budget=0.1, state=state)


@pytest.mark.parametrize("budget", [True, False, "0.05", b"0.05", None, [0.05], torch.tensor([0.1, 0.2]), float("nan")])
def test_budget_must_be_a_number(budget):
    with pytest.raises(InputError, match=r"^budget:"):
        cbda.select(random_logits(2, 3, 4, 4), budget=budget, strategy="da")
    with pytest.raises(InputError, match=r"^budget:"):
        cbda.class_weights([1, 2], 16, budget, 1, 1)


@pytest.mark.parametrize("budget", [0.05, 1, np.float32(0.5), np.array(0.5), torch.tensor(0.5)])
def test_budget_accepts_real_numbers(budget):
    sel = cbda.select(random_logits(2, 3, 4, 4), budget=budget, strategy="da", radius=0)
    assert len(sel) > 0


def test_radius_must_let_a_region_fit_in_the_image():
    logits = random_logits(2, 3, 5, 9)
    cbda.select(logits, budget=0.2, strategy="da", radius=2)  # 5x5 in a 5x9 image: fits
    with pytest.raises(InputError, match=r"^radius: a \(2r\+1\)x\(2r\+1\) region must fit in the 5x9 image, so r <= 2, got 3"):
        cbda.select(logits, budget=0.2, strategy="da", radius=3)
    rnd = cbda.AcquisitionRound(budget=0.2, strategy="ra", radius=3)  # size unknown until the first batch
    with pytest.raises(InputError, match=r"^radius:"):
        rnd.add([0], logits[:1])
    # whole-image picks use r only as the ripu window radius: any radius is fine
    assert len(cbda.select(logits, budget=1.0, rounds=2, strategy="image", radius=7)) == 1


def test_partial_stream_is_refused_and_subset_is_explicit():
    n, c, h, w = 4, 3, 8, 8
    logits = random_logits(n, c, h, w, seed=6)
    st = cbda.ActiveLabelState((h, w), c, num_images=n)
    before = st.to_bytes()
    # a data loader that dropped its last batch: 2 of 4 images
    with pytest.raises(InputError, match=r"saw 2 of the 4 images.*missing ids include \[2, 3\].*subset=True"):
        cbda.select([([0, 1], logits[:2])], budget=0.2, rounds=2, strategy="cbda", state=st)
    assert st.to_bytes() == before
    # the same images as a deliberate subset: K = N·m with the whole set's N = 4
    sel = cbda.select([([0, 1], logits[:2])], budget=0.2, rounds=2, strategy="da", state=st, subset=True, radius=0)
    m = int(np.ceil(h * w * 0.1))
    assert len(sel) == min(n * m, 2 * h * w) and set(sel.image_ids.tolist()) == {0, 1}
    assert st.num_rounds == 1
    # class weights use N·H·W of the whole set, not of the subset
    st.label_from_ground_truth(lambda i: _gt(n, h, w, c)[i])
    sel2 = cbda.select([([2, 3], logits[2:])], budget=0.2, rounds=2, strategy="cbda", state=st, subset=True,
                       radius=0, commit=False)
    torch.testing.assert_close(sel2.class_weights, cbda.class_weights(st.class_counts(), n * h * w, 0.2, 2, 2))
    with pytest.raises(InputError, match="^subset:"):  # a subset of an unknown whole
        cbda.select(logits[:2], budget=0.2, strategy="da", subset=True)


def test_round_stays_open_after_a_coverage_error():
    logits = random_logits(3, 3, 6, 6, seed=2)
    rnd = cbda.AcquisitionRound(budget=0.2, rounds=2, strategy="da", num_images=3, radius=0)
    rnd.add([0, 2], logits[[0, 2]])
    with pytest.raises(InputError, match=r"missing ids include \[1\]"):
        rnd.finish()
    rnd.add([1], logits[1:2])  # the missing image arrives; now the round is whole
    assert torch.equal(rnd.finish().image_ids, cbda.select(logits, budget=0.2, rounds=2, strategy="da", radius=0).image_ids)


def test_empty_round_is_refused_and_not_recorded():
    st = cbda.ActiveLabelState((6, 6), 3, num_images=2)
    rnd = cbda.AcquisitionRound(budget=0.2, strategy="da", state=st)
    rnd.add([], random_logits(0, 3, 6, 6))
    with pytest.raises(InputError, match="received no image"):
        rnd.finish()
    assert st.num_rounds == 0


@pytest.mark.parametrize("backend", BACKENDS)
def test_ids_whose_global_index_overflows_int64_are_refused(backend):
    # ids 2^60 and 2^60 + 1 of 8x8 images: id·64 wraps around int64; the cpu backend used to
    # return picks "in images 0 and 1"
    logits = random_logits(2, 3, 8, 8, seed=1)
    ids = torch.tensor([2**60, 2**60 + 1])
    with pytest.raises(InputError, match=r"^image_ids: id 1152921504606846977 is too large for 8x8 images"):
        cbda.select(logits, image_ids=ids, budget=0.2, strategy="da", backend=backend)
    with pytest.raises(InputError, match=r"^image_ids:"):
        cbda.select(scores=torch.rand(2, 8, 8), image_ids=ids, budget=0.2, strategy="ra", backend=backend)
    # the largest id that fits still works, and its picks name it
    top = 2**63 // 64 - 1
    sel = cbda.select(logits, image_ids=[top - 1, top], budget=0.2, strategy="da", backend=backend)
    assert set(sel.image_ids.tolist()) <= {top - 1, top} and len(sel) > 0
    with pytest.raises(InputError, match=r"^num_images:"):
        cbda.select(logits, budget=0.2, strategy="da", num_images=2**63 // 64 + 1, subset=True, backend=backend)
    with pytest.raises(InputError, match=r"^num_images:"):
        cbda.ActiveLabelState((8, 8), 3, num_images=2**63 // 64 + 1)


@pytest.mark.parametrize("backend", BACKENDS)
def test_window_radius_beyond_the_image_equals_the_whole_image(backend):
    # windows are clipped, so r >= max(H, W) - 1 is the whole image; the cpu kernel used to
    # abort the process (std::bad_alloc) for r = 10**6
    logits = random_logits(2, 3, 6, 7, seed=3)
    want, _ = cbda.score(logits, radius=6, backend="reference")
    for r in (6, 10**6, 10**18):
        got, _ = cbda.score(logits, radius=r, backend=backend)
        torch.testing.assert_close(got, want)
    sel = cbda.select(logits, budget=1.0, rounds=2, strategy="image", radius=10**18, backend=backend)
    assert len(sel) == 1
    with pytest.raises(InputError, match="^seed:"):
        cbda.score(logits, heuristic="random", seed="1", backend=backend)
