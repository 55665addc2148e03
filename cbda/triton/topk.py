"""Keys and the streaming exact top-K buffer of the triton backend.

Order (docs/semantics.md): score descending, then global index ascending, with -0.0 == +0.0. A
32-bit score and a 33-bit+ global index do not fit one 64-bit key, so every ordering here
is two stable device sorts (torch.sort, a radix sort on CUDA): first by the index
ascending, then, stably, by the score's descending orderable bits. Both passes are O(n).

Streaming (``RoundBuffer``): picks of each batch are appended; when more than 2K have
accumulated the buffer is sorted and cut back to exactly K, and the cut-off (score and
global index of the K-th entry) is left in two device scalars that the kernels read, so no
host round trip is needed for it. Other valid cut-offs (the M-th best candidate of a batch,
``cbda.triton.select``) are offered with ``raise_cutoff``; the better one stays, on the
device. Entries with score -inf are padding (the scores themselves are finite) and sort
after every real entry.
"""

from __future__ import annotations

import torch

__all__ = ["desc_score_key", "order_desc", "RoundBuffer"]

_M32 = 0xFFFFFFFF


def desc_score_key(scores: torch.Tensor) -> torch.Tensor:
    """int64 in [0, 2^32): ascending key == descending float32 score; -0.0 and +0.0 map to
    the same key (the +0.0 canonicalises -0.0)."""
    s = scores.to(torch.float32) + 0.0
    u = s.view(torch.int32).to(torch.int64) & _M32
    asc = torch.where(u >= 2**31, _M32 - u, u + 2**31)
    return _M32 - asc


def order_desc(scores: torch.Tensor, gidx: torch.Tensor) -> torch.Tensor:
    """Permutation sorting by (score desc, gidx asc)."""
    p1 = torch.sort(gidx, stable=True).indices
    p2 = torch.sort(desc_score_key(scores[p1]), stable=True).indices
    return p1[p2]


class RoundBuffer:
    """The round's picks so far (device tensors): score f32, global index int64, label int32.

    ``limit`` = K for global selection (trimmed past 2K), None for per-image (no trim).
    """

    def __init__(self, device: torch.device, limit: int | None):
        self.device = device
        self.limit = limit
        self.parts: list[tuple[torch.Tensor, torch.Tensor, torch.Tensor]] = []
        self.size = 0  # host-side upper bound (padding included)
        self.cut_s = torch.full((1,), float("-inf"), dtype=torch.float32, device=device)
        self.cut_g = torch.zeros(1, dtype=torch.int64, device=device)

    @property
    def cutoff(self) -> tuple[torch.Tensor, torch.Tensor]:
        return self.cut_s, self.cut_g

    def append(self, score: torch.Tensor, gidx: torch.Tensor, label: torch.Tensor) -> None:
        if score.numel() == 0:
            return
        self.parts.append((score, gidx, label))
        self.size += int(score.numel())
        if self.limit is not None and self.size > 2 * self.limit:
            self.trim()

    def merged(self) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        if not self.parts:
            e = torch.empty(0, dtype=torch.int64, device=self.device)
            return torch.empty(0, dtype=torch.float32, device=self.device), e, e.to(torch.int32)
        if len(self.parts) == 1:
            return self.parts[0]
        return tuple(torch.cat([p[f] for p in self.parts]) for f in range(3))

    def trim(self) -> None:
        """Sort, keep exactly K, raise the cut-off to the K-th key (on the device)."""
        k = self.limit
        s, g, l = self.merged()
        perm = order_desc(s, g)[:k]
        s, g, l = s[perm], g[perm], l[perm]
        self.parts = [(s, g, l)]
        self.size = int(s.numel())
        if k > 0 and self.size >= k:
            # a padding K-th entry (-inf) never beats the current cut-off, as it should not
            self.raise_cutoff(s[k - 1 : k], g[k - 1 : k])

    def raise_cutoff(self, score: torch.Tensor, gidx: torch.Tensor) -> None:
        """Offer a valid cut-off ((1,) float32 score, (1,) int64 global index on the device:
        no final pick is worse than it); it replaces the current one where it is better
        (higher in the order), by device ops only."""
        better = (score > self.cut_s) | ((score == self.cut_s) & (gidx < self.cut_g))
        self.cut_s = torch.where(better, score, self.cut_s)
        self.cut_g = torch.where(better, gidx, self.cut_g)

    def result(self) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Real entries in final order, at most K of them."""
        s, g, l = self.merged()
        perm = order_desc(s, g)
        if self.limit is not None:
            perm = perm[: self.limit]
        s, g, l = s[perm], g[perm], l[perm]
        real = s > float("-inf")
        return s[real], g[real], l[real]
