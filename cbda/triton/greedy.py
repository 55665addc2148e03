"""Exact per-image greedy blocking: a chunked scan of each image's sorted candidates.

The greedy sequence of an image (the argmax-and-block loop of docs/semantics.md) equals
scanning its unblocked centres in (score desc, index asc) order and keeping a centre iff no kept centre
lies within Chebyshev distance 2r. With a cut-off, the candidates above it give exactly the
prefix of that sequence above it, which is all a top-K merge needs.

Algorithm. The driver prunes the batch's candidates to the greedy bound first
(``cbda.triton.select``), then sorts the kept ones by (image, score desc, index asc) with two
stable device sorts; then one program per image walks its segment in chunks of CH:
  1. load the chunk's pixels and drop those already blocked in the image's bitmap (one
     gather from global memory per chunk, not per candidate);
  2. resolve the chunk's survivors in order inside registers: CH sequential steps, each an
     O(CH) vector test of "is a kept earlier candidate of this chunk within 2r";
  3. write the kept pixels, stamp their (4r+1)² boxes into the bitmap (row by row, in
     (CH, 16) slabs, so registers do not grow with r),
     barrier, next chunk; stop when the quota is met.
Cost per image: O(n_scanned·CH) register work and n_scanned/CH global round trips, where
n_scanned <= candidates of the image; independent of how smooth the score map is (chains
of decreasing scores that make "iterate local maxima" slow cost nothing extra). Programs
run in parallel over the batch's images. The bitmap is B·H·W bytes per batch.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from .score import device_guard

__all__ = ["greedy_scan", "STAMP_WIDTH"]

#: columns of a blocking box stamped per step (the slab is CH × STAMP_WIDTH lanes)
STAMP_WIDTH = 16


@triton.jit
def greedy_scan_kernel(
    cand_li, seg, out_pos, out_count, bitmap, H, W, HW, quota,
    R2: tl.constexpr, CH: tl.constexpr, DXB: tl.constexpr, SEG_OUT: tl.constexpr,
):
    b = tl.program_id(0)
    start = tl.load(seg + b)
    end = tl.load(seg + b + 1)
    if SEG_OUT:
        out_base = start
    else:
        out_base = b.to(tl.int64) * quota
    img = b.to(tl.int64) * HW
    offs = tl.arange(0, CH)
    SIDE: tl.constexpr = 2 * R2 + 1
    dxs = tl.arange(0, DXB)
    count = tl.zeros([], tl.int64)
    pos = start
    while (pos < end) & (count < quota):
        idx = pos + offs
        valid = idx < end
        li = tl.load(cand_li + idx, mask=valid, other=0)
        pix = li - img
        y = (pix // W).to(tl.int32)
        x = (pix - (pix // W) * W).to(tl.int32)
        alive = valid & (tl.load(bitmap + li, mask=valid, other=1) == 0)
        alive_i = alive.to(tl.int32)
        kept = tl.zeros([CH], tl.int32)
        # in-order resolution of the chunk: candidate jj is kept iff alive and no kept
        # earlier candidate of the chunk is within Chebyshev distance 2r
        # (a uniform branch skips the dead ones, which are most of a chunk on smooth maps)
        for jj in range(CH):
            sel = offs == jj
            aj = tl.sum(tl.where(sel, alive_i, 0), axis=0)
            if aj > 0:
                yj = tl.sum(tl.where(sel, y, 0), axis=0)
                xj = tl.sum(tl.where(sel, x, 0), axis=0)
                near = (tl.abs(y - yj) <= R2) & (tl.abs(x - xj) <= R2)
                hit = tl.sum(tl.where(near, kept, 0), axis=0)
                kept = tl.where(sel & (hit == 0), 1, kept)
        rank = tl.cumsum(kept, axis=0).to(tl.int64)
        take = (kept > 0) & (count + rank <= quota)
        tl.store(out_pos + out_base + count + rank - 1, idx, mask=take)
        ntake = tl.sum(take.to(tl.int64), axis=0)
        if ntake > 0:
            # stamp the kept centres' (4r+1)² boxes a (CH, DXB) slab at a time: registers stay
            # O(CH·DXB / threads) at any radius (a whole (CH, box) block spilled at r = 2)
            for dy in range(-R2, R2 + 1):
                by = y + dy
                row_ok = take & (by >= 0) & (by < H)
                row = img + by.to(tl.int64) * W
                for dx0 in range(0, SIDE, DXB):
                    dx = dx0 + dxs
                    bx = x[:, None] + (dx - R2)[None, :]
                    bm = row_ok[:, None] & (dx < SIDE)[None, :] & (bx >= 0) & (bx < W)
                    tl.store(bitmap + row[:, None] + bx, tl.full([CH, DXB], 1, tl.uint8), mask=bm)
        tl.debug_barrier()  # the next chunk's bitmap gather must see these stamps
        count += ntake
        pos += CH
    tl.store(out_count + b, count)



def greedy_scan(
    sorted_li: torch.Tensor,
    seg: torch.Tensor,
    batch: int,
    image_size: tuple[int, int],
    radius: int,
    quota: int,
    seg_out: bool,
    chunk: int = 32,
    num_warps: int = 1,
) -> torch.Tensor:
    """Greedy picks of every image of a batch.

    Args:
        sorted_li: (n,) int64 batch-local indices b·H·W + y·W + x, grouped by image and in
            (score desc, index asc) order inside each group.
        seg: (B+1,) int64 group offsets.
        quota: picks per image at most.
        seg_out: write image b's picks at seg[b] + k (output length n) instead of b·quota + k.
    Returns:
        (n or B·quota,) int64 positions into ``sorted_li`` of the picks, in greedy order per
        image; unused slots hold n (one past the end: the caller's padding entry).
    """
    h, w = image_size
    n = int(sorted_li.numel())
    dev = sorted_li.device
    size = n if seg_out else batch * quota
    out_pos = torch.full((max(size, 1),), n, dtype=torch.int64, device=dev)
    if batch == 0 or n == 0 or quota <= 0:
        return out_pos[:size]
    out_count = torch.zeros(batch, dtype=torch.int64, device=dev)
    bitmap = torch.zeros(batch * h * w, dtype=torch.uint8, device=dev)
    r2 = 2 * int(radius)
    dxb = min(STAMP_WIDTH, 1 << (2 * r2).bit_length())  # pow2 >= the box side 4r+1, capped
    with device_guard(dev):
        greedy_scan_kernel[(batch,)](
            sorted_li, seg, out_pos, out_count, bitmap, h, w, h * w, int(quota),
            R2=r2, CH=chunk, DXB=dxb, SEG_OUT=seg_out, num_warps=num_warps,
        )
    return out_pos[:size]
