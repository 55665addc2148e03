"""How many images the GPU backends score per batch, and the re-batching of the caller's stream.

A model yields logits in batches sized for its own forward pass (2-8 images of a DeepLab at
1024×2048), which is far below what the selection kernels want: every backend batch costs a
host read and a few launches, and the greedy runs one program per image of the batch, so a
batch of 2 leaves an H100 nearly idle. The low-resolution logits themselves are small (C·h·w
values: 5 MB for a Cityscapes image in bfloat16), so the round collects the caller's batches
into backend batches sized from the device's free memory and splits oversized ones.

Nothing here changes a result: every backend gives the same picks for any batching of a round.
"""

from __future__ import annotations

import torch

__all__ = ["MAX_BATCH", "EXTRA_BYTES", "bytes_per_image", "auto_batch_size", "Rebatcher"]

#: upper limit of an automatic batch (a grid dimension of the CUDA kernels is 65535; past a few
#: hundred images nothing is gained and the O(B·H·W) candidate buffers only grow)
MAX_BATCH = 256
#: the extra device memory one backend batch may use at most (the round's O(K) buffers come on
#: top): the Cityscapes round target is < 2 GB extra in all (docs/architecture.md)
EXTRA_BYTES = 1536 * 2**20
#: device bytes per output pixel of a batch: candidate buffers (score, index, label, 16 B), their
#: sort (keys and permutation, 16 B), the blocked and greedy maps (2 B), status and slack
CANDIDATE_BYTES_PER_PIXEL = 40
#: extra per output pixel when the score maps are materialised (wide windows: ripu with r > 2,
#: ripu_pixel): scores 4 B, labels 8 B, window scratch 8 B
MAP_BYTES_PER_PIXEL = 20


def bytes_per_image(num_classes: int, low_size: tuple[int, int], out_size: tuple[int, int], itemsize: int,
                    maps: bool) -> int:
    """Device bytes one image of a backend batch needs: its logits copy (the batch is
    concatenated) plus the per-pixel buffers of scoring and selection.

    Args:
        num_classes: C. low_size: (h, w) of the logits. out_size: (H, W) of the labels.
        itemsize: bytes per logit (4 float32, 2 bfloat16/float16).
        maps: True when the score maps are materialised (wide windows).
    """
    h, w = low_size
    hh, ww = out_size
    per_pixel = CANDIDATE_BYTES_PER_PIXEL + (MAP_BYTES_PER_PIXEL if maps else 0)
    return int(num_classes) * int(h) * int(w) * int(itemsize) + per_pixel * int(hh) * int(ww)


def auto_batch_size(device: torch.device, per_image: int) -> int | None:
    """Images per backend batch on ``device``: as many as fit in half of the memory free to
    torch (free device memory plus torch's cached, unused blocks) and in ``EXTRA_BYTES``, at
    least 1 and at most ``MAX_BATCH``. None off CUDA (the batches are taken as they come)."""
    if device.type != "cuda":
        return None
    free, _ = torch.cuda.mem_get_info(device)
    cached = torch.cuda.memory_reserved(device) - torch.cuda.memory_allocated(device)
    budget = min((free + cached) // 2, EXTRA_BYTES)
    return max(1, min(MAX_BATCH, int(budget // max(1, per_image))))


class Rebatcher:
    """Turns a stream of (image_ids, logits) batches into batches of exactly ``size`` images
    (the last one smaller). Held logits stay on their device; a batch is concatenated only
    when it is handed on.

    ``push`` returns the batches that became complete; ``flush`` the rest.
    """

    def __init__(self, size: int):
        self.size = int(size)
        self.ids: list[torch.Tensor] = []
        self.logits: list[torch.Tensor] = []
        self.held = 0

    def push(self, ids: torch.Tensor, logits: torch.Tensor) -> list[tuple[torch.Tensor, torch.Tensor]]:
        """ids: (B,) int64 CPU; logits: (B, C, h, w). Returns complete (ids, logits) batches."""
        out = []
        start = 0
        b = int(ids.numel())
        while start < b:
            take = min(self.size - self.held, b - start)
            self.ids.append(ids[start : start + take])
            self.logits.append(logits[start : start + take])
            self.held += take
            start += take
            if self.held == self.size:
                out.append(self._join())
        return out

    def flush(self) -> list[tuple[torch.Tensor, torch.Tensor]]:
        return [self._join()] if self.held else []

    def _join(self) -> tuple[torch.Tensor, torch.Tensor]:
        ids = self.ids[0] if len(self.ids) == 1 else torch.cat(self.ids)
        x = self.logits[0] if len(self.logits) == 1 else torch.cat(self.logits)
        self.ids, self.logits, self.held = [], [], 0
        return ids, x
