"""The ``cpu`` backend: fused C++/OpenMP kernels (``cbda._cpu``) on CPU tensors.

Per batch, one fused pass per image (threads split its rows) reads the logits at their own
resolution, upsamples them bilinearly row by row (never materialised at full resolution),
and computes softmax, entropy, pseudo label, the windowed RIPU statistics by running sums,
the score, the class weight and the prior-blocked mask. Centres that are blocked or do not
beat the round's cut-off are dropped inside the kernel; the rest go to the exact per-image
greedy (partial sort of the prefix it needs). For ``da``/``cbda`` the picks join a buffer
that is selected back to exactly K whenever it passes 2K, raising the cut-off (the K-th key
of the order (score desc, global index asc)): exact in one pass, memory O(K + one image).

All tensors are allocated by torch here; the module gets their addresses (docs/architecture.md).

Agreement with the reference. The upsampled logits are bit-identical to ATen's CPU bilinear
kernel (its fma order, reproduced with std::fma), so pseudo labels are identical. Scores are
not bit-identical (about 86 % of ripu scores are, the rest differ by an ulp or two): exp/log
are our own vectorisable polynomials (< 1 ulp) where torch uses SLEEF, and window sums run
as running sums where the reference uses float64 integral images. Selections on identical
score maps are exact; on logits, the picked set equals the reference's on typical inputs, and
only picks whose scores tie to an ulp can trade places. Caveat: for outputs with H + W <= 128
ATen switches to a channels-last kernel with another rounding order; labels still agree except
at exact float near-ties of two classes.
"""

from __future__ import annotations

import torch

from .. import _native
from ..errors import InputError
from .base import Picks, RoundAccumulator, RoundPlan, exact_means, image_picks, max_picks_per_image
from .reference import weighted

NAME = "cpu"

#: heuristic name -> kernel code (csrc/cpu/score.h)
HEUR_CODES = {"ripu": 0, "ripu_pixel": 1, "entropy": 2, "margin": 3, "least_confidence": 4, "random": 5}
DTYPE_CODES = {torch.float32: 0, torch.bfloat16: 1, torch.float16: 2}


def not_supported_reasons(device: torch.device, dtype: torch.dtype) -> list[str]:
    reasons = []
    if _native.load("_cpu") is None:
        reasons.append(f"cbda._cpu {_native.load_error('_cpu')}")
    if device.type != "cpu":
        reasons.append(f"tensors are on {device.type}, the cpu backend needs CPU tensors")
    if dtype not in (torch.float32, torch.bfloat16, torch.float16):
        reasons.append(f"dtype {dtype} not in float32/bfloat16/float16")
    return reasons


def _threads() -> int:
    # follow torch's intra-op setting, so torch.set_num_threads governs both
    return max(1, torch.get_num_threads())


def _check_size(h: int, w: int) -> None:
    if h * w >= 2**32:
        raise ValueError("image_size: H*W must be below 2^32 for the cpu backend")


def _call(fn, *args):
    """Call into cbda._cpu; its non-finite-logits error (a ValueError raised after the
    threads join: the kernels count NaN/+inf and all -inf pixels as they read the logits,
    no extra pass) becomes the API's InputError."""
    try:
        return fn(*args)
    except ValueError as err:
        if str(err).startswith("logits:"):
            raise InputError(str(err)) from None
        raise


def _logits_args(logits: torch.Tensor):
    """(address, dtype code, sizes, element strides) of a (B, C, h, w) tensor, any layout."""
    return logits.data_ptr(), DTYPE_CODES[logits.dtype], tuple(logits.shape), tuple(logits.stride())


def score(logits: torch.Tensor, spec, image_ids: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Fused scores of a batch (``cbda.score(..., backend="cpu")``).

    Args:
        logits: (B, C, h, w) float32/bfloat16/float16 CPU tensor, any strides.
        spec: ``cbda.scores.ScoreSpec``. image_ids: (B,) int64 (used by ``random``).
    Returns:
        scores (B, H, W) float32 and pseudo labels (B, H, W) int64.
    """
    mod = _native.load("_cpu")
    b, _, h, w = logits.shape
    hh, ww = spec.out_size or (h, w)
    _check_size(hh, ww)
    scores = torch.empty((b, hh, ww), dtype=torch.float32)
    labels = torch.empty((b, hh, ww), dtype=torch.int64)
    if b == 0 or hh * ww == 0:
        return scores, labels
    ids = image_ids.to(torch.int64).contiguous()
    _call(mod.score_maps, *_logits_args(logits), ids.data_ptr(), HEUR_CODES[spec.heuristic], spec.radius, hh, ww,
                   spec.seed & (2**64 - 1), scores.data_ptr(), labels.data_ptr(), _threads())
    return scores, labels



class _Prior:
    """The CSR arrays of a ``PriorPicks`` as contiguous CPU tensors kept alive for the call."""

    def __init__(self, prior):
        self.t = [prior.offsets.to(torch.int64).contiguous(), prior.ys.to(torch.int64).contiguous(),
                  prior.xs.to(torch.int64).contiguous(), prior.radii.to(torch.int64).contiguous(),
                  prior.whole_image.to(torch.uint8).contiguous()]

    def ptrs(self):
        return [t.data_ptr() for t in self.t]


class CpuRound(RoundAccumulator):
    """Streaming round on the C++ ``Round`` (region strategies) or score maps (``image``)."""

    def __init__(self, plan: RoundPlan):
        self.plan = plan
        self.counts: torch.Tensor | None = None
        self.weights = plan.class_weights.to(torch.float32).contiguous() if plan.class_weights is not None else None
        self.means: list[torch.Tensor] = []
        self.ids: list[torch.Tensor] = []
        self.whole: list[torch.Tensor] = []
        self.native = None
        if plan.scope != "image":
            h, w = plan.image_size
            _check_size(h, w)
            if plan.scope == "per_image":
                quota, total = plan.per_image, -1
            else:
                quota, total = plan.total, plan.total
            quota = max(0, min(int(quota or 0), max_picks_per_image(h, w, plan.radius)))
            self.native = _native.load("_cpu").Round(h, w, plan.radius, quota, int(total), _threads())

    def _hist(self, c: int) -> torch.Tensor:
        if self.counts is None:
            self.counts = torch.zeros(c, dtype=torch.int64)
        return self.counts

    def add(self, image_ids, prior, logits=None, scores=None, labels=None):
        plan = self.plan
        ids = image_ids.to(torch.int64).contiguous()
        if plan.scope == "image":
            if logits is not None:
                scores, labels = score(logits, plan.spec, ids)
                self._hist(logits.shape[1]).add_(torch.bincount(labels.flatten(), minlength=logits.shape[1]))
            s = weighted(scores.to(torch.float32), labels, self.weights)
            self.means.append(exact_means(s))
            self.ids.append(image_ids)
            self.whole.append(prior.whole_image)
            return
        pr = _Prior(prior)
        wptr = self.weights.data_ptr() if self.weights is not None else 0
        if logits is not None:
            spec = plan.spec
            hist = self._hist(logits.shape[1])
            _call(self.native.add_logits, *_logits_args(logits), ids.data_ptr(), HEUR_CODES[spec.heuristic], spec.radius,
                                   spec.seed & (2**64 - 1), wptr, *pr.ptrs(), hist.data_ptr())
        else:
            s = scores.to(torch.float32).contiguous()
            lab = labels.to(torch.int64).contiguous() if labels is not None else None
            self.native.add_scores(s.data_ptr(), lab.data_ptr() if lab is not None else 0, s.shape[0], ids.data_ptr(),
                                   wptr if lab is not None else 0, *pr.ptrs())

    def finish(self) -> Picks:
        plan = self.plan
        if plan.scope == "image":
            return image_picks(self.ids, self.means, self.whole, plan.total, self.counts)
        n = self.native.finish_size()
        out = [torch.empty(n, dtype=torch.int64) for _ in range(3)]
        sc = torch.empty(n, dtype=torch.float32)
        cl = torch.empty(n, dtype=torch.int64)
        self.native.finish(out[0].data_ptr(), out[1].data_ptr(), out[2].data_ptr(), sc.data_ptr(), cl.data_ptr())
        return Picks(out[0], out[1], out[2], sc, cl, self.counts)


def open_round(plan: RoundPlan) -> RoundAccumulator:
    return CpuRound(plan)
