"""What every backend receives and returns: the round plan, the picks, the accumulator seam."""

from __future__ import annotations

from dataclasses import dataclass

import torch

from ..scores import ScoreSpec

__all__ = ["RoundPlan", "Picks", "RoundAccumulator", "RoundCounters", "STRATEGIES", "REGION_STRATEGIES", "image_picks",
           "max_picks_per_image", "exact_means", "mean_buckets", "means_from_buckets", "greedy_bound"]

#: strategy -> (selection scope, class balanced)
STRATEGIES = {
    "image": ("image", False),
    "ra": ("per_image", False),
    "da": ("global", False),
    "cbra": ("per_image", True),
    "cbda": ("global", True),
}
REGION_STRATEGIES = ("ra", "da", "cbra", "cbda")


@dataclass(frozen=True)
class RoundPlan:
    """Everything a backend needs to run one acquisition round.

    Attributes:
        strategy: one of STRATEGIES.
        spec: the heuristic (ignored when scores are given).
        radius: selection radius r (a pick labels its (2r+1)² window).
        image_size: (H, W) of the label grid.
        per_image: picks per image (``ra``/``cbra``), else None.
        total: picks in the round (``da``/``cbda``: K = N·m; ``image``: images), else None.
        class_weights: (C,) float32 CPU weights applied as ``score · w[label]``, or None.
    """

    strategy: str
    spec: ScoreSpec
    radius: int
    image_size: tuple[int, int]
    per_image: int | None
    total: int | None
    class_weights: torch.Tensor | None = None

    @property
    def scope(self) -> str:
        return STRATEGIES[self.strategy][0]


@dataclass
class Picks:
    """Raw picks of a round in the order of docs/semantics.md (int64/float32 CPU tensors, length K).

    ``ys``/``xs`` are -1 for whole-image picks. ``predicted_counts`` is the (C,) int64
    pseudo-label histogram over every scored pixel, or None.
    """

    image_ids: torch.Tensor
    ys: torch.Tensor
    xs: torch.Tensor
    scores: torch.Tensor
    classes: torch.Tensor
    predicted_counts: torch.Tensor | None = None

    @staticmethod
    def empty() -> "Picks":
        e = torch.empty(0, dtype=torch.int64)
        return Picks(e, e.clone(), e.clone(), torch.empty(0, dtype=torch.float32), e.clone())


def max_picks_per_image(h: int, w: int, radius: int) -> int:
    """Centres pairwise more than 2r apart (Chebyshev): at most ceil(H/(2r+1))·ceil(W/(2r+1))."""
    k = 2 * radius + 1
    return -(-h // k) * -(-w // k)


def exact_means(scores: torch.Tensor) -> torch.Tensor:
    """Per-image means of float32 score maps, exact: the correctly rounded float64 of the
    true mean, whatever the device or the reduction order.

    A float reduction's result depends on its summation order (a GPU tree, a CPU loop), so
    two backends with identical score maps could rank near-tied images differently. Here each
    finite float32 is ±M·2^(E-150) with an integer M < 2^24: the M are summed exactly in
    int64 per exponent E (one index_add over 256 buckets on the scores' device; |sum| <
    2^24·H·W < 2^63), and the 256 bucket sums are combined as Python integers.

    Args:
        scores: (B, H, W) float32 (finite), any device.
    Returns:
        (B,) float64 CPU tensor.
    """
    b = scores.shape[0]
    n = scores[0].numel() if b else 0
    rows = mean_buckets(scores).tolist() if b and n else [[] for _ in range(b)]  # one device read
    return means_from_buckets(rows, n)


def mean_buckets(scores: torch.Tensor) -> torch.Tensor:
    """The device half of ``exact_means``: (B, 256) int64 exact sums of the mantissas per
    exponent, on the scores' device (nothing read back; a backend may read them together
    with its other per-batch words). ``scores``: (B, H, W) float32, H·W > 0."""
    b = scores.shape[0]
    flat = scores.reshape(b, -1)
    buckets = torch.zeros((b, 256), dtype=torch.int64, device=scores.device)
    for i in range(b):  # one image at a time: O(H·W) int64 temporaries, not O(B·H·W)
        bits = flat[i].to(torch.float32).contiguous().view(torch.int32)
        e = (bits >> 23) & 0xFF
        mant = (bits & 0x7FFFFF).to(torch.int64)
        mant = torch.where(e > 0, mant | 0x800000, mant)
        mant = torch.where(bits < 0, -mant, mant)
        e = torch.clamp(e, min=1).to(torch.int64)  # subnormals share the scale of E = 1
        buckets[i].index_add_(0, e, mant)
    return buckets


def means_from_buckets(rows: list[list[int]], n: int) -> torch.Tensor:
    """The host half of ``exact_means``: (B,) float64 CPU means from the B rows of
    ``mean_buckets`` (Python ints) of maps with ``n`` = H·W pixels (NaN when n = 0)."""
    from fractions import Fraction

    out = torch.empty(len(rows), dtype=torch.float64)
    if n == 0:
        return out.fill_(float("nan"))
    for i, row in enumerate(rows):
        total = sum(v << (k - 1) for k, v in enumerate(row) if v)  # units of 2^-149
        out[i] = float(Fraction(total, n << 149))
    return out


def image_picks(ids: list[torch.Tensor], means: list[torch.Tensor], whole: list[torch.Tensor],
                count: int, predicted_counts: torch.Tensor | None) -> Picks:
    """Picks of the ``image`` strategy from per-batch image ids, mean scores (``exact_means``,
    so that every backend ranks identical score maps identically) and whole-image flags (all
    (B,) CPU or device tensors): the ``count`` best images, ys = xs = classes = -1."""
    from ..reference import image_ranking

    if not ids:
        return Picks.empty()
    all_ids = torch.cat([i.cpu() for i in ids])
    all_means = torch.cat([m.cpu() for m in means])
    chosen = image_ranking(all_means, all_ids, count, torch.cat([w.cpu() for w in whole]))
    lookup = dict(zip(all_ids.tolist(), all_means.tolist()))
    m1 = torch.full_like(chosen, -1)
    sc = torch.tensor([lookup[i] for i in chosen.tolist()], dtype=torch.float32)
    return Picks(chosen, m1, m1.clone(), sc, m1.clone(), predicted_counts)


def greedy_bound(picks: int, radius: int) -> int:
    """How many of the best candidates (by the full order key) can hold the first ``picks``
    greedy picks: ``picks·(4r+1)²``.

    A pick blocks at most the (4r+1)² centres within Chebyshev distance 2r of it (itself
    included), so every candidate better than the k-th pick is one of the k picks or blocked
    by one of them. Per image (``ra``/``cbra``, quota q) only the best q·(4r+1)² candidates of
    the image can be picked; over the set (``da``/``cbda``) only the best K·(4r+1)² of all
    candidates (docs/semantics.md, "Pruning").
    """
    return int(picks) * (4 * int(radius) + 1) ** 2


@dataclass
class RoundCounters:
    """What one round did, for tests and benchmarks (host integers, filled in by the
    backend as it goes; device-side counts are read once, in ``finish``).

    Attributes:
        batches: ``add`` calls.
        scored: pixels scored.
        candidates: candidates the scoring pass appended (unblocked, beating the cut-off).
        greedy_in: candidates that entered the greedy (after pruning to the bound).
        greedy_bound: the sum over batches of what the bound allows into the greedy.
        host_reads: deliberate device-to-host reads made by the backend (``host_read``).
    """

    batches: int = 0
    scored: int = 0
    candidates: int = 0
    greedy_in: int = 0
    greedy_bound: int = 0
    host_reads: int = 0

    def host_read(self, t: torch.Tensor) -> list:
        """The one way a backend reads device values on the host: counted, then ``tolist``."""
        self.host_reads += 1
        return t.tolist()


class RoundAccumulator:
    """Consumes the batches of one round and returns its picks.

    ``add`` is called once per batch with already validated inputs: ``image_ids`` (B,)
    int64 CPU, distinct across the round; ``prior`` the earlier picks of these images
    (``cbda.state.PriorPicks``); then either ``logits`` (B, C, h, w) or ``scores`` (B, H, W)
    float32 with ``labels`` (B, H, W) int64 (labels may be None when no class weights apply).
    """

    #: filled in by backends that count (the fused GPU backends); None elsewhere
    counters: RoundCounters | None = None

    def add(self, image_ids, prior, logits=None, scores=None, labels=None) -> None:  # pragma: no cover - interface
        raise NotImplementedError

    def finish(self) -> Picks:  # pragma: no cover - interface
        raise NotImplementedError
