"""The ``cuda`` backend: CUDA C++ kernels (cbda._cuda) on CUDA tensors.

Per batch of a round, with every buffer allocated here by torch (so the caching allocator
and ``torch.cuda.max_memory_allocated`` see all of it) and every kernel enqueued on torch's
current stream:

1. ``mark_prior``: a byte map of centres blocked by earlier rounds (PriorPicks CSR).
2. ``fused_candidates``: one pass over the label grid reading the low-res logits once —
   upsampling, softmax, entropy, pseudo label, window statistics, class weight, blocking,
   cut-off test, and warp-aggregated compaction of 64-bit candidate keys
   ``[slot | ~score bits | y·W+x]``; plus the pseudo-label histogram. ``ripu_pixel`` and
   ``ripu`` with r > 2 instead write score maps through separable window passes and compact
   from the maps (``map_candidates``), as do precomputed scores.
3. ``sort_keys`` (CUB radix sort) groups candidates by image, best first; ``greedy`` (one
   warp per image) runs the exact per-image greedy with blocking over them.
4. ``da``/``cbda``: the per-image sequences go to a buffer that is cut back to exactly K
   (``pick_order``: two stable radix sorts) whenever it passes 2K; the K-th key becomes the
   cut-off the fused pass tests, so later batches append only what can still enter the
   top K. Exact in one pass, memory O(K + one batch).

Nothing here touches the GPU at import time; the module is loaded on first use.
"""

from __future__ import annotations

import contextlib

import torch

from .. import _native
from ..errors import InputError
from ..reference.scores import NONFINITE_MESSAGE
from ..scores import RIPU_PIXEL_RADIUS, ScoreSpec
from .base import Picks, RoundAccumulator, RoundPlan, exact_means, image_picks, max_picks_per_image
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



def pick_order(scores: torch.Tensor, gidx: torch.Tensor) -> torch.Tensor:
    """Permutation ordering CUDA picks by (score desc, global index asc); -0.0 == +0.0."""
    n = int(scores.numel())
    if n == 0:
        return torch.empty(0, dtype=torch.int64, device=scores.device)
    mod = _module()
    dev = scores.device
    scores = scores.to(torch.float32).contiguous()
    gidx = gidx.to(torch.int64).contiguous()
    index_bits = max(1, int(gidx.max()).bit_length())
    with _on(dev):
        ws = torch.empty(mod.pick_order_workspace_bytes(n), dtype=torch.uint8, device=dev)
        perm = torch.empty(n, dtype=torch.int64, device=dev)
        mod.pick_order(_ptr(scores), _ptr(gidx), n, index_bits, _ptr(perm), _ptr(ws), ws.numel(), _stream(dev))
    return perm


_FIELDS = ("image_ids", "pix", "scores", "classes")


class CudaRound(RoundAccumulator):
    def __init__(self, plan: RoundPlan):
        self.plan = plan
        self.parts: list[dict] = []
        self.buffered = 0
        self.cutoff: tuple[float, int] | None = None
        self.counts: torch.Tensor | None = None
        self.means: list[torch.Tensor] = []
        self.ids: list[torch.Tensor] = []
        self.whole: list[torch.Tensor] = []

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
                labels = labels.to(device=dev, dtype=torch.int64).contiguous() if labels is not None else None
            h, w = self.plan.image_size
            pixbits = max(1, (h * w - 1).bit_length())
            if pixbits > 32:
                raise InputError(f"image_size: the cuda backend needs H·W <= 2^32, got {h}x{w}")
            step = min(_MAX_GRID_Z, 2 ** (32 - pixbits))
            ids = image_ids.to(torch.int64).cpu()
            for s in range(0, len(ids), step):
                e = min(len(ids), s + step)
                self._add_chunk(
                    mod, dev, ids[s:e], _slice_prior(prior, s, e),
                    x[s:e] if x is not None else None,
                    scores[s:e] if x is None else None,
                    labels[s:e] if x is None and labels is not None else None,
                    pixbits,
                )

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

    def _add_chunk(self, mod, dev, ids_cpu, prior, x, scores, labels, pixbits):
        plan = self.plan
        h, w = plan.image_size
        hw = h * w
        b = len(ids_cpu)
        stream = _stream(dev)
        ids = ids_cpu.to(dev)
        quota = self._quota()
        counts = self._counts(x.shape[1], dev) if x is not None else None
        status = _Status(dev)
        if quota == 0:  # nothing to pick; the histogram is still due
            if x is not None:
                _score_maps(mod, x, plan.spec, ids, h, w, counts, status.flag_ptr)
                status.read()
            return
        # 1. centres blocked by earlier rounds
        mask = torch.zeros(b * hw, dtype=torch.uint8, device=dev)
        if prior.num_picks:
            pd = prior.to(dev)
            mod.mark_prior(_ptr(pd.offsets), _ptr(pd.ys), _ptr(pd.xs), _ptr(pd.radii), b, h, w, plan.radius,
                           _ptr(mask), stream)
        whole = prior.whole_image.to(device=dev, dtype=torch.uint8)
        weights = plan.class_weights.to(device=dev, dtype=torch.float32).contiguous() if plan.class_weights is not None else None
        # 2. candidates (one reservation per warp); capacity = every pixel of the chunk
        keys = torch.empty(b * hw, dtype=torch.int64, device=dev)
        slot_counts = torch.zeros(b, dtype=torch.int64, device=dev)
        use_cut = self.cutoff is not None
        cut_score, cut_gidx = self.cutoff if use_cut else (0.0, 0)
        blocking = (_ptr(weights), _ptr(mask), _ptr(whole))
        append = (use_cut, float(cut_score), int(cut_gidx), pixbits, _ptr(keys), keys.numel(), status.count_ptr,
                  _ptr(slot_counts))
        if x is not None and _fused(plan.spec, mod):
            code, radius = _kernel_heuristic(plan.spec, mod)
            mod.fused_candidates(*_logits_args(x, h, w), code, radius, _mix32(plan.spec.seed & _M32), _ptr(ids),
                                 _ptr(counts), *blocking, *append, status.flag_ptr, stream)
        else:
            if x is not None:
                scores, labels = _score_maps(mod, x, plan.spec, ids, h, w, counts, status.flag_ptr)
            mod.map_candidates(_ptr(scores), _ptr(labels), b, h, w, *blocking, _ptr(ids), *append, stream)
        n, _ = status.read()  # the one host read of the batch: count and non-finite flag
        # 3. group by image, best first; exact greedy per image
        slotbits = (b - 1).bit_length()
        end_bit = 32 + pixbits + slotbits
        sorted_keys = torch.empty(n, dtype=torch.int64, device=dev)
        temp = torch.empty(mod.sort_temp_bytes(n, end_bit), dtype=torch.uint8, device=dev)
        mod.sort_keys(_ptr(keys), _ptr(sorted_keys), n, end_bit, _ptr(temp), temp.numel(), stream)
        del keys, temp
        out_pix = torch.empty((b, quota), dtype=torch.int64, device=dev)
        out_score = torch.empty((b, quota), dtype=torch.float32, device=dev)
        out_count = torch.empty(b, dtype=torch.int64, device=dev)
        mod.greedy(_ptr(sorted_keys), _ptr(slot_counts), b, h, w, plan.radius, pixbits, _ptr(mask), quota,
                   _ptr(out_pix), _ptr(out_score), _ptr(out_count), stream)
        valid = torch.arange(quota, device=dev).unsqueeze(0) < out_count.unsqueeze(1)
        slots = torch.arange(b, device=dev).unsqueeze(1).expand(b, quota)[valid].contiguous()
        pix = out_pix[valid].contiguous()
        picked = out_score[valid]
        if x is not None:
            classes = torch.empty_like(pix)
            mod.labels_at(*_logits_args(x, h, w), _ptr(slots), _ptr(pix), pix.numel(), _ptr(classes), stream)
        elif labels is not None:
            classes = labels.view(b, hw)[slots, pix]
        else:
            classes = torch.zeros_like(pix)
        part = {"image_ids": ids[slots], "pix": pix, "scores": picked, "classes": classes}
        self.parts.append(part)
        self.buffered += int(pix.numel())
        if plan.scope == "global" and self.buffered > 2 * plan.total:
            self._trim()

    def _merged(self) -> dict | None:
        if not self.parts:
            return None
        if len(self.parts) == 1:
            return self.parts[0]
        return {f: torch.cat([p[f] for p in self.parts]) for f in _FIELDS}

    def _ordered(self, limit: int | None) -> dict | None:
        m = self._merged()
        if m is None:
            return None
        hw = self.plan.image_size[0] * self.plan.image_size[1]
        perm = pick_order(m["scores"], m["image_ids"] * hw + m["pix"])
        if limit is not None:
            perm = perm[:limit]
        return {f: m[f][perm] for f in _FIELDS}

    def _trim(self):
        """Select the buffer back to exactly K and raise the cut-off to the K-th key."""
        k = self.plan.total
        top = self._ordered(k)
        self.parts = [top]
        self.buffered = int(top["pix"].numel())
        if self.buffered >= k > 0:
            hw = self.plan.image_size[0] * self.plan.image_size[1]
            self.cutoff = (float(top["scores"][-1]), int(top["image_ids"][-1]) * hw + int(top["pix"][-1]))

    def finish(self) -> Picks:
        plan = self.plan
        counts = self.counts.cpu() if self.counts is not None else None
        if plan.scope == "image":
            return image_picks(self.ids, self.means, self.whole, plan.total, counts)
        out = self._ordered(plan.total if plan.scope == "global" else None)
        if out is None:
            p = Picks.empty()
            p.predicted_counts = counts
            return p
        w = plan.image_size[1]
        pix = out["pix"].cpu()
        return Picks(out["image_ids"].cpu(), pix // w, pix % w, out["scores"].cpu(), out["classes"].cpu(), counts)


def _slice_prior(prior, s: int, e: int):
    """The PriorPicks of batch entries [s, e) (CSR offsets rebased)."""
    if s == 0 and e == prior.batch_size:
        return prior
    from ..state import PriorPicks

    off = prior.offsets
    lo, hi = int(off[s]), int(off[e])
    return PriorPicks(off[s : e + 1] - lo, prior.ys[lo:hi], prior.xs[lo:hi], prior.radii[lo:hi], prior.whole_image[s:e])


def open_round(plan: RoundPlan) -> RoundAccumulator:
    return CudaRound(plan)
