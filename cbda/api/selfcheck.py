"""Backends checked against the reference on small random inputs.

Used twice: ``python -m cbda.info --check`` runs the full grid for every backend available
here; ``dispatch.resolve("auto")`` runs the miniature grid once per process for a GPU
backend before its first use and skips a backend that disagrees (warning once).

What "agrees" means, so that a correct backend never fails on rounding:
- scores from logits (ties and masked -inf classes included) within a dtype-free tolerance
  of the float32 reference (the backends upcast to float32 like the reference), and pseudo
  labels equal;
- picks equal to the reference's on precomputed score maps full of exact ties and negative
  values (identical scores must give identical selections, docs/architecture.md, Testing);
- a round from logits picks the same number of regions with the same score sequence within
  the tolerance (two near-tied regions may swap places between two correct backends).
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field

import torch

from ..backends.base import RoundPlan
from ..scores import ScoreSpec

__all__ = ["CheckResult", "check_backend", "SCORE_RTOL", "SCORE_ATOL"]

#: scores against the float32 reference: exp/log differ by an ulp or two between backends
SCORE_RTOL = 1e-5
SCORE_ATOL = 1e-5


@dataclass
class CheckResult:
    """One backend's agreement with the reference."""

    backend: str
    device: str
    max_score_error: float = 0.0
    labels_equal: bool = True
    picks_equal: bool = True
    round_scores_close: bool = True
    cases: int = 0
    seconds: float = 0.0
    failures: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not self.failures

    def line(self) -> str:
        state = "ok" if self.ok else "MISMATCH"
        text = (f"{self.backend:9s} on {self.device:6s} {state:8s} max score error {self.max_score_error:.2e}, "
                f"labels {'equal' if self.labels_equal else 'DIFFER'}, picks {'equal' if self.picks_equal else 'DIFFER'}, "
                f"{self.cases} cases in {self.seconds:.2f} s")
        if self.failures:
            text += "\n    " + "\n    ".join(self.failures[:5])
        return text


def _logits(b, c, h, w, seed, dtype, device) -> torch.Tensor:
    """Random logits with exact ties (values on a 0.5 grid) and masked classes (-inf): a
    whole class channel of image 0 and scattered single entries, never a whole pixel."""
    g = torch.Generator().manual_seed(seed)
    x = (torch.randn(b, c, h, w, generator=g) * 2.0 * 2).round() / 2
    x[0, c - 1] = float("-inf")
    holes = torch.rand(b, c, h, w, generator=g) < 0.15
    holes[:, 0] = False  # class 0 stays finite: no pixel loses every class
    x[holes] = float("-inf")
    return x.to(dtype).to(device)


def _tie_scores(b, h, w, seed, device) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return (torch.randint(0, 4, (b, h, w), generator=g).to(torch.float32) - 1.0).to(device)


def _picks(mod, plan: RoundPlan, ids, prior, **batch):
    acc = mod.open_round(plan)
    acc.add(ids, prior, **batch)
    p = acc.finish()
    return p


def _plan(strategy, spec, radius, size, ids_n, per_image, total, weights=None):
    return RoundPlan(strategy, spec, radius, size, per_image, total, weights)


def check_backend(name: str, device: torch.device, dtype: torch.dtype | None = None, mini: bool = False,
                  module=None) -> CheckResult:
    """Compare backend ``name`` (or the given ``module``) with the reference on ``device``.

    Args:
        dtype: only this logits dtype (None: float32, bfloat16 and float16).
        mini: the miniature grid of the dispatch self-check (one score case, one round of
            picks on ties, one round from logits; well under 100 ms on a GPU once the
            kernels are compiled) instead of the full grid (r = 0, 1, 2, 3, all dtypes).
    Returns:
        CheckResult; ``failures`` lists what disagreed (an exception counts as a failure).
    """
    from ..backends import reference as ref
    from ..state import PriorPicks

    if module is None:
        from . import dispatch

        module = dispatch._module(name)[0]
    res = CheckResult(name, str(device))
    t0 = time.perf_counter()
    dtypes = [dtype] if dtype is not None else [torch.float32, torch.bfloat16, torch.float16]
    radii = [1] if mini else [0, 1, 2, 3]
    heuristics = ["ripu"] if mini else ["ripu", "entropy", "margin"]
    b, c, h, w, size = (2, 5, 5, 6, (9, 11)) if mini else (2, 5, 6, 7, (11, 13))
    ids = torch.tensor([3, 0], dtype=torch.int64)
    prior = PriorPicks.empty(b)
    try:
        for di, dt in enumerate(dtypes):
            x = _logits(b, c, h, w, 17 + di, dt, device)
            xr = x.cpu()
            for heur in heuristics:
                for r in radii if heur == "ripu" else [1]:
                    spec = ScoreSpec(heur, r, size, 0)
                    s, lab = module.score(x, spec, ids.to(device))
                    rs, rl = ref.score(xr, spec, ids)
                    res.cases += 1
                    s = s.cpu()
                    if not bool(torch.isfinite(s).all()):
                        res.failures.append(f"{heur} r={r} {dt}: non-finite scores")
                        continue
                    err = float((s - rs).abs().max())
                    res.max_score_error = max(res.max_score_error, err)
                    if not torch.allclose(s, rs, rtol=SCORE_RTOL, atol=SCORE_ATOL):
                        res.failures.append(f"{heur} r={r} {dt}: max score error {err:.3e}")
                    if not torch.equal(lab.cpu(), rl):
                        res.labels_equal = False
                        res.failures.append(f"{heur} r={r} {dt}: pseudo labels differ")
            # a round from logits (fused scoring + selection), compared as score sequences
            for r in radii:
                spec = ScoreSpec("ripu", r, size, 0)
                plan = _plan("da", spec, r, size, b, None, 6)
                pb = _picks(module, plan, ids, prior, logits=x)
                pr = _picks(ref, plan, ids, prior, logits=xr)
                res.cases += 1
                if pb.scores.numel() != pr.scores.numel() or not torch.allclose(
                        pb.scores, pr.scores, rtol=SCORE_RTOL, atol=SCORE_ATOL):
                    res.round_scores_close = False
                    res.failures.append(f"da round from {dt} logits r={r}: pick scores differ")
                if pb.predicted_counts is not None and pr.predicted_counts is not None and not torch.equal(
                        pb.predicted_counts.cpu(), pr.predicted_counts.cpu()):
                    res.failures.append(f"da round from {dt} logits r={r}: pseudo-label histogram differs")
        # picks on exact ties: every strategy scope, every radius
        scores = _tie_scores(b, size[0], size[1], 5, device)
        labels = (torch.arange(size[0] * size[1]).reshape(1, *size).expand(b, *size) % c).contiguous().to(device)
        weights = torch.tensor([1.0, 0.5, 2.0, 1.0, 0.25][:c] + [1.0] * max(0, c - 5), dtype=torch.float32)
        for r in radii:
            for strategy, per_image, total, wts in (("da", None, 7, None), ("ra", 3, None, None),
                                                    ("cbda", None, 5, weights), ("image", None, 1, None)):
                plan = _plan(strategy, ScoreSpec("ripu", r, size, 0), r, size, b, per_image, total, wts)
                pb = _picks(module, plan, ids, prior, scores=scores, labels=labels)
                pr = _picks(ref, plan, ids, prior, scores=scores.cpu(), labels=labels.cpu())
                res.cases += 1
                same = all(torch.equal(getattr(pb, f).cpu(), getattr(pr, f).cpu()) for f in ("image_ids", "ys", "xs", "classes"))
                if not same:
                    res.picks_equal = False
                    res.failures.append(f"{strategy} r={r} on tied scores: picks differ")
    except Exception as err:  # a crashing backend is a failing backend
        res.failures.append(f"raised {type(err).__name__}: {err}")
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    res.seconds = time.perf_counter() - t0
    return res
