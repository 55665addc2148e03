"""Reference selection: the argmax-and-block loop (RIPU's greedy, with our row-major tie
rule; docs/semantics.md, Order and Selection), over one image or a whole stack.

Blocking never crosses images, so running the loop over the stacked round (``da``) equals
the top-K of the union of the per-image greedy sequences; the fast backends rely on that
and are tested against this loop.
"""

from __future__ import annotations

import torch

__all__ = ["greedy_argmax", "select_regions", "image_ranking", "sort_picks"]


def greedy_argmax(
    scores: torch.Tensor, blocked: torch.Tensor, radius: int, limit: int
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """The greedy of RIPU's Alg. 2: take the best unblocked centre, block every centre within
    Chebyshev distance 2r of it (same image only), repeat ``limit`` times or until none is left.

    Exact ties go to the lowest flat index (torch.argmax returns the first maximum), which is
    the lowest global index when the stack is sorted by image id: the row-major tie rule of
    docs/semantics.md. It is not RIPU's: RIPU's two-stage max breaks exact ties in another
    order.

    Args:
        scores: (N, H, W) float32, finite.
        blocked: (N, H, W) bool, centres that may not be picked (earlier rounds).
        radius: r >= 0.
        limit: the most picks to make.
    Returns:
        (n, y, x) int64 tensors of the picks, in pick order.
    """
    work = scores.to(torch.float32).clone()
    work[blocked] = float("-inf")
    _, h, w = work.shape
    flat = work.view(-1)
    picks = []
    reach = 2 * radius
    for _ in range(int(limit)):
        i = int(torch.argmax(flat))
        if flat[i] == float("-inf"):
            break
        n, rem = divmod(i, h * w)
        y, x = divmod(rem, w)
        picks.append((n, y, x))
        work[n, max(0, y - reach): y + reach + 1, max(0, x - reach): x + reach + 1] = float("-inf")
    if not picks:
        e = torch.empty(0, dtype=torch.int64)
        return e, e.clone(), e.clone()
    t = torch.tensor(picks, dtype=torch.int64)
    return t[:, 0], t[:, 1], t[:, 2]


def sort_picks(scores: torch.Tensor, gidx: torch.Tensor) -> torch.Tensor:
    """Permutation ordering picks by (score desc, global index asc) — the order of docs/semantics.md.

    -0.0 and +0.0 compare equal, as in every backend.
    """
    by_index = torch.argsort(gidx, stable=True)
    by_score = torch.argsort(-scores[by_index], stable=True, descending=False)
    return by_index[by_score]


def select_regions(
    scores: torch.Tensor,
    labels: torch.Tensor,
    image_ids: torch.Tensor,
    blocked: torch.Tensor,
    radius: int,
    per_image: int | None,
    total: int | None,
) -> dict[str, torch.Tensor]:
    """Region picks of one round from fully materialised (weighted) scores.

    Exactly one of ``per_image`` (strategy ``ra``/``cbra``: that many greedy picks in every
    image) and ``total`` (``da``/``cbda``: the greedy over the whole stack, ``total`` picks)
    is given.

    Args:
        scores: (N, H, W) float32 weighted scores.
        labels: (N, H, W) int64 pseudo labels.
        image_ids: (N,) int64, distinct, any order.
        blocked: (N, H, W) bool.
    Returns:
        dict with ``image_ids, ys, xs, scores, classes`` in pick order.
    """
    n, h, w = scores.shape
    order = torch.argsort(image_ids)
    scores, labels, image_ids, blocked = scores[order], labels[order], image_ids[order], blocked[order]
    if per_image is not None:
        parts = [greedy_argmax(scores[i : i + 1], blocked[i : i + 1], radius, per_image) for i in range(n)]
        ns = torch.cat([torch.full_like(p[0], i) for i, p in enumerate(parts)]) if parts else torch.empty(0, dtype=torch.int64)
        ys = torch.cat([p[1] for p in parts]) if parts else torch.empty(0, dtype=torch.int64)
        xs = torch.cat([p[2] for p in parts]) if parts else torch.empty(0, dtype=torch.int64)
    else:
        ns, ys, xs = greedy_argmax(scores, blocked, radius, int(total))
    picked_scores = scores[ns, ys, xs]
    ids = image_ids[ns]
    perm = sort_picks(picked_scores, ids * (h * w) + ys * w + xs)
    return {
        "image_ids": ids[perm],
        "ys": ys[perm],
        "xs": xs[perm],
        "scores": picked_scores[perm].to(torch.float32),
        "classes": labels[ns, ys, xs][perm],
    }


def image_ranking(
    mean_scores: torch.Tensor, image_ids: torch.Tensor, count: int, excluded: torch.Tensor
) -> torch.Tensor:
    """Strategy ``image`` (paper Alg. 1): the ``count`` best images by mean score
    (ties: lower image id), skipping ``excluded`` (already fully labelled).

    Args:
        mean_scores: (N,) float32; image_ids: (N,) int64; excluded: (N,) bool.
    Returns:
        (k,) int64 image ids in pick order.
    """
    keep = ~excluded
    s, ids = mean_scores[keep], image_ids[keep]
    perm = sort_picks(s, ids)
    return ids[perm][: int(count)]
