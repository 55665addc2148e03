"""Window statistics of wide windows as running counts down image columns (no register halo).

The fused kernel (``score``) keeps a (2R+1)² window block in registers, which costs
O((2R+1)²) registers per pixel: fine up to R = 2, a spill past it. For R > 2 (and the 65×65
window of ``ripu_pixel``) the fused kernel writes the per-pixel normalised entropy and pseudo
labels instead, and this kernel turns them into scores.

Tiling. One program owns a strip of RS rows × TW columns of one image. It keeps, per column
of the strip, the vertical running sum over the window's rows of

- the row's horizontal per-class label counts, a (C_BINS, TW) int32 block (exact integers),
- the row's horizontal entropy sums, a (TW,) float64 vector (float64 so that adding the
  entering row and subtracting the leaving one does not drift over a strip),

so each output row costs two horizontal row sums (the entering and the leaving row: 2·(2R+1)
loads of TW labels and entropies, L1/L2 hits) and one O(C_BINS·TW) impurity evaluation,
whatever R is. Registers: two (C_BINS, TW) int32 blocks and a few (TW,) vectors, independent
of R, so no radius spills. Memory traffic: the two maps are read about 2·(2R+1)/RS·… times
from cache and once from DRAM, plus one write of the scores.

Numerics follow the reference: q = count / n in float64 rounded to float32 (the reference
divides float64 integral-image sums), the window mean of the entropy from a float64 sum.
"""

from __future__ import annotations

import math

import torch
import triton
import triton.language as tl

__all__ = ["window_scores", "ROW_STRIP", "COL_TILE"]

#: rows per program (each strip re-reads 2R rows of halo) and columns per program
ROW_STRIP = 64
COL_TILE = 64


@triton.jit
def _row_sums(ent, lab, row_base, xs, W, cls, R: tl.constexpr, TW: tl.constexpr, C_BINS: tl.constexpr,
              MEAN_U: tl.constexpr):
    """Horizontal (2R+1) sums at one row: per-class label counts (C_BINS, TW) int32 and,
    when MEAN_U, the entropy sum (TW,) float64. ``row_base`` is the row's flat offset."""
    counts = tl.zeros([C_BINS, TW], tl.int32)
    esum = tl.zeros([TW], tl.float64)
    for d in range(2 * R + 1):
        xx = xs + (d - R)
        m = (xx >= 0) & (xx < W)
        lv = tl.load(lab + row_base + xx, mask=m, other=-1)
        counts += (lv[None, :] == cls[:, None]).to(tl.int32)
        if MEAN_U:
            esum += tl.load(ent + row_base + xx, mask=m, other=0.0).to(tl.float64)
    return counts, esum


@triton.jit
def window_score_kernel(
    ent, lab, out, H, W, ln_c, tiles_w, strips,
    R: tl.constexpr, TW: tl.constexpr, RS: tl.constexpr, C_BINS: tl.constexpr, MEAN_U: tl.constexpr,
):
    """out[b, y, x] = P(x) · U(x) (MEAN_U: U = window mean of ``ent``) or P(x) · ent(x).

    ent: (B, H, W) float32; lab: (B, H, W) int32 in [0, C); out: (B, H, W) float32.
    """
    pid = tl.program_id(0)
    per_img = tiles_w * strips
    b = pid // per_img
    rem = pid % per_img
    y_lo = (rem // tiles_w) * RS
    xs = (rem % tiles_w) * TW + tl.arange(0, TW)
    xm = xs < W
    cls = tl.arange(0, C_BINS)
    img = b.to(tl.int64) * H * W
    # in-image window width per column (the window is clipped to the image)
    nx = tl.minimum(xs + R, W - 1) - tl.maximum(xs - R, 0) + 1
    # prime with the window of row y_lo - 1, rows [y_lo - 1 - R, y_lo - 1 + R] clipped to the
    # image: the first step then adds row y_lo + R and drops row y_lo - 1 - R like every other
    V = tl.zeros([C_BINS, TW], tl.int32)
    S = tl.zeros([TW], tl.float64)
    for yy in range(tl.maximum(y_lo - R - 1, 0), tl.minimum(y_lo + R, H)):
        c, e = _row_sums(ent, lab, img + yy * W, xs, W, cls, R, TW, C_BINS, MEAN_U)
        V += c
        S += e
    for y in range(y_lo, tl.minimum(y_lo + RS, H)):
        y_in = y + R
        if y_in < H:
            c, e = _row_sums(ent, lab, img + y_in * W, xs, W, cls, R, TW, C_BINS, MEAN_U)
            V += c
            S += e
        y_out = y - R - 1
        if y_out >= 0:
            c, e = _row_sums(ent, lab, img + y_out * W, xs, W, cls, R, TW, C_BINS, MEAN_U)
            V -= c
            S -= e
        ny = tl.minimum(y + R, H - 1) - tl.maximum(y - R, 0) + 1
        n = tl.maximum(ny * nx, 1).to(tl.float64)
        q = (V.to(tl.float64) / n[None, :]).to(tl.float32)
        imp = -tl.sum(q * tl.log(q + 1e-6), axis=0) / ln_c
        row = img + y * W + xs  # y·W < H·W < 2^31 (checked on the host)
        if MEAN_U:
            u = (S / n).to(tl.float32)
        else:
            u = tl.load(ent + row, mask=xm, other=0.0)
        tl.store(out + row, imp * u, mask=xm)


def window_scores(ent: torch.Tensor, labels: torch.Tensor, num_classes: int, radius: int, mean_u: bool,
                  num_warps: int = 4) -> torch.Tensor:
    """Window scores from per-pixel maps.

    Args:
        ent: (B, H, W) float32 per-pixel entropy (normalised for ``ripu``, raw for
            ``ripu_pixel``).
        labels: (B, H, W) integer pseudo labels in [0, num_classes).
        radius: window radius (the (2r+1)² square, clipped to the image).
        mean_u: True: impurity × window mean of ``ent`` (``ripu``); False: impurity × ``ent``
            at the centre (``ripu_pixel``).
    Returns:
        (B, H, W) float32 scores on ``ent``'s device.
    """
    b, H, W = ent.shape
    out = torch.empty_like(ent, dtype=torch.float32)
    if b == 0:
        return out
    ent = ent.to(torch.float32).contiguous()
    lab = labels.to(torch.int32).contiguous()
    tiles_w = triton.cdiv(W, COL_TILE)
    strips = triton.cdiv(H, ROW_STRIP)
    c_bins = 1 << max(1, int(num_classes) - 1).bit_length()
    window_score_kernel[(b * tiles_w * strips,)](
        ent, lab, out, H, W, math.log(num_classes), tiles_w, strips,
        R=int(radius), TW=COL_TILE, RS=ROW_STRIP, C_BINS=c_bins, MEAN_U=bool(mean_u), num_warps=num_warps,
    )
    return out
