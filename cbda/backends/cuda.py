"""The ``cuda`` backend: CUDA C++ kernels (cbda._cuda) on CUDA tensors.

Per batch of a round, with every buffer allocated here by torch (so the caching allocator
and ``torch.cuda.max_memory_allocated`` see all of it; the large ones are reused across
batches and grow only to host-known sizes) and every kernel enqueued on torch's current
stream:

1. ``mark_prior``: a byte map of centres blocked by earlier rounds (PriorPicks CSR).
2. ``fused_candidates``: one pass over the label grid reading the low-res logits once —
   upsampling, softmax, entropy, pseudo label, window statistics, class weight, blocking,
   cut-off test, and warp-aggregated compaction of 64-bit candidate keys
   ``[slot | ~score bits | y·W+x]``; plus the pseudo-label histogram. ``ripu_pixel`` and
   ``ripu`` with r > 2 instead write score maps through separable window passes and compact
   from the maps (``map_candidates``), as do precomputed scores.
3. The one host read of the batch: the candidate count and the non-finite flag of every
   launch chunk, together (``RoundCounters.host_read``). Nothing else is read before
   ``finish``: sizes are bounds known on the host, counts stay in device words.
4. ``prune_candidates`` (docs/semantics.md, "Pruning"): a pick blocks at most (4r+1)² centres,
   so only the best q·(4r+1)² candidates of an image (``ra``/``cbra``) or the best
   M = K·(4r+1)² of the batch (``da``/``cbda``) can be picked. A radix select on the device
   finds that threshold key and keeps the candidates at or before it (skipped when the batch
   has no more than the limit); over a batch, the M-th candidate also becomes a cut-off for
   later batches.
5. ``sort_keys`` (CUB radix sort) groups what was kept by image, best first (padding keys sort
   last); ``greedy`` (one warp per image) runs the exact per-image greedy with blocking. The
   picks are appended to a device buffer at positions from a prefix sum (no boolean mask,
   whose size would have to be read back).
6. ``da``/``cbda``: when the buffer's host-known bound passes 2K, ``trim_picks`` keeps its best
   K by the same radix select and raises the cut-off to the K-th pick. The cut-off lives in
   two device scalars that the fused pass loads, so later batches append only what can still
   enter the top K. Exact in one pass, memory O(K + one batch).

``finish`` reads the pick count, the histogram and the counters once, orders the picks
(``pick_order``: two stable radix sorts) and copies them to the host. ``CudaRound.counters``
counts batches, pixels scored, candidates, candidates through the greedy and its bound, and
host reads. Nothing here touches the GPU at import time; the module is loaded on first use.
"""

from __future__ import annotations

import contextlib

import torch

from .. import _native
from ..errors import InputError
from ..reference.scores import NONFINITE_MESSAGE
from ..scores import RIPU_PIXEL_RADIUS, ScoreSpec
from .base import (Picks, RoundAccumulator, RoundCounters, RoundPlan, exact_means, greedy_bound, image_picks,
                   max_picks_per_image)
from .reference import weighted

NAME = "cuda"

_DTYPES = {torch.float32: 0, torch.bfloat16: 1, torch.float16: 2}
_POINTWISE = ("entropy", "margin", "least_confidence", "random")
_MAX_GRID_Z = 65535  # batch slots per launch (gridDim.z)
_M32 = 0xFFFFFFFF


def _module():
    mod = _native.load("_cuda")
    if mod is None:
        raise RuntimeError(f"cbda._cuda {_native.load_error('_cuda')}")
    return mod


def _fmt_version(v: int) -> str:
    return f"{v // 1000}.{(v % 1000) // 10}"


def driver_problem(driver: int, runtime: int) -> str | None:
    """Why a CUDA driver cannot run cbda._cuda, or None when it can (CUDA's rule).

    ``driver`` and ``runtime`` are cudaDriverGetVersion/cudaRuntimeGetVersion values
    (1000·major + 10·minor). CUDA's compatibility rule for a module that embeds machine code
    (SASS) for the GPU: a driver runs code built with any toolkit of its own CUDA major
    version or older (minor-version compatibility: a 13.0 driver runs a 13.2 build), and
    refuses a newer major. cbda._cuda embeds SASS for every arch of its arch list, so only
    a GPU outside that list needs its PTX compiled by the driver, which minor-version
    compatibility does not cover (a driver older than the build's minor cannot JIT it).
    """
    if driver <= 0:
        return "no CUDA driver was found (cudaDriverGetVersion failed)"
    if runtime <= 0:
        return "the CUDA runtime linked into cbda._cuda reports no version"
    if driver // 1000 < runtime // 1000:
        return (
            f"the CUDA driver supports CUDA {_fmt_version(driver)}, but cbda._cuda was built with CUDA "
            f"{_fmt_version(runtime)}: a driver runs builds of its own CUDA major version or older "
            f"(CUDA {runtime // 1000}.x needs a driver for CUDA {runtime // 1000}.0 or newer); update the driver "
            "or rebuild cbda with an older toolkit (CUDA_HOME=... pip install .)"
        )
    return None


def not_supported_reasons(device: torch.device, dtype: torch.dtype) -> list[str]:
    reasons = []
    mod = _native.load("_cuda")
    if mod is None:
        reasons.append(f"cbda._cuda {_native.load_error('_cuda')}")
    if device.type != "cuda":
        reasons.append(f"tensors are on {device.type}, the cuda backend needs CUDA tensors")
    if dtype not in _DTYPES:
        reasons.append(f"dtype {dtype} not in float32/bfloat16/float16")
    if mod is not None and device.type == "cuda":
        driver, runtime = mod.versions()  # creates no context
        problem = driver_problem(int(driver), int(runtime))
        if problem:
            reasons.append(problem)
    return reasons


# -- small helpers ---------------------------------------------------------------------------
def _ptr(t: torch.Tensor | None) -> int:
    return 0 if t is None or t.numel() == 0 else t.data_ptr()


def _stream(device: torch.device) -> int:
    # 0 only for the CPU stand-in module the tests use to check this file's logic without a GPU
    return torch.cuda.current_stream(device).cuda_stream if device.type == "cuda" else 0


def _on(device: torch.device):
    """Make ``device`` current for the CUDA runtime inside cbda._cuda (a no-op off CUDA)."""
    return torch.cuda.device(device) if device.type == "cuda" else contextlib.nullcontext()


def _to_device(t: torch.Tensor, device: torch.device) -> torch.Tensor:
    """``t`` on ``device`` without making the host wait, or ``t`` itself when it is there.

    A plain ``.to("cuda")`` from pageable memory synchronises the stream (the host would wait
    for every kernel queued so far); a CPU tensor therefore goes through pinned memory and an
    asynchronous copy (torch's pinned allocator keeps the staging block until the copy ran)."""
    if t.device == device:
        return t
    if device.type == "cuda" and t.device.type == "cpu":
        return t.contiguous().pin_memory().to(device, non_blocking=True)
    return t.to(device)


def _mix32(h: int) -> int:
    h &= _M32
    h ^= h >> 16
    h = (h * 0x85EBCA6B) & _M32
    h ^= h >> 13
    h = (h * 0xC2B2AE35) & _M32
    h ^= h >> 16
    return h


def _fused(spec: ScoreSpec, mod) -> bool:
    """Whether the tile kernel computes this heuristic in one pass."""
    return spec.heuristic in _POINTWISE or (spec.heuristic == "ripu" and spec.radius <= mod.MAX_FUSED_RADIUS)


def _kernel_heuristic(spec: ScoreSpec, mod) -> tuple[int, int]:
    """(kernel heuristic code, tile radius) of the fused pass."""
    if spec.heuristic == "ripu":
        return mod.HEURISTICS["ripu"], spec.radius
    return mod.HEURISTICS[spec.heuristic], 0


def _check_logits(mod, x: torch.Tensor, out_size) -> tuple[int, int]:
    c = x.shape[1]
    if c > mod.MAX_CLASSES:
        raise InputError(f"logits: the cuda backend supports at most {mod.MAX_CLASSES} classes, got {c}")
    h, w = x.shape[-2:]
    H, W = out_size or (h, w)
    if (H + 15) // 16 > 65535:
        raise InputError(f"out_size: the cuda backend supports H up to {65535 * 16}, got {H}")
    return int(H), int(W)


def _logits_args(x: torch.Tensor, H: int, W: int) -> tuple:
    b, c, h, w = x.shape
    return (_ptr(x), _DTYPES[x.dtype], b, c, h, w, H, W)


class _Status:
    """Two int64 device words read together once per batch: [0] the candidate count (an
    atomic counter), [1] the non-finite flag the scoring kernels set (its low 32 bits: an
    ``unsigned int*`` for the kernels) on NaN/+inf logits or a pixel with no finite class."""

    def __init__(self, device):
        self.t = torch.zeros(2, dtype=torch.int64, device=device)

    @property
    def count_ptr(self) -> int:
        return _ptr(self.t)

    @property
    def flag_ptr(self) -> int:
        return _ptr(self.t) + 8  # little-endian: the low word of t[1]

    def read(self) -> tuple[int, int]:
        """(count, flag) with one device read; raises InputError when the flag is set."""
        n, bad = self.t.tolist()
        if bad:
            raise InputError(NONFINITE_MESSAGE)
        return n, bad


def _score_maps(mod, x, spec: ScoreSpec, ids, H, W, counts, flag_ptr: int):
    """Scores (B, H, W) float32 and labels (B, H, W) int64 of a contiguous CUDA batch
    (B <= 65535); the pseudo-label histogram is added to ``counts`` when given; the
    non-finite flag is set at ``flag_ptr`` (a _Status word)."""
    dev = x.device
    b, c = x.shape[:2]
    stream = _stream(dev)
    seed_hash = _mix32(spec.seed & _M32)
    scores = torch.empty((b, H, W), dtype=torch.float32, device=dev)
    labels = torch.empty((b, H, W), dtype=torch.int64, device=dev)
    if _fused(spec, mod):
        code, radius = _kernel_heuristic(spec, mod)
        mod.score_maps(*_logits_args(x, H, W), code, radius, seed_hash, _ptr(ids), _ptr(scores), _ptr(labels),
                       _ptr(counts), flag_ptr, stream)
        return scores, labels
    # large windows: pixel entropy + labels, then separable window passes
    pixel = spec.heuristic == "ripu_pixel"
    code = mod.HEURISTICS["entropy_raw" if pixel else "entropy"]
    ent = torch.empty((b, H, W), dtype=torch.float32, device=dev)
    mod.score_maps(*_logits_args(x, H, W), code, 0, seed_hash, _ptr(ids), _ptr(ent), _ptr(labels), _ptr(counts),
                   flag_ptr, stream)
    radius = RIPU_PIXEL_RADIUS if pixel else spec.radius
    scratch = torch.empty((b, H, W), dtype=torch.int32, device=dev)
    mod.window_impurity(_ptr(labels), b, H, W, c, radius, _ptr(scratch), _ptr(scores), stream)
    del scratch
    if pixel:
        other = ent
    else:
        other = torch.empty_like(ent)
        dscratch = torch.empty((b, H, W), dtype=torch.float64, device=dev)
        mod.window_mean(_ptr(ent), b, H, W, radius, _ptr(dscratch), _ptr(other), stream)
        del dscratch
    mod.multiply(_ptr(scores), _ptr(other), _ptr(scores), scores.numel(), stream)
    return scores, labels


def score(logits, spec, image_ids):
    """(B, H, W) float32 scores and int64 pseudo labels on the logits' device."""
    mod = _module()
    x = logits.contiguous()
    H, W = _check_logits(mod, x, spec.out_size)
    dev = x.device
    ids = image_ids.to(device=dev, dtype=torch.int64).contiguous()
    with _on(dev):
        status = _Status(dev)
        parts = [
            _score_maps(mod, x[s : s + _MAX_GRID_Z], spec, ids[s : s + _MAX_GRID_Z], H, W, None, status.flag_ptr)
            for s in range(0, x.shape[0], _MAX_GRID_Z)
        ]
        status.read()
    if len(parts) == 1:
        return parts[0]
    return torch.cat([p[0] for p in parts]), torch.cat([p[1] for p in parts])



def pick_order(scores: torch.Tensor, gidx: torch.Tensor, index_bits: int) -> torch.Tensor:
    """Permutation (int64, on the picks' device) ordering picks by (score desc, global index
    asc), -0.0 == +0.0. ``scores`` (n,) float32, ``gidx`` (n,) int64 >= 0 and below
    2**index_bits (a host-known bound: nothing is read back here)."""
    n = int(scores.numel())
    if n == 0:
        return torch.empty(0, dtype=torch.int64, device=scores.device)
    mod = _module()
    dev = scores.device
    scores = scores.to(torch.float32).contiguous()
    gidx = gidx.to(torch.int64).contiguous()
    with _on(dev):
        ws = torch.empty(mod.pick_order_workspace_bytes(n), dtype=torch.uint8, device=dev)
        perm = torch.empty(n, dtype=torch.int64, device=dev)
        mod.pick_order(_ptr(scores), _ptr(gidx), n, max(1, int(index_bits)), _ptr(perm), _ptr(ws), ws.numel(),
                       _stream(dev))
    return perm


class _Workspace:
    """Device buffers reused by every batch of a round: a request gets the first ``n``
    elements of a named buffer, which grows (never shrinks) to the largest host-known size
    asked for, so a round allocates once per buffer rather than once per batch. Everything
    runs on one stream, so a buffer's next use is ordered after the kernels of its last."""

    def __init__(self, device: torch.device):
        self.device = device
        self.bufs: dict[str, torch.Tensor] = {}

    def get(self, name: str, n: int, dtype: torch.dtype) -> torch.Tensor:
        t = self.bufs.get(name)
        if t is None or t.dtype != dtype or t.numel() < n:
            size = n if t is None or t.dtype != dtype else max(n, t.numel() + t.numel() // 4)
            t = self.bufs[name] = torch.empty(max(size, 1), dtype=dtype, device=self.device)
        return t[:n]


class _PickBuffer:
    """The picks of a round on the device, appended without any host read.

    ``scores`` (float32), ``gidx`` (int64 global index), ``classes`` (int64), each with
    ``capacity + 1`` entries (the last takes the writes of unused greedy slots); ``count``
    (int64[1], device) entries are valid; ``bound`` >= count is what the host knows;
    ``gmax`` (int64[1], device) >= every gidx, for the trim's radix passes."""

    def __init__(self, device: torch.device, capacity: int):
        self.device = device
        self.capacity = 0
        self.bound = 0
        self.count = torch.zeros(1, dtype=torch.int64, device=device)
        self.gmax = torch.zeros(1, dtype=torch.int64, device=device)
        self.scores = self.gidx = self.classes = None
        self.reserve(capacity)

    def reserve(self, need: int) -> None:
        """Room for ``need`` entries (a host-known size); the valid entries move along."""
        if need <= self.capacity and self.scores is not None:
            return
        cap = max(need, self.capacity + self.capacity // 2)
        new = [torch.empty(cap + 1, dtype=dt, device=self.device) for dt in (torch.float32, torch.int64, torch.int64)]
        if self.scores is not None and self.bound:
            for dst, src in zip(new, (self.scores, self.gidx, self.classes)):
                dst[: self.bound].copy_(src[: self.bound])
        self.scores, self.gidx, self.classes = new
        self.capacity = cap

    def append(self, ids: torch.Tensor, hw: int, pix: torch.Tensor, scores: torch.Tensor, classes: torch.Tensor,
               counts: torch.Tensor, bound: int) -> None:
        """Append the greedy's output of one launch: ``pix``/``scores``/``classes`` (B, q) of
        which the first ``counts[b]`` (B,) entries of row b are picks of image ``ids[b]`` (all
        device tensors); ``bound`` >= counts.sum() is host-known. Positions come from a prefix
        sum on the device (no boolean mask, whose size would have to be read back)."""
        b, q = pix.shape
        self.reserve(self.bound + bound)
        col = torch.arange(q, device=self.device)
        start = self.count + torch.cumsum(counts, 0) - counts
        pos = torch.where(col.unsqueeze(0) < counts.unsqueeze(1), start.unsqueeze(1) + col, self.capacity).flatten()
        self.scores.index_copy_(0, pos, scores.reshape(-1))
        self.gidx.index_copy_(0, pos, (ids.unsqueeze(1) * hw + pix).reshape(-1))
        self.classes.index_copy_(0, pos, classes.reshape(-1))
        self.count += counts.sum()
        torch.maximum(self.gmax, ids.max() * hw + (hw - 1), out=self.gmax)
        self.bound += bound


_INT64_MAX = 2**63 - 1


class CudaRound(RoundAccumulator):
    """One round on the cuda backend: per batch one host read (candidate count and
    non-finite flag), everything else enqueued; ``finish`` reads the picks."""

    def __init__(self, plan: RoundPlan):
        self.plan = plan
        self.counters = RoundCounters()
        self.counts: torch.Tensor | None = None
        self.means: list[torch.Tensor] = []
        self.ids: list[torch.Tensor] = []
        self.whole: list[torch.Tensor] = []
        self.ws: _Workspace | None = None
        self.picks: _PickBuffer | None = None
        self.cut: tuple[torch.Tensor, torch.Tensor] | None = None  # global scope: device (score, gidx)
        self.weights: torch.Tensor | None = None
        #: per selection launch: (candidates that entered the greedy: an int, or a device int64[1]
        #: read in finish; what the bound allows in)
        self.greedy_log: list[tuple[int | torch.Tensor, int]] = []
        #: after finish: [(greedy_in, bound)] per selection launch, host ints
        self.greedy_per_launch: list[tuple[int, int]] = []

    # -- helpers ------------------------------------------------------------------------------
    def _counts(self, num_classes: int, dev) -> torch.Tensor:
        if self.counts is None:
            self.counts = torch.zeros(num_classes, dtype=torch.int64, device=dev)
        return self.counts

    def _quota(self) -> int:
        plan = self.plan
        h, w = plan.image_size
        quota = plan.per_image if plan.scope == "per_image" else plan.total
        return max(0, min(int(quota or 0), max_picks_per_image(h, w, plan.radius)))

    def _device_state(self, dev) -> None:
        """Workspace, pick buffer, class weights and (da/cbda) the cut-off, at the first batch."""
        if self.ws is not None:
            return
        plan = self.plan
        self.ws = _Workspace(dev)
        self.picks = _PickBuffer(dev, 0)
        if plan.class_weights is not None:
            self.weights = _to_device(plan.class_weights.to(torch.float32), dev).contiguous()
        if plan.scope == "global":
            # "no cut-off yet" as values every finite score beats: -inf, then any gidx < int64 max
            self.cut = (torch.full((1,), float("-inf"), dtype=torch.float32, device=dev),
                        torch.full((1,), _INT64_MAX, dtype=torch.int64, device=dev))

    def _cut_ptrs(self) -> tuple[int, int]:
        return (_ptr(self.cut[0]), _ptr(self.cut[1])) if self.cut is not None else (0, 0)

    # -- the round ------------------------------------------------------------------------------
    def add(self, image_ids, prior, logits=None, scores=None, labels=None):
        mod = _module()
        dev = (logits if logits is not None else scores).device
        with _on(dev):
            if self.plan.scope == "image":
                self._add_image(mod, dev, image_ids, prior, logits, scores, labels)
                return
            x = logits.contiguous() if logits is not None else None
            if x is not None:
                H, W = _check_logits(mod, x, self.plan.spec.out_size)
                if (H, W) != tuple(self.plan.image_size):
                    raise InputError(f"logits: expected the label size {tuple(self.plan.image_size)}, got {(H, W)}")
            else:
                scores = scores.to(torch.float32).contiguous()
                labels = _to_device(labels.to(torch.int64), dev).contiguous() if labels is not None else None
            h, w = self.plan.image_size
            pixbits = max(1, (h * w - 1).bit_length())
            if pixbits > 32:
                raise InputError(f"image_size: the cuda backend needs H·W <= 2^32, got {h}x{w}")
            self._add_batch(mod, dev, image_ids.to(torch.int64), prior, x, scores, labels, pixbits)

    def _add_image(self, mod, dev, image_ids, prior, logits, scores, labels):
        plan = self.plan
        if logits is not None:
            x = logits.contiguous()
            H, W = _check_logits(mod, x, plan.spec.out_size)
            ids = image_ids.to(device=dev, dtype=torch.int64)
            counts = self._counts(x.shape[1], dev)
            status = _Status(dev)
            parts = [
                _score_maps(mod, x[s : s + _MAX_GRID_Z], plan.spec, ids[s : s + _MAX_GRID_Z], H, W, counts,
                            status.flag_ptr)
                for s in range(0, x.shape[0], _MAX_GRID_Z)
            ]
            status.read()
            scores = torch.cat([p[0] for p in parts]) if len(parts) > 1 else parts[0][0]
            labels = torch.cat([p[1] for p in parts]) if len(parts) > 1 else parts[0][1]
        wtd = weighted(scores.to(torch.float32), labels, plan.class_weights)
        # exact means on the device (no reduction-order dependence: near-tied images rank as
        # in every other backend; only 256 bucket sums per image cross the bus)
        self.means.append(exact_means(wtd))
        self.ids.append(image_ids.cpu())
        self.whole.append(prior.whole_image.cpu())

    def _add_batch(self, mod, dev, ids_cpu, prior, x, scores, labels, pixbits):
        """Score and compact every launch chunk of the batch, read all their counts and flags
        at once, then prune, sort, run the greedy and append the picks of each chunk."""
        plan = self.plan
        h, w = plan.image_size
        hw = h * w
        b = len(ids_cpu)
        self.counters.batches += 1
        self.counters.scored += b * hw
        stream = _stream(dev)
        self._device_state(dev)
        ws = self.ws
        ids = _to_device(ids_cpu, dev)
        quota = self._quota()
        counts = self._counts(x.shape[1], dev) if x is not None else None
        step = min(_MAX_GRID_Z, 2 ** (32 - pixbits))  # slot bits + pixel bits + 32 score bits <= 64
        chunks = [(s, min(b, s + step)) for s in range(0, b, step)]
        status = torch.zeros((len(chunks), 2), dtype=torch.int64, device=dev)  # [count, flag] per chunk
        flag = [_ptr(status) + 16 * i + 8 for i in range(len(chunks))]  # low word of status[i, 1]
        if quota == 0:  # nothing to pick; the histogram is still due
            if x is not None:
                for i, (s, e) in enumerate(chunks):
                    _score_maps(mod, x[s:e], plan.spec, ids[s:e], h, w, counts, flag[i])
                self._read_status(status)
            return
        # 1. centres blocked by earlier rounds (the whole batch: mark_prior has no slot limit;
        #    the CSR offsets are absolute, so the batch's PriorPicks is used as it is)
        mask = ws.get("mask", b * hw, torch.uint8).zero_()
        if prior.num_picks:
            csr = [_to_device(t.to(torch.int64).contiguous(), dev) for t in (prior.offsets, prior.ys, prior.xs,
                                                                             prior.radii)]
            mod.mark_prior(*(_ptr(t) for t in csr), b, h, w, plan.radius, _ptr(mask), stream)
        whole = _to_device(prior.whole_image.to(torch.uint8), dev)
        # 2. candidates of every chunk, appended to the chunk's own region of `keys`
        keys = ws.get("keys", b * hw, torch.int64)
        slot_counts = ws.get("slot_counts", b, torch.int64).zero_()
        cut = self._cut_ptrs()
        for i, (s, e) in enumerate(chunks):
            blocking = (_ptr(self.weights), _ptr(mask[s * hw : e * hw]), _ptr(whole[s:e]))
            append = (*cut, pixbits, _ptr(keys[s * hw : e * hw]), (e - s) * hw, _ptr(status) + 16 * i,
                      _ptr(slot_counts[s:e]))
            if x is not None and _fused(plan.spec, mod):
                code, radius = _kernel_heuristic(plan.spec, mod)
                mod.fused_candidates(*_logits_args(x[s:e], h, w), code, radius, _mix32(plan.spec.seed & _M32),
                                     _ptr(ids[s:e]), _ptr(counts), *blocking, *append, flag[i], stream)
            else:
                if x is not None:
                    sc, lab = _score_maps(mod, x[s:e], plan.spec, ids[s:e], h, w, counts, flag[i])
                else:
                    sc, lab = scores[s:e], labels[s:e] if labels is not None else None
                mod.map_candidates(_ptr(sc), _ptr(lab), e - s, h, w, *blocking, _ptr(ids[s:e]), *append, stream)
        rows = self._read_status(status)  # the one host read of the batch
        # 3. per chunk: prune to the bound, sort, greedy, append the picks
        for (s, e), (n, _) in zip(chunks, rows):
            self._select(mod, dev, stream, ids[s:e], n, keys[s * hw : s * hw + n], slot_counts[s:e],
                         mask[s * hw : e * hw], x[s:e] if x is not None else None,
                         labels[s:e] if x is None and labels is not None else None, pixbits, quota)

    def _read_status(self, status: torch.Tensor) -> list[list[int]]:
        rows = self.counters.host_read(status)
        if any(bad for _, bad in rows):
            raise InputError(NONFINITE_MESSAGE)
        return rows

    def _select(self, mod, dev, stream, ids, n, keys, slot_counts, mask, x, labels, pixbits, quota):
        """The exact selection of one launch chunk from its ``n`` candidate keys (host-known)."""
        plan = self.plan
        ws = self.ws
        h, w = plan.image_size
        hw = h * w
        b = ids.numel()
        per_slot = plan.scope == "per_image"
        # the pruning bound (docs/semantics.md, "Pruning"): per image, or over the batch
        limit = greedy_bound(quota if per_slot else plan.total, plan.radius)
        bound = limit * (b if per_slot else 1)
        self.counters.candidates += n
        self.counters.greedy_bound += bound
        if n == 0:
            self.greedy_log.append((0, bound))
            return
        slotbits = (b - 1).bit_length()
        end_bit = 32 + pixbits + slotbits
        cut = self._cut_ptrs()
        if n <= limit:  # no slot has more than the limit: nothing to prune
            m, sort_in, seg_counts = n, keys, slot_counts
            self.greedy_log.append((n, bound))
        else:
            m = min(n, bound)  # what can be kept
            sort_in = ws.get("pruned", m, torch.int64).fill_(_pad_key(end_bit))  # pads sort last
            seg_counts = ws.get("kept_counts", b, torch.int64).zero_()
            kept = torch.zeros(1, dtype=torch.int64, device=dev)  # read in finish (counters)
            work = ws.get("select_work", mod.select_work_words(b if per_slot else 1), torch.int64)
            rank = None if per_slot else torch.argsort(torch.argsort(ids))  # image-id order of the slots
            mod.prune_candidates(_ptr(keys), n, b, pixbits, per_slot, limit, _ptr(slot_counts), _ptr(rank), _ptr(ids),
                                 hw, _ptr(work), _ptr(sort_in), _ptr(kept), _ptr(seg_counts), *cut, stream)
            self.greedy_log.append((kept, bound))
        # group by image, best first (pads last: the greedy reads seg_counts entries per slot)
        sorted_keys = ws.get("sorted", m, torch.int64)
        temp = ws.get("sort_temp", mod.sort_temp_bytes(m, end_bit), torch.uint8)
        mod.sort_keys(_ptr(sort_in), _ptr(sorted_keys), m, end_bit, _ptr(temp), temp.numel(), stream)
        # exact greedy per image; a slot has at most m candidates, so min(quota, m) caps as quota does
        q = min(quota, m)
        out_pix = ws.get("out_pix", b * q, torch.int64).zero_()  # unused entries: pixel 0, a valid index
        out_score = ws.get("out_score", b * q, torch.float32)
        out_count = ws.get("out_count", b, torch.int64)
        mod.greedy(_ptr(sorted_keys), _ptr(seg_counts), b, h, w, plan.radius, pixbits, _ptr(mask), q, _ptr(out_pix),
                   _ptr(out_score), _ptr(out_count), stream)
        if x is not None:
            classes = ws.get("classes", b * q, torch.int64)
            slots = torch.arange(b, device=dev).repeat_interleave(q)
            mod.labels_at(*_logits_args(x, h, w), _ptr(slots), _ptr(out_pix), b * q, _ptr(classes), stream)
        elif labels is not None:
            classes = labels.reshape(b, hw).gather(1, out_pix.view(b, q))
        else:
            classes = torch.zeros(b * q, dtype=torch.int64, device=dev)
        self.picks.append(ids, hw, out_pix.view(b, q), out_score.view(b, q), classes.view(b, q), out_count,
                          min(b * q, m))
        if plan.scope == "global" and self.picks.bound > 2 * plan.total:
            self._trim(mod, stream)

    def _trim(self, mod, stream):
        """Keep the best K picks of the buffer (radix select on the device) and raise the
        cut-off to the K-th: later batches append only candidates that beat it."""
        k = self.plan.total
        buf, ws = self.picks, self.ws
        out = (ws.get("trim_scores", k, torch.float32), ws.get("trim_gidx", k, torch.int64),
               ws.get("trim_classes", k, torch.int64))
        kept = ws.get("trim_count", 1, torch.int64).zero_()
        work = ws.get("select_work", mod.select_work_words(1), torch.int64)
        mod.trim_picks(_ptr(buf.scores), _ptr(buf.gidx), _ptr(buf.classes), _ptr(buf.count), buf.bound,
                       _ptr(buf.gmax), k, _ptr(work), *(_ptr(t) for t in out), _ptr(kept), *self._cut_ptrs(), stream)
        for dst, src in zip((buf.scores, buf.gidx, buf.classes), out):
            dst[:k].copy_(src)
        buf.count.copy_(kept)
        buf.bound = k

    def finish(self) -> Picks:
        plan = self.plan
        if plan.scope == "image":
            counts = self.counts.cpu() if self.counts is not None else None
            return image_picks(self.ids, self.means, self.whole, plan.total, counts)
        buf = self.picks
        if buf is None:  # no batch, or every batch had nothing to pick
            p = Picks.empty()
            p.predicted_counts = self.counts.cpu() if self.counts is not None else None
            return p
        # one read: the pick count, the largest gidx, the histogram, the pruned launches' counts
        dev_logged = [g for g, _ in self.greedy_log if isinstance(g, torch.Tensor)]
        hist = self.counts if self.counts is not None else buf.count[:0]
        vals = self.counters.host_read(torch.cat([buf.count, buf.gmax, hist, *dev_logged]))
        n, gmax = vals[0], vals[1]
        counts = torch.tensor(vals[2 : 2 + hist.numel()], dtype=torch.int64) if self.counts is not None else None
        read = iter(vals[2 + hist.numel() :])
        self.greedy_per_launch = [(next(read) if isinstance(g, torch.Tensor) else g, bd) for g, bd in self.greedy_log]
        self.counters.greedy_in = sum(g for g, _ in self.greedy_per_launch)
        perm = pick_order(buf.scores[:n], buf.gidx[:n], max(1, gmax.bit_length()))
        if plan.scope == "global":
            perm = perm[: plan.total]
        hw = plan.image_size[0] * plan.image_size[1]
        w = plan.image_size[1]
        gidx, classes = torch.stack([buf.gidx[perm], buf.classes[perm]]).cpu()
        scores = buf.scores[perm].cpu()
        pix = gidx % hw
        return Picks(gidx // hw, pix // w, pix % w, scores, classes, counts)


def _pad_key(end_bit: int) -> int:
    """A candidate key that sorts after every real one over bits [0, end_bit), as int64:
    all ones (a real key never has them: its score bits would be a NaN's)."""
    v = (1 << end_bit) - 1
    return v - (1 << 64) if v >= 1 << 63 else v


def open_round(plan: RoundPlan) -> RoundAccumulator:
    return CudaRound(plan)
