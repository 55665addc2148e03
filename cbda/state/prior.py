"""Earlier picks of a batch of images, in the compact form the selection kernels read."""

from __future__ import annotations

from dataclasses import dataclass

import torch

__all__ = ["PriorPicks"]


@dataclass
class PriorPicks:
    """Region picks of earlier rounds for a batch of images, as CSR arrays in batch order.

    The picks of batch entry ``b`` are ``ys[offsets[b]:offsets[b+1]]`` (and ``xs``, ``radii``),
    sorted by ``(y, x)``. A new centre at Chebyshev distance ``<= radii[p] + r`` from pick ``p``
    would overlap it. ``whole_image[b]`` marks an image labelled whole already: every centre
    of it is blocked (its region list is then empty).

    Attributes:
        offsets: (B+1,) int64, ``offsets[0] == 0``, non-decreasing.
        ys, xs: (P,) int64, centres of the earlier region picks.
        radii: (P,) int64, radius of each earlier pick.
        whole_image: (B,) bool.
    """

    offsets: torch.Tensor
    ys: torch.Tensor
    xs: torch.Tensor
    radii: torch.Tensor
    whole_image: torch.Tensor

    @classmethod
    def empty(cls, batch_size: int, device: torch.device | str | None = None) -> "PriorPicks":
        """No earlier picks for ``batch_size`` images (the first round, or no state)."""
        z = torch.zeros(0, dtype=torch.int64, device=device)
        return cls(
            offsets=torch.zeros(int(batch_size) + 1, dtype=torch.int64, device=device),
            ys=z, xs=z.clone(), radii=z.clone(),
            whole_image=torch.zeros(int(batch_size), dtype=torch.bool, device=device),
        )

    @property
    def batch_size(self) -> int:
        return int(self.whole_image.numel())

    @property
    def num_picks(self) -> int:
        return int(self.ys.numel())

    def to(self, device: torch.device | str) -> "PriorPicks":
        """The same picks on ``device``."""
        return PriorPicks(*(t.to(device) for t in (self.offsets, self.ys, self.xs, self.radii, self.whole_image)))

    def blocked_masks(self, image_size: tuple[int, int], radius: int) -> torch.Tensor:
        """Dense form: (B, H, W) bool, True where a new pick of ``radius`` would overlap.

        The reference backend's input. Each earlier pick blocks the clipped square of
        half-width ``radii[p] + radius`` around it; built with a 2-D difference array so the
        cost is O(P + B·H·W), not O(P·window).
        """
        h, w = int(image_size[0]), int(image_size[1])
        dev = self.whole_image.device
        b = self.batch_size
        counts = (self.offsets[1:] - self.offsets[:-1]).to(dev)
        bi = torch.repeat_interleave(torch.arange(b, device=dev), counts)
        d = self.radii.to(dev) + int(radius)
        y0 = (self.ys - d).clamp(min=0)
        x0 = (self.xs - d).clamp(min=0)
        y1 = (self.ys + d + 1).clamp(max=h)
        x1 = (self.xs + d + 1).clamp(max=w)
        diff = torch.zeros((b, h + 1, w + 1), dtype=torch.int32, device=dev)
        one = torch.ones_like(bi, dtype=torch.int32)
        for yy, xx, sign in ((y0, x0, 1), (y0, x1, -1), (y1, x0, -1), (y1, x1, 1)):
            diff.index_put_((bi, yy, xx), one * sign, accumulate=True)
        covered = diff.cumsum(1).cumsum(2)[:, :h, :w] > 0
        return covered | self.whole_image.to(torch.bool).view(b, 1, 1)
