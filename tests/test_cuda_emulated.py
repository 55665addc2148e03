"""The Python half of the cuda backend (cbda/backends/cuda.py) on a CPU-only machine.

A stand-in for cbda._cuda with the same entry points works on CPU memory through the same
raw pointers, with each kernel's contract written plainly in torch (scores from the
reference, the candidate key layout, an arbitrary append order, a radix sort by the low
``end_bit`` bits, the sequential greedy scan, and the pruning selects as sorts: the best
``limit`` per slot or per batch, the best K picks, the cut-off raised to the limit-th). It
checks what runs around the kernels — buffers, chunking of large batches, prior picks, the
sort bit widths and padding, key decoding, pruning to the bound, the top-K trim and both
cut-offs, picks appended without a boolean mask, ordering, the counters and the one host read
per batch (tests/sync_probe.py) — so that a GPU session only has the kernels left to
validate. The real kernels are tested in test_cuda_backend.py; the radix select's steps also
run on the CPU in test_cuda_select_host.py.
"""

from __future__ import annotations

import ctypes
import math

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
import torch

import cbda
from cbda.backends import cuda as cuda_backend
from cbda.backends.base import greedy_bound
from cbda.errors import InputError
from cbda.reference.scores import _impurity, upsample_logits, window_mean
from cbda.reference.select import sort_picks
from cbda.scores import LOG_EPS, mix32
from cbda.state import PriorPicks
from helpers import POISONS, poisoned_logits, random_logits, tie_scores

_DT = {0: torch.float32, 1: torch.bfloat16, 2: torch.float16}
_M32 = 0xFFFFFFFF


def _view(ptr: int, n: int, dtype: torch.dtype) -> torch.Tensor:
    """A tensor sharing the memory at ``ptr`` (what a kernel sees through a raw pointer)."""
    if n == 0:
        return torch.empty(0, dtype=dtype)
    assert ptr != 0, "null pointer for a non-empty buffer"
    size = torch.empty(0, dtype=dtype).element_size()
    buf = (ctypes.c_char * (n * size)).from_address(ptr)
    return torch.frombuffer(buf, dtype=dtype, count=n)


def _order_bits(v: torch.Tensor) -> np.ndarray:
    u = v.to(torch.float32).numpy().view(np.uint32).astype(np.uint64)
    u = np.where((u << np.uint64(1)) & np.uint64(_M32) == 0, np.uint64(0), u)
    return np.where(u & np.uint64(0x80000000), ~u & np.uint64(_M32), u | np.uint64(0x80000000))


def _from_order_bits(u: int) -> float:
    bits = (u & 0x7FFFFFFF) if u & 0x80000000 else (~u & _M32)
    return float(np.array([bits], dtype=np.uint32).view(np.float32)[0])


class FakeCuda:
    MAX_FUSED_RADIUS = 2
    MAX_CLASSES = 65534
    HEURISTICS = {"ripu": 0, "entropy": 2, "margin": 3, "least_confidence": 4, "random": 5, "entropy_raw": 6}
    DTYPES = {"float32": 0, "bfloat16": 1, "float16": 2}

    def __init__(self, seed=0):
        self.gen = np.random.default_rng(seed)
        self.calls = []
        self.greedy_inputs = []  # per greedy call: candidates per slot

    def versions(self):
        return (13000, 13000)

    # -- scores ---------------------------------------------------------------------------------
    def _logits(self, ptr, dtype, B, C, h, w):
        return _view(ptr, B * C * h * w, _DT[dtype]).view(B, C, h, w)

    def _pixel(self, x, H, W, code, radius, ids, seed_hash):
        up = upsample_logits(x, (H, W))
        c = up.shape[1]
        labels = up.argmax(1)
        p = torch.softmax(up, 1)
        ent = -(p * torch.log(p + LOG_EPS)).sum(1)
        lnc = math.log(c)
        if code == 0:
            u = window_mean((ent / lnc).unsqueeze(1), radius).squeeze(1)
            return _impurity(labels, c, radius) * u, labels
        if code == 2:
            return ent / lnc, labels
        if code == 6:
            return ent, labels
        if code == 3:
            top = p.topk(2, dim=1).values
            return 1.0 - (top[:, 0] - top[:, 1]), labels
        if code == 4:
            return 1.0 - p.max(1).values, labels
        assert code == 5
        idv = ids.reshape(-1, 1, 1)
        hh = mix32((idv >> 32) ^ seed_hash)
        hh = mix32((idv & _M32) ^ hh)
        pix = torch.arange(H * W, dtype=torch.int64).reshape(1, H, W)
        return ((mix32(pix ^ hh) >> 8).to(torch.float32)) * (1.0 / 16777216.0), labels

    @staticmethod
    def _flag(x, H, W, bad_flag):
        """The kernels' non-finite flag: NaN/+inf taps or a pixel whose every class is -inf."""
        assert bad_flag, "the scoring kernels need a flag word"
        up = upsample_logits(x, (H, W))
        if bool((torch.isnan(x) | torch.isposinf(x)).any()) or bool(torch.isneginf(up).all(1).any()):
            _view(bad_flag, 1, torch.int32).fill_(1)

    def score_maps(self, logits, dtype, B, C, h, w, H, W, heuristic, radius, seed_hash, image_ids, out_scores,
                   out_labels, class_counts, bad_flag, stream):
        self.calls.append("score_maps")
        assert heuristic == 0 or radius == 0
        x = self._logits(logits, dtype, B, C, h, w)
        self._flag(x, H, W, bad_flag)
        ids = _view(image_ids, B, torch.int64)
        s, lab = self._pixel(x, H, W, heuristic, radius, ids, seed_hash)
        _view(out_scores, B * H * W, torch.float32).copy_(s.flatten())
        _view(out_labels, B * H * W, torch.int64).copy_(lab.flatten())
        if class_counts:
            _view(class_counts, C, torch.int64).add_(torch.bincount(lab.flatten(), minlength=C))

    @staticmethod
    def _cutoff(cut_score, cut_gidx):
        """The device cut-off the kernels load once: (score, gidx), or None without pointers."""
        assert bool(cut_score) == bool(cut_gidx), "cut-off pointers come in pairs"
        if not cut_score:
            return None
        return float(_view(cut_score, 1, torch.float32)[0]), int(_view(cut_gidx, 1, torch.int64)[0])

    def _compact(self, s, lab, B, H, W, weights, blocked, whole, image_ids, cut_score, cut_gidx, pixbits,
                 keys, capacity, count, slot_counts):
        hw = H * W
        s = s.reshape(B, hw)
        if weights:
            wv = _view(weights, int(lab.max()) + 1 if lab is not None else 1, torch.float32)
            s = s * (wv[lab.reshape(B, hw)] if lab is not None else wv[0])
        blk = _view(blocked, B * hw, torch.uint8).view(B, hw).bool()
        wh = _view(whole, B, torch.uint8).bool()
        ids = _view(image_ids, B, torch.int64)
        take = ~blk & ~wh.view(B, 1)
        cut = self._cutoff(cut_score, cut_gidx)
        if cut is not None:
            gidx = ids.view(B, 1) * hw + torch.arange(hw).view(1, hw)
            cs = torch.tensor(cut[0], dtype=torch.float32)
            take &= (s > cs) | ((s == cs) & (gidx < cut[1]))
        bi, pi = torch.nonzero(take, as_tuple=True)
        k = (bi.numpy().astype(np.uint64) << np.uint64(32 + pixbits)) | (
            (~_order_bits(s[bi, pi]) & np.uint64(_M32)) << np.uint64(pixbits)) | pi.numpy().astype(np.uint64)
        k = k[self.gen.permutation(len(k))]  # atomics append in any order
        cnt = _view(count, 1, torch.int64)
        start = int(cnt[0])
        assert start + len(k) <= capacity
        _view(keys, capacity, torch.int64)[start : start + len(k)] = torch.from_numpy(k.view(np.int64))
        cnt += len(k)
        _view(slot_counts, B, torch.int64).add_(torch.bincount(bi, minlength=B))

    def fused_candidates(self, logits, dtype, B, C, h, w, H, W, heuristic, radius, seed_hash, image_ids, class_counts,
                         weights, blocked, whole, cut_score, cut_gidx, pixbits, keys, capacity, count, slot_counts,
                         bad_flag, stream):
        self.calls.append("fused_candidates")
        x = self._logits(logits, dtype, B, C, h, w)
        self._flag(x, H, W, bad_flag)
        s, lab = self._pixel(x, H, W, heuristic, radius, _view(image_ids, B, torch.int64), seed_hash)
        if class_counts:
            _view(class_counts, C, torch.int64).add_(torch.bincount(lab.flatten(), minlength=C))
        self._compact(s, lab, B, H, W, weights, blocked, whole, image_ids, cut_score, cut_gidx, pixbits,
                      keys, capacity, count, slot_counts)

    def map_candidates(self, scores, labels, B, H, W, weights, blocked, whole, image_ids, cut_score, cut_gidx,
                       pixbits, keys, capacity, count, slot_counts, stream):
        self.calls.append("map_candidates")
        s = _view(scores, B * H * W, torch.float32).clone()
        lab = _view(labels, B * H * W, torch.int64).clone() if labels else None
        self._compact(s, lab, B, H, W, weights, blocked, whole, image_ids, cut_score, cut_gidx, pixbits,
                      keys, capacity, count, slot_counts)

    def labels_at(self, logits, dtype, B, C, h, w, H, W, slots, pix, n, out, stream):
        lab = upsample_logits(self._logits(logits, dtype, B, C, h, w), (H, W)).argmax(1).reshape(B, H * W)
        _view(out, n, torch.int64).copy_(lab[_view(slots, n, torch.int64), _view(pix, n, torch.int64)])

    def window_impurity(self, labels, B, H, W, C, R, scratch, out, stream):
        lab = _view(labels, B * H * W, torch.int64).view(B, H, W)
        _view(out, B * H * W, torch.float32).copy_(_impurity(lab, C, R).flatten())

    def window_mean(self, x, B, H, W, R, scratch, out, stream):
        v = _view(x, B * H * W, torch.float32).view(B, 1, H, W)
        _view(out, B * H * W, torch.float32).copy_(window_mean(v, R).flatten())

    def multiply(self, a, b, out, n, stream):
        r = _view(a, n, torch.float32) * _view(b, n, torch.float32)
        _view(out, n, torch.float32).copy_(r)

    # -- selection --------------------------------------------------------------------------------
    def mark_prior(self, offsets, ys, xs, radii, B, H, W, radius, mask, stream):
        off = _view(offsets, B + 1, torch.int64).clone()
        p = int(off[-1])
        prior = PriorPicks(off, _view(ys, p, torch.int64).clone(), _view(xs, p, torch.int64).clone(),
                           _view(radii, p, torch.int64).clone(), torch.zeros(B, dtype=torch.bool))
        m = _view(mask, B * H * W, torch.uint8)
        m |= prior.blocked_masks((H, W), radius).flatten().to(torch.uint8)

    def sort_temp_bytes(self, n, end_bit):
        return 16 if n else 0

    def sort_keys(self, keys_in, keys_out, n, end_bit, temp, temp_bytes, stream):
        assert temp_bytes >= self.sort_temp_bytes(n, end_bit) and 0 < end_bit <= 64
        k = _view(keys_in, n, torch.int64).numpy().view(np.uint64)
        if end_bit < 64:
            assert np.all(k >> np.uint64(end_bit) == 0), "key bits above end_bit"
        _view(keys_out, n, torch.int64).copy_(torch.from_numpy(np.sort(k, kind="stable").view(np.int64)))

    # -- pruning (select.cu): the contract, by sorting --------------------------------------------
    def select_work_words(self, nseg):
        return nseg * (4 + 256)

    def _raise(self, cut_score, cut_gidx, score, gidx):
        """The cut-off only rises: (score, gidx) replaces it when it comes first in the order."""
        cut = self._cutoff(cut_score, cut_gidx)
        if cut is not None and (score > cut[0] or (score == cut[0] and gidx < cut[1])):
            _view(cut_score, 1, torch.float32)[0] = score
            _view(cut_gidx, 1, torch.int64)[0] = gidx

    def prune_candidates(self, keys, n, B, pixbits, per_slot, limit, slot_counts, slot_rank, image_ids, hw, work,
                         out_keys, out_count, out_slot_counts, cut_score, cut_gidx, stream):
        self.calls.append("prune_candidates")
        assert n > limit >= 1, "the driver skips the select when nothing can be pruned"
        assert _view(work, 1, torch.int64) is not None and work, "a work buffer"
        k = _view(keys, n, torch.int64).numpy().view(np.uint64)
        slot = (k >> np.uint64(32 + pixbits)).astype(np.int64)
        sbits = (k >> np.uint64(pixbits)) & np.uint64(_M32)
        pix = (k & np.uint64((1 << pixbits) - 1)).astype(np.int64)
        assert slot.max() < B
        if per_slot:
            counts = _view(slot_counts, B, torch.int64).numpy()
            assert np.array_equal(counts, np.bincount(slot, minlength=B)), "slot_counts = the keys' slots"
            order = np.lexsort((pix, sbits, slot))  # slot, then score desc, then pixel
            rank_in_slot = np.arange(n) - np.searchsorted(slot[order], slot[order])
            keep = order[rank_in_slot < limit]
            assert not cut_score, "no cut-off per image"
        else:
            rank = _view(slot_rank, B, torch.int64).numpy()
            ids = _view(image_ids, B, torch.int64).numpy()
            assert np.array_equal(np.argsort(np.argsort(ids)), rank), "slot_rank = rank of the image ids"
            order = np.lexsort((pix, rank[slot], sbits))  # score desc, image id asc, pixel asc
            keep = order[:limit]
            last = order[limit - 1]
            score = _from_order_bits(~int(sbits[last]) & _M32)
            self._raise(cut_score, cut_gidx, score, int(ids[slot[last]]) * hw + int(pix[last]))
        keep = keep[self.gen.permutation(len(keep))]  # appended in any order
        start = int(_view(out_count, 1, torch.int64)[0])
        assert start == 0, "out_count zeroed before"
        _view(out_keys, len(keep), torch.int64).copy_(torch.from_numpy(k[keep].view(np.int64).copy()))
        _view(out_count, 1, torch.int64)[0] = len(keep)
        _view(out_slot_counts, B, torch.int64).add_(torch.from_numpy(np.bincount(slot[keep], minlength=B)))

    def trim_picks(self, scores, gidx, classes, count, bound, gmax, limit, work, out_scores, out_gidx, out_classes,
                   out_count, cut_score, cut_gidx, stream):
        self.calls.append("trim_picks")
        n = int(_view(count, 1, torch.int64)[0])
        assert n <= bound and work
        g = _view(gidx, n, torch.int64).clone()
        assert n == 0 or int(g.max()) <= int(_view(gmax, 1, torch.int64)[0]), "gmax bounds every gidx"
        sc = _view(scores, n, torch.float32).clone()
        order = sort_picks(sc, g)
        keep = order[:limit]
        if n > limit:
            self._raise(cut_score, cut_gidx, float(sc[order[limit - 1]]), int(g[order[limit - 1]]))
        keep = keep[torch.from_numpy(self.gen.permutation(len(keep)))]
        assert int(_view(out_count, 1, torch.int64)[0]) == 0, "out_count zeroed before"
        _view(out_scores, len(keep), torch.float32).copy_(sc[keep])
        _view(out_gidx, len(keep), torch.int64).copy_(g[keep])
        _view(out_classes, len(keep), torch.int64).copy_(_view(classes, n, torch.int64)[keep])
        _view(out_count, 1, torch.int64)[0] = len(keep)

    def greedy(self, sorted_keys, slot_counts, B, H, W, radius, pixbits, mask, quota, out_pix, out_score, out_count,
               stream):
        counts = _view(slot_counts, B, torch.int64).tolist()
        self.greedy_inputs.append(counts)
        keys = _view(sorted_keys, sum(counts), torch.int64).numpy().view(np.uint64)
        m = _view(mask, B * H * W, torch.uint8).view(B, H, W)
        opix = _view(out_pix, B * quota, torch.int64).view(B, quota)
        osc = _view(out_score, B * quota, torch.float32).view(B, quota)
        ocnt = _view(out_count, B, torch.int64)
        start, reach = 0, 2 * radius
        for b in range(B):
            seg = keys[start : start + counts[b]]
            start += counts[b]
            assert np.all(seg >> np.uint64(32 + pixbits) == b), "keys not grouped by slot"
            k = 0
            for key in seg:
                if k >= quota:
                    break
                pix = int(key & np.uint64((1 << pixbits) - 1))
                y, x = divmod(pix, W)
                if m[b, y, x]:
                    continue
                opix[b, k] = pix
                osc[b, k] = _from_order_bits((~int(key >> np.uint64(pixbits))) & _M32)
                k += 1
                m[b, max(0, y - reach) : y + reach + 1, max(0, x - reach) : x + reach + 1] = 1
            ocnt[b] = k

    def pick_order_workspace_bytes(self, n):
        return 8 if n else 0

    def pick_order(self, scores, gidx, n, index_bits, perm, workspace, workspace_bytes, stream):
        g = _view(gidx, n, torch.int64).clone()
        assert int(g.max()) < 2**index_bits
        _view(perm, n, torch.int64).copy_(sort_picks(_view(scores, n, torch.float32).clone(), g))


@pytest.fixture
def fake(monkeypatch):
    """Route backend='cuda' on CPU tensors to the stand-in module."""
    mod = FakeCuda()
    monkeypatch.setattr(cuda_backend, "_module", lambda: mod)
    monkeypatch.setattr(cuda_backend, "not_supported_reasons", lambda device, dtype: [])
    return mod


def _picks(sel):
    return list(zip(sel.image_ids.tolist(), sel.ys.tolist(), sel.xs.tolist()))


@pytest.mark.parametrize("strategy", ["ra", "da", "cbra", "cbda", "image"])
@pytest.mark.parametrize("radius", [0, 1, 2])
def test_precomputed_scores(fake, strategy, radius):
    b, h, w = 5, 14, 11
    scores = tie_scores(b, h, w, seed=radius, levels=4)
    labels = torch.randint(0, 3, (b, h, w), generator=torch.Generator().manual_seed(radius))
    weights = torch.tensor([1.0, 0.5, 0.25])
    kw = dict(scores=scores, pseudo_labels=labels, image_ids=[7, 2, 5, 0, 9], budget=0.5, rounds=3,
              strategy=strategy, radius=radius, class_weights=weights if strategy.startswith("cb") else None)
    a = cbda.select(backend="cuda", **kw)
    r = cbda.select(backend="reference", **kw)
    assert _picks(a) == _picks(r)
    assert torch.equal(a.scores, r.scores) and torch.equal(a.classes, r.classes)


@pytest.mark.parametrize("strategy", ["ra", "da", "cbda", "image"])
@pytest.mark.parametrize("heuristic", ["ripu", "entropy", "margin", "least_confidence", "random", "ripu_pixel"])
def test_logits_path(fake, strategy, heuristic):
    logits = random_logits(4, 5, 6, 8, seed=3)
    kw = dict(budget=0.3, rounds=3, strategy=strategy, heuristic=heuristic, radius=1, out_size=(16, 20),
              image_ids=[4, 0, 9, 2], num_images=10, subset=True, seed=7)
    a = cbda.select(logits, backend="cuda", **kw)
    r = cbda.select(logits, backend="reference", **kw)
    assert _picks(a) == _picks(r)
    torch.testing.assert_close(a.scores, r.scores)
    assert torch.equal(a.predicted_counts, r.predicted_counts)
    if strategy != "image":
        assert torch.equal(a.classes, r.classes)
        assert ("fused_candidates" in fake.calls) == (heuristic != "ripu_pixel")


def test_large_radius_uses_window_passes(fake):
    logits = random_logits(2, 4, 9, 9, seed=1)
    s, lab = cbda.score(logits, heuristic="ripu", radius=4, out_size=(15, 17), backend="cuda")
    rs, rlab = cbda.score(logits, heuristic="ripu", radius=4, out_size=(15, 17), backend="reference")
    assert torch.equal(lab, rlab)
    torch.testing.assert_close(s, rs, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("strategy", ["da", "cbda", "ra"])
def test_streaming_trims_and_chunks(fake, monkeypatch, strategy):
    # batches of 5 split into launches of 2 images; small K: many trims and cut-off raises
    monkeypatch.setattr(cuda_backend, "_MAX_GRID_Z", 2)
    n, h, w = 20, 9, 13
    scores = tie_scores(n, h, w, seed=5, levels=6)
    labels = torch.randint(0, 4, (n, h, w), generator=torch.Generator().manual_seed(2))
    weights = torch.tensor([1.0, 0.3, 0.7, 0.1]) if strategy.startswith("cb") else None
    order = torch.randperm(n, generator=torch.Generator().manual_seed(0)).tolist()
    kw = dict(budget=0.1, rounds=3, strategy=strategy, radius=1, class_weights=weights, num_images=n)
    rnd = cbda.AcquisitionRound(backend="cuda", **kw)
    for i in range(0, n, 5):
        idx = order[i : i + 5]
        rnd.add_scores(idx, scores[idx], labels[idx])
    sel = rnd.finish()
    ref = cbda.select(scores=scores, pseudo_labels=labels, image_ids=list(range(n)), backend="reference", **kw)
    assert _picks(sel) == _picks(ref)
    assert len(sel) > 0


@pytest.mark.parametrize("strategy", ["ra", "da", "cbra", "cbda"])
def test_prior_picks_over_rounds_with_chunks(fake, monkeypatch, strategy):
    monkeypatch.setattr(cuda_backend, "_MAX_GRID_Z", 3)
    n, c, h, w = 7, 3, 12, 16
    logits = random_logits(n, c, 6, 8, seed=1)
    gt = torch.randint(0, c, (n, h, w), generator=torch.Generator().manual_seed(0)).to(torch.uint8)
    states = {b: cbda.ActiveLabelState((h, w), c, num_images=n) for b in ("reference", "cuda")}
    for _ in range(3):
        sels = {}
        for b, st in states.items():
            sels[b] = cbda.select(logits, budget=0.3, rounds=3, strategy=strategy, radius=1, out_size=(h, w),
                                  state=st, backend=b)
            st.label_from_ground_truth(lambda i: gt[i])
        assert _picks(sels["cuda"]) == _picks(sels["reference"])


def test_dtypes(fake):
    for dtype in (torch.bfloat16, torch.float16):
        logits = random_logits(3, 4, 5, 7, seed=2, dtype=dtype)
        kw = dict(budget=0.5, rounds=2, strategy="da", radius=1, out_size=(10, 14))
        assert _picks(cbda.select(logits, backend="cuda", **kw)) == _picks(cbda.select(logits, backend="reference", **kw))


def test_unavailable_without_a_gpu_says_why():
    why = cuda_backend.not_supported_reasons(torch.device("cpu"), torch.float32)
    assert any("CUDA tensors" in r for r in why)
    assert cuda_backend.not_supported_reasons(torch.device("cpu"), torch.int32)


def test_stand_in_has_the_real_signatures():
    """The stand-in's entry points take the arguments of the built module's, in order."""
    import inspect
    import re

    from cbda import _native

    real = _native.load("_cuda")
    if real is None:
        pytest.skip("cbda._cuda not built")
    names = [n for n in dir(real) if not n.startswith("_") and callable(getattr(real, n))]
    assert names
    for name in names:
        doc = getattr(real, name).__doc__.splitlines()[0]
        want = re.findall(r"(\w+): ", doc[doc.index("(") : doc.rindex(")")])
        got = list(inspect.signature(getattr(FakeCuda, name)).parameters)[1:]
        assert got == want, name
    for attr in ("MAX_FUSED_RADIUS", "MAX_CLASSES", "HEURISTICS", "DTYPES"):
        assert getattr(real, attr) == getattr(FakeCuda, attr)


def _masked_logits(seed=0):
    """Logits with masked classes: a whole channel, scattered entries, and class 0 of some
    pixels (the leading logit of the online softmax) at -inf; never a whole pixel."""
    x = random_logits(3, 5, 6, 7, seed=seed)
    g = torch.Generator().manual_seed(seed + 1)
    x[1, 2] = float("-inf")
    holes = torch.rand(x.shape, generator=g) < 0.2
    holes[:, 4] = False
    x[holes] = float("-inf")
    return x


@pytest.mark.parametrize("strategy", ["da", "ra", "image"])
@pytest.mark.parametrize("radius", [1, 3])
def test_masked_classes_follow_the_reference(fake, strategy, radius):
    x = _masked_logits(radius)
    kw = dict(budget=0.3, rounds=3, strategy=strategy, radius=radius, out_size=(11, 13), image_ids=[4, 0, 9],
              num_images=10, subset=True)
    a = cbda.select(x, backend="cuda", **kw)
    r = cbda.select(x, backend="reference", **kw)
    assert torch.isfinite(r.scores).all()
    assert _picks(a) == _picks(r)
    torch.testing.assert_close(a.scores, r.scores)


@pytest.mark.parametrize("poison", POISONS)
@pytest.mark.parametrize("call", ["score", "da", "image", "wide"])
def test_nonfinite_logits_raise_from_the_kernel_flag(fake, poison, call):
    x = poisoned_logits(poison, seed=0)
    with pytest.raises(InputError, match="logits"):
        if call == "score":
            cbda.score(x, out_size=(9, 11), backend="cuda")
        elif call == "wide":
            cbda.score(x, radius=4, out_size=(9, 11), backend="cuda")
        else:
            cbda.select(x, budget=0.2, strategy=call, out_size=(9, 11), num_images=2, backend="cuda")


# -- pruning, host reads, counters (issue 15) ---------------------------------------------------
def _prior_state(n, c, h, w, seed):
    """A state with one earlier round of picks (blocking centres of this round)."""
    st = cbda.ActiveLabelState((h, w), c, num_images=n)
    logits = random_logits(n, c, h, w, seed=seed + 100)
    cbda.select(logits, budget=0.05, rounds=5, strategy="ra", radius=1, state=st, backend="reference")
    gt = torch.randint(0, c, (n, h, w), generator=torch.Generator().manual_seed(seed)).to(torch.uint8)
    st.label_from_ground_truth(lambda i: gt[i])
    return st


def _round_pair(strategy, radius, n, h, w, scores, labels, weights, order, batch, state=None):
    """(cuda round, reference picks) for score maps added in `order`, `batch` images at a time."""
    import copy

    kw = dict(budget=0.05, rounds=5, strategy=strategy, radius=radius, class_weights=weights, num_images=n)
    rnd = cbda.AcquisitionRound(backend="cuda", state=copy.deepcopy(state), **kw)
    for i in range(0, n, batch):
        idx = order[i : i + batch]
        rnd.add_scores(idx, scores[idx], labels[idx])
    sel = rnd.finish()
    ref = cbda.AcquisitionRound(backend="reference", state=copy.deepcopy(state), **kw)
    ref.add_scores(list(range(n)), scores, labels)
    return rnd, sel, ref.finish()


@pytest.mark.parametrize("strategy", ["ra", "da", "cbra", "cbda"])
@pytest.mark.parametrize("radius", [0, 1, 2])
@pytest.mark.parametrize("seed", [0, 1])
def test_pruned_selection_equals_the_reference(fake, strategy, radius, seed):
    # 16x16 images and a 1 % share per round: the bound (q or K times (4r+1)^2) is far below the
    # candidates of a batch, so the select prunes, and for da/cbda the trim and both cut-offs act
    n, c, h, w = 12, 3, 16, 16
    g = torch.Generator().manual_seed(seed)
    scores = tie_scores(n, h, w, seed=seed + 10 * radius, levels=4)
    labels = torch.randint(0, c, (n, h, w), generator=g)
    weights = torch.tensor([1.0, 0.4, 0.7]) if strategy.startswith("cb") else None
    order = torch.randperm(n, generator=g).tolist()
    state = _prior_state(n, c, h, w, seed) if seed == 1 else None
    batch = 6 if radius == 2 else 4  # r = 2: enough candidates in a batch to pass M = 81 K
    rnd, sel, ref = _round_pair(strategy, radius, n, h, w, scores, labels, weights, order, batch, state)
    assert _picks(sel) == _picks(ref) and len(sel) > 0
    assert torch.equal(sel.scores, ref.scores) and torch.equal(sel.classes, ref.classes)
    assert "prune_candidates" in fake.calls
    if strategy in ("da", "cbda"):
        assert "trim_picks" in fake.calls


@pytest.mark.parametrize("batch", [1, 5, 12])
@pytest.mark.parametrize("strategy", ["da", "ra"])
def test_pruning_is_exact_for_any_batch_order(fake, strategy, batch):
    n, h, w = 12, 10, 14
    scores = tie_scores(n, h, w, seed=batch, levels=3)
    labels = torch.zeros((n, h, w), dtype=torch.int64)
    for perm_seed in range(3):
        order = torch.randperm(n, generator=torch.Generator().manual_seed(perm_seed)).tolist()
        _, sel, ref = _round_pair(strategy, 1, n, h, w, scores, labels, None, order, batch)
        assert _picks(sel) == _picks(ref)


@pytest.mark.parametrize("strategy", ["ra", "da", "cbra", "cbda"])
def test_greedy_input_stays_within_the_bound(fake, strategy):
    n, c, h, w, r = 12, 3, 16, 16, 1
    scores = tie_scores(n, h, w, seed=3, levels=50)
    labels = torch.randint(0, c, (n, h, w), generator=torch.Generator().manual_seed(3))
    weights = torch.tensor([1.0, 0.4, 0.7]) if strategy.startswith("cb") else None
    rnd, sel, ref = _round_pair(strategy, r, n, h, w, scores, labels, weights, list(range(n)), 4)
    assert _picks(sel) == _picks(ref)
    acc = rnd._acc
    plan = acc.plan
    per_image = plan.scope == "per_image"
    limit = greedy_bound(plan.per_image if per_image else plan.total, r)
    cnt = rnd.counters
    assert cnt.batches == 3 and cnt.scored == n * h * w
    assert len(acc.greedy_per_launch) == 3
    for (g_in, bound), per_slot in zip(acc.greedy_per_launch, fake.greedy_inputs):
        assert g_in == sum(per_slot) <= bound  # per batch
        assert bound == (limit * 4 if per_image else limit)
        if per_image:
            assert max(per_slot) <= limit  # per image
    assert cnt.greedy_in == sum(g for g, _ in acc.greedy_per_launch) <= cnt.greedy_bound
    assert cnt.greedy_in < cnt.candidates  # the bound bit: pruning happened


def test_no_pruning_when_the_bound_exceeds_the_candidates(fake):
    n, h, w = 4, 8, 8
    scores = tie_scores(n, h, w, seed=0, levels=7)
    labels = torch.zeros((n, h, w), dtype=torch.int64)
    kw = dict(budget=0.6, rounds=1, strategy="da", radius=1, num_images=n)
    rnd = cbda.AcquisitionRound(backend="cuda", **kw)
    rnd.add_scores(list(range(n)), scores, labels)
    sel = rnd.finish()
    ref = cbda.select(scores=scores, pseudo_labels=labels, image_ids=list(range(n)), backend="reference", **kw)
    assert _picks(sel) == _picks(ref)
    assert "prune_candidates" not in fake.calls
    assert rnd.counters.greedy_in == rnd.counters.candidates == n * h * w


@pytest.mark.parametrize("strategy", ["ra", "da", "cbra", "cbda"])
@pytest.mark.parametrize("source", ["logits", "scores", "wide"])
def test_at_most_one_host_read_per_batch(fake, strategy, source):
    import copy

    from sync_probe import SyncProbe

    n, c, h, w = 8, 3, 12, 12
    logits = random_logits(n, c, 6, 6, seed=1)
    scores = tie_scores(n, h, w, seed=1, levels=5)
    labels = torch.randint(0, c, (n, h, w), generator=torch.Generator().manual_seed(1))
    state = _prior_state(n, c, h, w, 2)
    heuristic = "ripu_pixel" if source == "wide" else "ripu"
    rnd = cbda.AcquisitionRound(budget=0.05, rounds=5, strategy=strategy, radius=1, heuristic=heuristic,
                                out_size=(h, w), state=copy.deepcopy(state), backend="cuda")
    per_add = []
    for i in range(0, n, 3):
        idx = list(range(i, min(n, i + 3)))
        with SyncProbe() as probe:
            if source == "scores":
                rnd.add_scores(idx, scores[idx], labels[idx])
            else:
                rnd.add(idx, logits[idx])
        per_add.append(dict(probe.sites))
    assert all(sum(s.values()) <= 1 for s in per_add), per_add
    assert all(sum(s.values()) == 1 for s in per_add)  # the probe sees the one read it should
    assert rnd.counters.host_reads == len(per_add)
    with SyncProbe() as probe:
        sel = rnd.finish()
    assert len(sel) > 0
    ref = cbda.AcquisitionRound(budget=0.05, rounds=5, strategy=strategy, radius=1, heuristic=heuristic,
                                out_size=(h, w), state=state, backend="reference")
    if source == "scores":
        ref.add_scores(list(range(n)), scores, labels)
    else:
        ref.add(list(range(n)), logits)
    assert _picks(sel) == _picks(ref.finish())


def test_chunked_batch_reads_once(fake, monkeypatch):
    # launch chunks of 2 images: their counts and flags are read together
    from sync_probe import SyncProbe

    monkeypatch.setattr(cuda_backend, "_MAX_GRID_Z", 2)
    n, h, w = 7, 9, 11
    scores = tie_scores(n, h, w, seed=4, levels=4)
    labels = torch.zeros((n, h, w), dtype=torch.int64)
    rnd = cbda.AcquisitionRound(budget=0.05, rounds=5, strategy="da", radius=1, num_images=n, backend="cuda")
    with SyncProbe() as probe:
        rnd.add_scores(list(range(n)), scores, labels)
    assert probe.total == 1
    sel = rnd.finish()
    ref = cbda.select(scores=scores, pseudo_labels=labels, image_ids=list(range(n)), budget=0.05, rounds=5,
                      strategy="da", radius=1, num_images=n, backend="reference")
    assert _picks(sel) == _picks(ref)
    assert len(rnd._acc.greedy_per_launch) == 4


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(strategy=st.sampled_from(["ra", "da", "cbra", "cbda"]), radius=st.integers(0, 2), n=st.integers(1, 9),
       h=st.integers(5, 13), w=st.integers(5, 13), levels=st.integers(1, 6), budget=st.sampled_from([0.01, 0.05, 0.3]),
       batch=st.integers(1, 5), seed=st.integers(0, 2**16))
def test_pruned_streaming_property(fake, strategy, radius, n, h, w, levels, budget, batch, seed):
    """Any shape, budget, tie density, batch split and order: the pruned stream equals the reference."""
    g = torch.Generator().manual_seed(seed)
    scores = tie_scores(n, h, w, seed=seed, levels=levels)
    labels = torch.randint(0, 3, (n, h, w), generator=g)
    weights = torch.tensor([1.0, 0.25, 0.0]) if strategy.startswith("cb") else None  # a zero weight: -0.0 ties
    order = torch.randperm(n, generator=g).tolist()
    kw = dict(budget=budget, rounds=2, strategy=strategy, radius=radius, class_weights=weights, num_images=n)
    rnd = cbda.AcquisitionRound(backend="cuda", **kw)
    for i in range(0, n, batch):
        idx = order[i : i + batch]
        rnd.add_scores(idx, scores[idx], labels[idx])
    sel = rnd.finish()
    ref = cbda.select(scores=scores, pseudo_labels=labels, image_ids=list(range(n)), backend="reference", **kw)
    assert _picks(sel) == _picks(ref)
    assert torch.equal(sel.scores, ref.scores) and torch.equal(sel.classes, ref.classes)
    assert all(g_in <= bound for g_in, bound in rnd._acc.greedy_per_launch)
