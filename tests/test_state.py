"""ActiveLabelState: recording, labels, class counts, blocked centres, persistence, exports."""

from __future__ import annotations

import json
import os
import struct
import zlib

import numpy as np
import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from cbda.errors import InputError, StateError, StateFileError
from cbda.selection import Selection
from cbda.state import ActiveLabelState, PriorPicks
from cbda.state.png import decode_png, encode_png, read_png


# ---------------------------------------------------------------------------- helpers

def make_sel(ids, ys, xs, radius, round_index, size, strategy="da", scores=None, classes=None, class_weights=None):
    n = len(ids)
    t = lambda v: torch.tensor(v, dtype=torch.int64).reshape(-1)  # noqa: E731
    return Selection(
        image_ids=t(ids), ys=t(ys), xs=t(xs),
        scores=torch.tensor(scores if scores is not None else [float(n - i) for i in range(n)], dtype=torch.float32).reshape(-1),
        classes=t(classes if classes is not None else [0] * n),
        radius=radius, image_size=tuple(size), round_index=round_index, strategy=strategy,
        class_weights=class_weights,
    )


def whole_sel(ids, round_index, size):
    m1 = [-1] * len(ids)
    return make_sel(ids, m1, m1, 0, round_index, size, strategy="image", classes=m1)


def gt_maps(n, size, c, seed=0, void_frac=0.1):
    g = np.random.default_rng(seed)
    maps = g.integers(0, c, size=(n, *size)).astype(np.uint8)
    maps[g.random((n, *size)) < void_frac] = 255
    return maps


def brute_window(gt, y, x, r):
    h, w = gt.shape
    out = np.full((2 * r + 1, 2 * r + 1), 255, dtype=np.uint8)
    for dy in range(-r, r + 1):
        for dx in range(-r, r + 1):
            if 0 <= y + dy < h and 0 <= x + dx < w:
                out[dy + r, dx + r] = gt[y + dy, x + dx]
    return out


def brute_blocked(picks, image_id, size, radius):
    h, w = size
    out = np.zeros(size, dtype=bool)
    for i, y, x, r in picks:
        if i != image_id:
            continue
        for yy in range(h):
            for xx in range(w):
                if y < 0 or max(abs(yy - y), abs(xx - x)) <= r + radius:
                    out[yy, xx] = True
    return out


def random_rounds(seed, size, n_images, radii, per_round):
    """Non-overlapping random picks: list of (ids, ys, xs, r) per round (brute-force check)."""
    g = np.random.default_rng(seed)
    h, w = size
    taken: list[tuple[int, int, int, int]] = []
    rounds = []
    for r in radii:
        ids, ys, xs = [], [], []
        for _ in range(per_round * 4):
            if len(ids) >= per_round:
                break
            i, y, x = int(g.integers(n_images)), int(g.integers(h)), int(g.integers(w))
            if any(i == j and max(abs(y - yy), abs(x - xx)) <= r + rr for j, yy, xx, rr in taken):
                continue
            taken.append((i, y, x, r))
            ids.append(i), ys.append(y), xs.append(x)
        rounds.append((ids, ys, xs, r))
    return rounds


def build_state(seed=0, size=(9, 11), c=4, n_images=5, radii=(1, 0, 2), per_round=6, label_rounds=None):
    st_ = ActiveLabelState(size, c, n_images)
    gts = gt_maps(n_images, size, c, seed)
    for k, (ids, ys, xs, r) in enumerate(random_rounds(seed, size, n_images, radii, per_round), start=1):
        st_.record(make_sel(ids, ys, xs, r, k, size))
        if label_rounds is None or k in label_rounds:
            st_.label_from_ground_truth(lambda i: gts[i])
    return st_, gts


# ---------------------------------------------------------------------------- construction

@pytest.mark.parametrize(
    "args",
    [((0, 4), 3, None), ((4,), 3, None), ((4, 4), 1, None), ((4, 4), 3, 0), ((4, 4), 300, None),
     ((4.0, 4), 3, None), ("ab", 3, None)],
)
def test_constructor_rejects(args):
    with pytest.raises(InputError):
        ActiveLabelState(*args)


def test_empty_state():
    s = ActiveLabelState((4, 5), 3)
    assert s.num_rounds == 0 and s.num_picks == 0 and not s.labels_pending()
    assert s.class_counts().tolist() == [0, 0, 0]
    assert s.class_histogram().tolist() == [0.0, 0.0, 0.0]
    assert s.labelled_image_ids().numel() == 0
    assert s.picks()["image_ids"].dtype == torch.int64 and s.picks()["scores"].dtype == torch.float32
    assert not s.blocked_mask(7, 2).any()
    p = s.prior_picks(torch.tensor([3, 1]))
    assert p.offsets.tolist() == [0, 0, 0] and p.whole_image.tolist() == [False, False]
    assert "rounds=0" in repr(s)


# ---------------------------------------------------------------------------- labels by hand

@pytest.mark.parametrize("r", [0, 1, 2])
def test_corner_windows_by_hand(r):
    size = (6, 7)
    gt = np.arange(42, dtype=np.uint8).reshape(size) % 5
    gt[0, 0] = 255
    s = ActiveLabelState(size, 5, 1)
    centres = [(0, 0), (5, 6)] if r else [(0, 0), (5, 6), (2, 3)]
    s.record(make_sel([0] * len(centres), [c[0] for c in centres], [c[1] for c in centres], r, 1, size))
    assert s.labels_pending() and s.labels_pending(1)
    s.label_from_ground_truth(lambda i: torch.from_numpy(gt.astype(np.int32)))
    assert not s.labels_pending()
    labels = s.labels(1)
    assert labels.shape == (len(centres), 2 * r + 1, 2 * r + 1) and labels.dtype == np.uint8
    for k, (y, x) in enumerate(centres):
        np.testing.assert_array_equal(labels[k], brute_window(gt, y, x, r))
    expect_map = np.full(size, 255, np.uint8)
    mask = np.zeros(size, bool)
    for y, x in centres:
        ys, xs = slice(max(y - r, 0), y + r + 1), slice(max(x - r, 0), x + r + 1)
        expect_map[ys, xs] = gt[ys, xs]
        mask[ys, xs] = True
    np.testing.assert_array_equal(s.label_map(0), expect_map)
    np.testing.assert_array_equal(s.labelled_mask(0).numpy(), mask)
    assert s.num_labelled_pixels() == int(mask.sum())
    counts = np.bincount(gt[mask][gt[mask] != 255], minlength=5)
    assert s.class_counts().tolist() == counts.tolist()


def test_corner_r1_counts_are_clipped():
    s = ActiveLabelState((5, 5), 2)
    s.record(make_sel([3], [0], [4], 1, 1, (5, 5)))
    assert s.num_labelled_pixels() == 4
    s.label_from_ground_truth(lambda i: np.ones((5, 5), np.int64))
    assert s.class_counts().tolist() == [0, 4]  # the 5 out-of-image positions are not counted
    np.testing.assert_array_equal(s.labels(1)[0], [[255, 255, 255], [1, 1, 255], [1, 1, 255]])


def test_set_labels_forces_outside_to_void_and_accepts_any_int_dtype():
    s = ActiveLabelState((4, 4), 3)
    s.record(make_sel([0, 0], [0, 3], [0, 3], 1, 1, (4, 4)))
    lab = torch.ones((2, 3, 3), dtype=torch.int32)
    s.set_labels(1, lab)
    out = s.labels(1)
    assert out[0, 0].tolist() == [255, 255, 255] and out[0, 1].tolist() == [255, 1, 1]
    assert s.class_counts().tolist() == [0, 8, 0]
    s.set_labels(1, np.full((2, 3, 3), 2, dtype=np.uint16))  # replacing is allowed
    assert s.class_counts().tolist() == [0, 0, 8]


def test_whole_image_picks():
    size = (3, 4)
    gts = gt_maps(4, size, 3, seed=1)
    s = ActiveLabelState(size, 3, 4)
    s.record(make_sel([1], [1], [1], 0, 1, size))
    s.label_from_ground_truth(lambda i: gts[i])
    s.record(whole_sel([2, 0], 2, size))
    assert s.labels_pending(2) and not s.labels_pending(1)
    with pytest.raises(StateError):
        s.class_counts()
    assert s.class_counts(before_round=2).tolist() == np.bincount(gts[1, 1:2, 1][gts[1, 1:2, 1] < 3], minlength=3).tolist()
    s.label_from_ground_truth(lambda i: torch.from_numpy(gts[i]))
    assert s.labels(2).shape == (2, 3, 4)
    np.testing.assert_array_equal(s.label_map(2), gts[2])
    assert s.labelled_mask(0).all() and s.blocked_mask(0, 0).all() and s.blocked_mask(2, 3).all()
    assert s.num_labelled_pixels() == 1 + 2 * 12
    assert s.labelled_image_ids().tolist() == [0, 1, 2]
    p = s.prior_picks([0, 1, 2, 3])
    assert p.whole_image.tolist() == [True, False, True, False]
    assert p.offsets.tolist() == [0, 0, 1, 1, 1] and p.ys.tolist() == [1]
    # whole picks of image 1 (has a region pick) and a region pick in a whole image: rejected
    with pytest.raises(InputError, match="overlaps"):
        s.record(whole_sel([1], 3, size))
    with pytest.raises(InputError, match="labelled whole"):
        s.record(make_sel([0], [0], [0], 0, 3, size))
    with pytest.raises(InputError, match="more than once"):
        s.record(whole_sel([3, 3], 3, size))
    with pytest.raises(InputError, match="-1"):
        s.record(make_sel([3], [0], [0], 0, 3, size, strategy="image"))
    counts = np.bincount(gts[[0, 2]].ravel()[gts[[0, 2]].ravel() < 3], minlength=3)
    counts += np.bincount(gts[1, 1:2, 1][gts[1, 1:2, 1] < 3], minlength=3)
    assert s.class_counts().tolist() == counts.tolist()


def test_class_counts_by_hand_with_void_and_before_round():
    size = (5, 5)
    s = ActiveLabelState(size, 3)
    s.record(make_sel([0, 1], [2, 0], [2, 0], 1, 1, size))
    s.set_labels(1, np.array([[[0, 0, 1], [1, 255, 2], [2, 2, 2]], [[255, 255, 255], [255, 0, 0], [255, 1, 255]]]))
    s.record(make_sel([0], [4], [0], 0, 2, size))
    s.set_labels(2, [[[1]]])
    s.record(make_sel([1], [4], [4], 0, 3, size))
    assert s.class_counts(before_round=1).tolist() == [0, 0, 0]
    assert s.class_counts(before_round=2).tolist() == [4, 3, 4]
    assert s.class_counts(before_round=3).tolist() == [4, 4, 4]
    with pytest.raises(StateError, match="round 3"):
        s.class_counts()
    with pytest.raises(StateError):
        s.class_counts(before_round=4)
    s.set_labels(3, torch.tensor([[[255]]]))
    assert s.class_counts().tolist() == [4, 4, 4]
    assert torch.allclose(s.class_histogram(), torch.full((3,), 1 / 3, dtype=torch.float64))
    assert s.num_labelled_pixels() == 9 + 4 + 1 + 1
    with pytest.raises(InputError):
        s.class_counts(before_round=0)


def test_empty_round_is_not_pending():
    s = ActiveLabelState((4, 4), 3)
    s.record(make_sel([], [], [], 1, 1, (4, 4)))
    assert s.num_rounds == 1 and not s.labels_pending() and s.labels(1).shape == (0, 3, 3)
    assert s.class_counts().tolist() == [0, 0, 0]
    s.label_from_ground_truth(lambda i: 1 / 0)  # never called: no picks
    assert ActiveLabelState.from_bytes(s.to_bytes()).to_bytes() == s.to_bytes()


def test_picks_and_selection_round_trip():
    size = (8, 8)
    s = ActiveLabelState(size, 3, 10)
    cw = torch.tensor([0.5, 1.0, 0.25])
    sel1 = make_sel([4, 2], [1, 6], [1, 6], 1, 1, size, scores=[2.5, -1.0], classes=[2, 0], class_weights=cw)
    sel2 = make_sel([2], [0], [7], 0, 2, size, scores=[0.1], classes=[1])
    s.record(sel1)
    s.record(sel2)
    p = s.picks()
    assert p["image_ids"].tolist() == [4, 2, 2] and p["rounds"].tolist() == [1, 1, 2]
    assert p["radii"].tolist() == [1, 1, 0] and p["classes"].tolist() == [2, 0, 1]
    assert p["scores"].tolist() == [2.5, -1.0, pytest.approx(0.1)]
    assert s.picks(2)["xs"].tolist() == [7]
    back = s.selection(1)
    for f in ("image_ids", "ys", "xs", "scores", "classes", "class_weights"):
        assert torch.equal(getattr(back, f), getattr(sel1, f))
    assert (back.radius, back.round_index, back.strategy, back.image_size) == (1, 1, "da", size)
    assert s.num_picks == 3 and s.round_unit(1) == "region"


# ---------------------------------------------------------------------------- overlap rule

def test_overlap_rejection_thresholds():
    size = (20, 20)
    s = ActiveLabelState(size, 3)
    s.record(make_sel([0], [10], [10], 2, 1, size))
    with pytest.raises(InputError, match="overlaps an earlier pick"):  # distance 3 = 2 + 1
        s.record(make_sel([0], [13], [7], 1, 2, size))
    s.record(make_sel([0, 1], [14, 10], [6, 10], 1, 2, size))  # distance 4 > 2 + 1; other image
    with pytest.raises(InputError, match="same round"):  # Chebyshev 2 <= 1 + 1 within a round
        s.record(make_sel([2, 2], [0, 2], [0, 2], 1, 3, size))
    with pytest.raises(InputError, match="same round"):
        s.record(make_sel([2, 2], [5, 5], [5, 5], 0, 3, size))  # duplicate centre
    s.record(make_sel([2, 2, 0], [0, 3, 19], [0, 3, 19], 1, 3, size))  # distance 3 > 2: fine
    with pytest.raises(InputError, match="overlaps"):  # r=0 inside the r=2 window of round 1
        s.record(make_sel([0], [12], [8], 0, 4, size))
    s.record(make_sel([0], [13], [10], 0, 4, size))


def test_overlap_check_matches_brute_force():
    g = np.random.default_rng(5)
    size = (12, 10)
    for trial in range(30):
        s = ActiveLabelState(size, 3, 3)
        taken = []
        for k in range(1, 4):
            r = int(g.integers(0, 3))
            n = int(g.integers(1, 6))
            ids, ys, xs = g.integers(0, 3, n), g.integers(0, size[0], n), g.integers(0, size[1], n)
            cand = list(zip(ids.tolist(), ys.tolist(), xs.tolist()))
            bad = any(i == j and max(abs(y - yy), abs(x - xx)) <= r + rr for i, y, x in cand for j, yy, xx, rr in taken)
            bad |= any(a[0] == b[0] and max(abs(a[1] - b[1]), abs(a[2] - b[2])) <= 2 * r
                       for p, a in enumerate(cand) for b in cand[p + 1:])
            before = s.to_bytes()
            if bad:
                with pytest.raises(InputError):
                    s.record(make_sel(ids, ys, xs, r, s.num_rounds + 1, size))
                assert s.to_bytes() == before
            else:
                s.record(make_sel(ids, ys, xs, r, s.num_rounds + 1, size))
                taken += [(i, y, x, r) for i, y, x in cand]


# ---------------------------------------------------------------------------- blocked centres

def test_blocked_mask_matches_brute_force():
    size = (9, 11)
    s, _ = build_state(seed=3, size=size, radii=(1, 0, 2), per_round=8, label_rounds=())
    rows = list(zip(*(s.picks()[k].tolist() for k in ("image_ids", "ys", "xs", "radii"))))
    for image_id in range(5):
        for radius in (0, 1, 2):
            want = brute_blocked(rows, image_id, size, radius)
            np.testing.assert_array_equal(s.blocked_mask(image_id, radius).numpy(), want)


def test_prior_picks_csr_matches_per_image_data():
    size = (9, 11)
    s = ActiveLabelState(size, 4, 7)
    for k, (ids, ys, xs, r) in enumerate(random_rounds(4, size, 5, (0, 2, 1), 9), start=1):
        s.record(make_sel(ids, ys, xs, r, k, size))
    s.record(whole_sel([5], 4, size))
    p = s.picks()
    batch = torch.tensor([3, 0, 5, 3, 4, 6, 1, 2])
    prior = s.prior_picks(batch)
    assert prior.offsets.dtype == torch.int64 and prior.whole_image.dtype == torch.bool
    assert prior.offsets.shape == (9,) and prior.offsets[0] == 0
    assert prior.whole_image.tolist() == [False, False, True, False, False, False, False, False]
    for b, i in enumerate(batch.tolist()):
        a, e = prior.offsets[b].item(), prior.offsets[b + 1].item()
        got = list(zip(prior.ys[a:e].tolist(), prior.xs[a:e].tolist(), prior.radii[a:e].tolist()))
        sel = (p["image_ids"] == i) & (p["ys"] >= 0)
        want = sorted(zip(p["ys"][sel].tolist(), p["xs"][sel].tolist(), p["radii"][sel].tolist()))
        assert got == want
        assert bool(prior.whole_image[b]) == bool(((p["image_ids"] == i) & (p["ys"] < 0)).any())
    dense = prior.blocked_masks(size, 1)
    assert dense.shape == (8, *size) and dense.dtype == torch.bool
    for b, i in enumerate(batch.tolist()):
        assert torch.equal(dense[b], s.blocked_mask(i, 1))
    with pytest.raises(InputError):
        s.prior_picks(torch.tensor([7]))  # num_images = 7
    with pytest.raises(InputError):
        s.prior_picks(torch.tensor([[0]]))


def test_prior_picks_empty():
    e = PriorPicks.empty(3)
    assert e.offsets.tolist() == [0, 0, 0, 0] and e.num_picks == 0 and e.batch_size == 3
    assert not e.blocked_masks((4, 5), 2).any() and e.blocked_masks((4, 5), 2).shape == (3, 4, 5)
    assert PriorPicks.empty(0).blocked_masks((2, 2), 0).shape == (0, 2, 2)


def test_many_picks_record_is_fast_enough():
    # Thousands of picks per round: the overlap check must not be pairwise over all picks.
    size = (64, 64)
    n = 50
    g = np.arange(0, 64, 3)  # r = 1 windows on a 3-pixel grid touch but never overlap
    yy, xx = (a.ravel() for a in np.meshgrid(g, g, indexing="ij"))
    half = yy.size // 2
    s = ActiveLabelState(size, 4, n)
    for k, part in enumerate((slice(0, half), slice(half, None)), start=1):
        m = yy[part].size
        s.record(make_sel(np.repeat(np.arange(n), m), np.tile(yy[part], n), np.tile(xx[part], n), 1, k, size))
    assert s.num_picks == n * yy.size
    assert s.prior_picks(torch.arange(n)).num_picks == s.num_picks
    assert s.num_labelled_pixels() == n * 64 * 64
    with pytest.raises(InputError, match="overlaps"):
        s.record(make_sel([n - 1], [63], [62], 0, 3, size))


# ---------------------------------------------------------------------------- errors leave state unchanged

def _error_cases(s, size):
    gt_bad_shape = lambda i: np.zeros((size[0] + 1, size[1]), np.int64)  # noqa: E731
    gt_bad_value = lambda i: np.full(size, 7, np.int64)  # noqa: E731

    def gt_raises(i):
        raise RuntimeError("disk gone")

    n2 = s.picks(2)["image_ids"].numel()
    return [
        (StateError, lambda: s.record(make_sel([0], [0], [0], 0, 2, size))),
        (StateError, lambda: s.record(make_sel([0], [0], [0], 0, 4, (size[0], size[1] + 1)))),
        (InputError, lambda: s.record(make_sel([5], [0], [0], 0, 4, size))),
        (InputError, lambda: s.record(make_sel([-1], [0], [0], 0, 4, size))),
        (InputError, lambda: s.record(make_sel([0], [size[0]], [0], 0, 4, size))),
        (InputError, lambda: s.record(make_sel([0], [0], [-1], 0, 4, size))),
        (InputError, lambda: s.record(make_sel([0, 0], [0, 0], [0, 0], 0, 4, size))),
        (InputError, lambda: s.record(make_sel([0], [0], [0], -1, 4, size))),
        (InputError, lambda: s.record("not a selection")),
        (InputError, lambda: s.set_labels(2, np.zeros((n2, 5, 5), np.int64))),
        (InputError, lambda: s.set_labels(2, np.full((n2, 1, 1), 4, np.int64))),
        (InputError, lambda: s.set_labels(2, np.full((n2, 1, 1), -1, np.int64))),
        (InputError, lambda: s.set_labels(2, np.zeros((n2, 1, 1), np.float32))),
        (InputError, lambda: s.set_labels(1, torch.full((s.picks(1)["ys"].numel(), 3, 3), 254))),
        (StateError, lambda: s.set_labels(0, np.zeros((n2, 1, 1)))),
        (StateError, lambda: s.set_labels(4, np.zeros((n2, 1, 1)))),
        (InputError, lambda: s.label_from_ground_truth(gt_bad_shape)),
        (InputError, lambda: s.label_from_ground_truth(gt_bad_value, 1)),
        (InputError, lambda: s.label_from_ground_truth("nope")),
        (RuntimeError, lambda: s.label_from_ground_truth(gt_raises, 2)),
        (InputError, lambda: s.labelled_mask(5)),
        (InputError, lambda: s.blocked_mask(0, -1)),
        (InputError, lambda: s.export_regions(os.devnull, names=["x"])),
    ]


def test_every_error_path_leaves_the_state_unchanged(tmp_path):
    size = (9, 11)
    s, _ = build_state(seed=7, size=size, radii=(1, 0, 2), per_round=5, label_rounds=(1, 3))
    assert s.pending_rounds() == [2]
    s.save(tmp_path / "a.state")
    before = (tmp_path / "a.state").read_bytes()
    for case, (exc, call) in enumerate(_error_cases(s, size)):
        with pytest.raises(exc) as info:  # case = index into _error_cases on failure
            call()
        if exc is InputError:  # messages name the argument
            assert ":" in str(info.value)
        assert s.to_bytes() == before, info.value
        s.save(tmp_path / "b.state")
        assert (tmp_path / "b.state").read_bytes() == before


def test_error_messages_name_the_argument():
    s = ActiveLabelState((4, 4), 3)
    s.record(make_sel([0], [1], [1], 0, 1, (4, 4)))
    with pytest.raises(InputError, match=r"^labels:"):
        s.set_labels(1, np.full((1, 1, 1), 9))
    with pytest.raises(InputError, match=r"^lookup:"):
        s.label_from_ground_truth(lambda i: np.zeros((3, 4)))
    with pytest.raises(InputError, match=r"^lookup \(image 0\):"):
        s.label_from_ground_truth(lambda i: np.full((4, 4), 3))
    with pytest.raises(StateError, match=r"^selection:"):
        s.record(make_sel([0], [1], [1], 0, 3, (4, 4)))
    with pytest.raises(InputError, match=r"^selection.image_ids:"):
        ActiveLabelState((4, 4), 3, 1).record(make_sel([1], [1], [1], 0, 1, (4, 4)))


# ---------------------------------------------------------------------------- persistence

@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(
    seed=st.integers(0, 10_000),
    h=st.integers(1, 9), w=st.integers(1, 9), c=st.integers(2, 6),
    n_images=st.integers(1, 4),
    radii=st.lists(st.integers(0, 2), min_size=0, max_size=4),
    per_round=st.integers(0, 6),
    labelled=st.lists(st.booleans(), min_size=4, max_size=4),
    whole=st.booleans(),
    known=st.booleans(),
)
def test_save_load_round_trip_property(tmp_path, seed, h, w, c, n_images, radii, per_round, labelled, whole, known):
    size = (h, w)
    s = ActiveLabelState(size, c, n_images if known else None)
    gts = gt_maps(n_images + 1, size, c, seed)
    rounds = random_rounds(seed, size, n_images, radii, per_round)
    for k, (ids, ys, xs, r) in enumerate(rounds, start=1):
        cw = torch.rand(c, generator=torch.Generator().manual_seed(seed)) if k % 2 else None
        s.record(make_sel(ids, ys, xs, r, k, size, scores=list(np.linspace(-1, 1, len(ids))),
                          classes=[k % c] * len(ids), class_weights=cw))
        if labelled[k - 1]:
            s.label_from_ground_truth(lambda i: gts[i])
    if whole:
        s.record(whole_sel([n_images] if not known else [], s.num_rounds + 1, size))
        s.label_from_ground_truth(lambda i: gts[i])
    data = s.to_bytes()
    b = ActiveLabelState.from_bytes(data)
    assert b.to_bytes() == data
    path = tmp_path / f"s{seed}.state"
    s.save(path)
    a = ActiveLabelState.load(path)
    assert a.to_bytes() == data
    for other in (a, b):
        assert (other.image_size, other.num_classes, other.num_images) == (s.image_size, s.num_classes, s.num_images)
        assert other.pending_rounds() == s.pending_rounds()
        for k in range(1, s.num_rounds + 1):
            for key, v in s.picks(k).items():
                assert torch.equal(other.picks(k)[key], v)
            la, lb = s.labels(k), other.labels(k)
            assert (la is None and lb is None) or np.array_equal(la, lb)
        if not s.pending_rounds():
            assert torch.equal(other.class_counts(), s.class_counts())
        for i in s.labelled_image_ids().tolist():
            np.testing.assert_array_equal(other.label_map(i), s.label_map(i))
    assert repr(a) == repr(s)


def test_from_bytes_rejects_garbage():
    with pytest.raises(InputError, match="^data:"):
        ActiveLabelState.from_bytes(b"not a zip")
    with pytest.raises(InputError, match="^data:"):
        ActiveLabelState.from_bytes("str")
    good = build_state(seed=1)[0].to_bytes()
    with pytest.raises(InputError, match="^data:"):
        ActiveLabelState.from_bytes(good[: len(good) // 2])


def test_from_bytes_rejects_overlapping_picks():
    s = ActiveLabelState((8, 8), 3)
    s.record(make_sel([0], [2], [2], 1, 1, (8, 8)))
    s.record(make_sel([0], [6], [6], 1, 2, (8, 8)))
    s._rounds[1].ys[0] = s._rounds[1].xs[0] = 4  # tamper: Chebyshev 2 <= 1 + 1
    data = s.to_bytes()
    with pytest.raises(InputError, match="^data:.*overlaps"):
        ActiveLabelState.from_bytes(data)
    assert ActiveLabelState.from_bytes(data, check_overlap=False).num_picks == 2


def _rewrite_member(data: bytes, name: str, payload: bytes | None = None, flip: int | None = None) -> bytes:
    """The state zip with member ``name`` replaced (its compressed bytes flipped at ``flip``)."""
    import io
    import zipfile

    src = zipfile.ZipFile(io.BytesIO(data))
    out = io.BytesIO()
    with zipfile.ZipFile(out, "w") as dst:
        for info in src.infolist():
            body = src.read(info.filename)
            if info.filename == name and payload is not None:
                body = payload
            dst.writestr(info, body, compress_type=zipfile.ZIP_DEFLATED)
    raw = bytearray(out.getvalue())
    if flip is not None:  # corrupt the deflate stream of that member, keeping the zip structure
        z = zipfile.ZipFile(io.BytesIO(bytes(raw)))
        info = z.getinfo(name)
        start = info.header_offset + 30 + len(info.filename.encode()) + len(info.extra)
        raw[start + flip] ^= 0xFF
    return bytes(raw)


def _corrupt_files(good: bytes) -> dict[str, bytes]:
    import io
    import zipfile

    npz = io.BytesIO()
    np.savez_compressed(npz, image_ids=np.arange(3))
    foreign_zip = io.BytesIO()
    with zipfile.ZipFile(foreign_zip, "w") as z:
        z.writestr("meta.json", json.dumps({"format": "something.else", "version": 1}))
    meta = json.loads(zipfile.ZipFile(io.BytesIO(good)).read("meta.json"))
    newer = dict(meta, version=99)
    lying = json.loads(json.dumps(meta))
    lying["rounds"][0]["num_picks"] += 1
    no_rounds = {k: v for k, v in meta.items() if k != "rounds"}
    return {
        "empty": b"",
        "text": b"hello, I am a text file\n",
        "png": encode_png(np.zeros((4, 4), np.uint8)),
        "npz": npz.getvalue(),
        "foreign zip": foreign_zip.getvalue(),
        "truncated": good[: len(good) // 2],
        "truncated end": good[:-10],
        "deflate corrupted": _rewrite_member(good, "round_0001/ys.npy", flip=0),  # zlib.error inside
        "crc mismatch": _rewrite_member(good, "round_0001/ys.npy", flip=3),
        "array corrupted": _rewrite_member(good, "round_0001/ys.npy", payload=b"\x93NUMPY garbage"),
        "array of floats": _rewrite_member(good, "round_0001/ys.npy", payload=_npy(np.zeros(6))),
        "bad json": _rewrite_member(good, "meta.json", payload=b"{not json"),
        "newer version": _rewrite_member(good, "meta.json", payload=json.dumps(newer).encode()),
        "header lies": _rewrite_member(good, "meta.json", payload=json.dumps(lying).encode()),
        "header incomplete": _rewrite_member(good, "meta.json", payload=json.dumps(no_rounds).encode()),
    }


def _npy(a: np.ndarray) -> bytes:
    import io

    b = io.BytesIO()
    np.lib.format.write_array(b, a, allow_pickle=False)
    return b.getvalue()


def test_corrupt_truncated_or_foreign_files_raise_state_file_error(tmp_path):
    good_state = build_state(seed=4, radii=(1,), per_round=6)[0]
    good = good_state.to_bytes()
    assert good_state.picks(1)["ys"].numel() == 6  # "array of floats" has the right length
    for kind, data in _corrupt_files(good).items():
        path = tmp_path / f"{kind.replace(' ', '_')}.state"
        path.write_bytes(data)
        listing = sorted(os.listdir(tmp_path))
        with pytest.raises(StateFileError) as info:
            ActiveLabelState.load(path)
        msg = str(info.value)
        assert msg.startswith(f"state file {path}: "), (kind, msg)
        assert info.value.path == str(path)
        assert isinstance(info.value, InputError) and isinstance(info.value, StateError)
        assert path.read_bytes() == data and sorted(os.listdir(tmp_path)) == listing, kind  # a load only reads
        with pytest.raises(StateFileError, match="^data: "):
            ActiveLabelState.from_bytes(data)
    assert ActiveLabelState.from_bytes(good).to_bytes() == good


@settings(max_examples=40, deadline=None)
@given(pos=st.integers(0, 10**6), value=st.integers(1, 255))
def test_any_flipped_byte_loads_identically_or_raises_state_file_error(pos, value):
    good = build_state(seed=5, radii=(1, 0), per_round=4)[0].to_bytes()
    bad = bytearray(good)
    bad[pos % len(bad)] ^= value
    try:
        loaded = ActiveLabelState.from_bytes(bytes(bad))
    except StateFileError:
        return
    assert loaded.to_bytes() == good  # the byte was in a part that carries no content


def test_atomic_save_survives_a_crash(tmp_path, monkeypatch):
    path = tmp_path / "run.state"
    a, _ = build_state(seed=2)
    a.save(path)
    old = path.read_bytes()
    b, _ = build_state(seed=3, radii=(0,))

    def boom(src, dst):
        raise OSError("power cut")

    monkeypatch.setattr(os, "replace", boom)
    with pytest.raises(OSError, match="power cut"):
        b.save(path)
    monkeypatch.undo()
    assert path.read_bytes() == old
    assert ActiveLabelState.load(path).to_bytes() == a.to_bytes()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["run.state"]
    b.save(str(path))
    assert ActiveLabelState.load(path).to_bytes() == b.to_bytes()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["run.state"]


# ---------------------------------------------------------------------------- exports

def test_export_masks_png_round_trip(tmp_path):
    size = (9, 11)
    s, gts = build_state(seed=11, size=size, label_rounds=(1,), radii=(1, 2))
    with pytest.raises(StateError, match="pending"):
        s.export_masks(tmp_path / "x")
    s.label_from_ground_truth(lambda i: gts[i], 2)
    ids = s.labelled_image_ids().tolist()
    names = [f"city{i % 2}/city{i % 2}_{i:06d}_000019" for i in range(5)]
    paths = s.export_masks(tmp_path / "out", names=names)
    assert len(paths) == len(ids)
    for i, p in zip(ids, paths):
        assert p == os.path.join(str(tmp_path / "out"), "gtMask", "train", f"city{i % 2}", f"city{i % 2}_{i:06d}_000019_gtFine_labelIds.png")
        img = read_png(p)
        assert img.dtype == np.uint8 and img.shape == size
        np.testing.assert_array_equal(img, s.label_map(i))
    default = s.export_masks(tmp_path / "d")
    assert [os.path.basename(p) for p in default] == [f"{i:06d}_gtFine_labelIds.png" for i in ids]
    by_fn = s.export_masks(tmp_path / "f", names=lambda i: f"img{i}")
    assert os.path.basename(by_fn[0]) == f"img{ids[0]}_gtFine_labelIds.png"
    with pytest.raises(InputError, match="^names:"):
        s.export_masks(tmp_path / "bad", names=lambda i: "../escape")
    assert not (tmp_path / "bad").exists()


@pytest.mark.parametrize("names", [
    lambda i: "same",
    {0: "a/x", 1: "a/x", 2: "b", 3: "c", 4: "d"},
    ["a/x", "a\\x", "b", "c", "d"],
])
def test_export_masks_refuses_duplicate_names_and_writes_nothing(tmp_path, names):
    s, _ = build_state(seed=11, size=(9, 11), radii=(1, 2))
    assert len(s.labelled_image_ids()) >= 2
    if isinstance(names, dict):  # the two clashing ids must both have picks
        ids = s.labelled_image_ids().tolist()
        names = {i: f"n{i}" for i in range(5)} | {ids[0]: "a/x", ids[1]: "a/x"}
    if isinstance(names, list):
        ids = s.labelled_image_ids().tolist()
        names = [f"n{i}" for i in range(5)]
        names[ids[0]], names[ids[1]] = "a/x", "a\\x"
    with pytest.raises(InputError, match=r"^names: image ids \d+ and \d+ both have the name"):
        s.export_masks(tmp_path / "out", names=names)
    assert not (tmp_path / "out").exists()


def test_export_masks_pending_allowed_writes_void(tmp_path):
    s = ActiveLabelState((4, 4), 3)
    s.record(make_sel([0], [1], [1], 0, 1, (4, 4)))
    (p,) = s.export_masks(tmp_path, allow_pending=True)
    assert (read_png(p) == 255).all()


def test_export_regions_json(tmp_path):
    size = (6, 8)
    s = ActiveLabelState(size, 3, 3)
    s.record(make_sel([1, 0], [0, 3], [7, 3], 1, 1, size))
    s.record(whole_sel([2], 2, size))
    path = tmp_path / "regions.json"
    out = s.export_regions(path, names={0: "a/x", 1: "a/y", 2: "b/z"})
    want = [
        {"image_id": 1, "round": 1, "center": [0, 7], "radius": 1, "box": [0, 6, 1, 7], "name": "a/y"},
        {"image_id": 0, "round": 1, "center": [3, 3], "radius": 1, "box": [2, 2, 4, 4], "name": "a/x"},
        {"image_id": 2, "round": 2, "center": [-1, -1], "radius": 0, "box": [0, 0, 5, 7], "name": "b/z"},
    ]
    assert json.loads(path.read_text()) == want == out
    s.export_regions(path)
    assert "name" not in json.loads(path.read_text())[0]
    assert [p.name for p in tmp_path.iterdir()] == ["regions.json"]


# ---------------------------------------------------------------------------- PNG codec

def _png_with_filters(img, filters):
    """Encode with the given per-row filter types (the standard predictors, 1 byte per pixel)."""
    h, w = img.shape
    rows = []
    prev = np.zeros(w, dtype=np.int64)
    for y in range(h):
        cur = img[y].astype(np.int64)
        left = np.concatenate([[0], cur[:-1]])
        ul = np.concatenate([[0], prev[:-1]])
        f = filters[y % len(filters)]
        if f == 0:
            pred = np.zeros(w, np.int64)
        elif f == 1:
            pred = left
        elif f == 2:
            pred = prev
        elif f == 3:
            pred = (left + prev) // 2
        else:
            p = left + prev - ul
            pa, pb, pc = abs(p - left), abs(p - prev), abs(p - ul)
            pred = np.where((pa <= pb) & (pa <= pc), left, np.where(pb <= pc, prev, ul))
        rows.append(bytes([f]) + ((cur - pred) % 256).astype(np.uint8).tobytes())
        prev = cur

    def chunk(k, d):
        return struct.pack(">I", len(d)) + k + d + struct.pack(">I", zlib.crc32(k + d) & 0xFFFFFFFF)

    raw = zlib.compress(b"".join(rows))
    ihdr = struct.pack(">IIBBBBB", w, h, 8, 0, 0, 0, 0)
    # two IDAT chunks and an ancillary chunk, as other writers produce
    return (b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"tEXt", b"k\x00v")
            + chunk(b"IDAT", raw[:5]) + chunk(b"IDAT", raw[5:]) + chunk(b"IEND", b""))


@pytest.mark.parametrize("shape", [(1, 1), (3, 7), (16, 5)])
def test_png_round_trip_and_filters(shape):
    g = np.random.default_rng(sum(shape))
    img = g.integers(0, 256, shape).astype(np.uint8)
    np.testing.assert_array_equal(decode_png(encode_png(img)), img)
    for filters in ([1], [2], [3], [4], [0, 1, 2, 3, 4]):
        np.testing.assert_array_equal(decode_png(_png_with_filters(img, filters)), img)


def test_png_rejects_bad_input():
    good = encode_png(np.zeros((2, 2), np.uint8))
    with pytest.raises(InputError):
        decode_png(b"GIF89a")
    with pytest.raises(InputError, match="CRC"):
        decode_png(good[:20] + bytes([good[20] ^ 1]) + good[21:])
    with pytest.raises(InputError):
        encode_png(np.zeros((2, 2), np.int32))
    with pytest.raises(InputError):
        encode_png(np.zeros((0, 2), np.uint8))
    rgb = bytearray(good)
    rgb[25] = 2  # colour type: RGB
    rgb[29:33] = struct.pack(">I", zlib.crc32(bytes(rgb[12:29])) & 0xFFFFFFFF)
    with pytest.raises(InputError, match="grayscale"):
        decode_png(bytes(rgb))
