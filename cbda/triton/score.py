"""Fused scoring: logits at their own resolution -> scores, pseudo labels, candidates.

Tiling. One program owns an HB×WB block of output pixels (a 1-D range of HB·WB lanes,
row-major; 16×32 at r = 1, four pixels per thread at 4 warps). With a window radius R the
block's outer R rows/columns are halo: the program computes the per-pixel statistics for
the whole block, parks them in a private scratch slot in global memory, synchronises its
threads (``debug_barrier``) and then reads the (2R+1)² shifted copies back for the
(HB-2R)×(WB-2R) interior, which it owns (1.22 computed pixels per owned one at r = 1). The
logits are read at their own resolution (bilinear, align_corners=True, inside the kernel),
so the halo's extra reads hit L1/L2 and DRAM traffic stays about one read of the logits.
The grid is persistent (a fixed number of programs stepping over the tiles), so the
scratch is O(programs · HB · WB), independent of the batch.

Per pixel (C <= 32, the class loops unrolled with C a compile-time constant): the four tap
offsets (int32, inside one image) and the four bilinear weights once; per class four
loads, one multiply and three FMAs for the upsampled logit, which stays in registers; the
max; one exp2 per class for the denominator; the argmax (lowest class on ties); one
reciprocal; one lg2 per class for -Σ p ln(p + 1e-6). Counted on the sm_90 SASS at C = 19,
r = 1 (round mode: weights, blocked map, cut-off, histogram, candidates): about 900
(float32) / 995 (bfloat16) executed instructions per owned pixel, from about 4,700 / 4,900.
C > 32 loops over the classes instead and reads the logits once per pass (max,
denominator, entropy). Everything is float32 whatever the logits' dtype.

Window statistics at r = 1 (C <= 32): one int64 scratch word per pixel packs its
normalised entropy and its pseudo label one-hot; the 3×3 counts come bit-sliced from a
carry-save adder tree and popc (``_window_bits``), the impurity from a table of the
reference's per-class terms by window size. r = 2 (or C > 32) keeps the window's labels in
registers and counts per class.

Outputs (all optional, selected by constexpr flags): the score/label maps (``cbda.score``,
the ``image`` strategy and the two-pass ``ripu_pixel``), the pseudo-label histogram (one
vector atomic per tile) and the candidates: interior pixels that are not blocked by earlier
rounds and beat the cut-off (score, then global index), compacted inside the program with
one atomic reservation per tile and a prefix sum for the slots. NaN/+inf logits and pixels
without a finite class make the softmax denominator NaN; the program ORs that over its
tiles and sets the flag word once.

Offsets are 64-bit wherever a batch or image index multiplies (B·H·W can pass 2^31); within
one image H·W and the logits' C·h·w extent must stay below 2^31 (checked on the host).
"""

from __future__ import annotations

import contextlib
import math
import os
import struct

import numpy as np
import torch
import triton
import triton.language as tl

from ..scores import LOG_EPS, RIPU_PIXEL_RADIUS, mix32

__all__ = ["HEUR_CODES", "MAX_FUSED_RADIUS", "run_fused", "run_emit", "score_maps", "interpreting", "device_guard",
           "NonFiniteFlag", "raise_if_bad"]

#: heuristic -> constexpr code of the fused kernel; PIXEL_STATS writes the unnormalised
#: entropy as the "score" (first pass of ripu_pixel)
HEUR_CODES = {"ripu": 0, "entropy": 1, "margin": 2, "least_confidence": 3, "random": 4}
PIXEL_STATS = 5
#: the largest window radius the fused kernel computes with its register halo; past it the
#: (2R+1)² window block would spill, and ``cbda.triton.window`` takes over
MAX_FUSED_RADIUS = 2


def interpreting() -> bool:
    return os.environ.get("TRITON_INTERPRET") == "1"


def device_guard(device: torch.device):
    """Make ``device`` the current CUDA device for a launch (a no-op off CUDA).

    Triton launches on the current device with its current stream; tensors on ``cuda:1``
    while ``cuda:0`` is current would be read through the wrong context (an illegal memory
    access). Every launch of this package goes through this guard.
    """
    return torch.cuda.device(device) if device.type == "cuda" else contextlib.nullcontext()


NONFINITE_MESSAGE = (
    "logits: contains NaN or +inf values, or a pixel whose every class is -inf "
    "(-inf alone is accepted: a masked class with probability 0)"
)


class NonFiniteFlag:
    """An int64 device word the fused kernel sets to 1 when a logit it reads is NaN or +inf
    or a pixel has no finite class; read once per batch together with the candidate count
    (``status[0]`` = count, ``status[1]`` = flag), so the check costs no extra pass."""

    def __init__(self, device: torch.device):
        self.status = torch.zeros(2, dtype=torch.int64, device=device)

    @property
    def count(self) -> torch.Tensor:
        return self.status[0:1]

    @property
    def flag(self) -> torch.Tensor:
        return self.status[1:2]


def raise_if_bad(flag_value: int) -> None:
    from ..errors import InputError

    if flag_value:
        raise InputError(NONFINITE_MESSAGE)


@triton.jit
def _mix32(h):
    # murmur3 finaliser on uint32 lanes (products wrap mod 2^32, shifts are logical)
    h = h ^ (h >> 16)
    h = (h * 0x85EBCA6B).to(tl.uint32)
    h = h ^ (h >> 13)
    h = (h * 0xC2B2AE35).to(tl.uint32)
    h = h ^ (h >> 16)
    return h


#: C up to this keeps a pixel's C upsampled logits in registers (the class loops are unrolled
#: over a tuple): one read of the logits and one exponential per class and pixel. Larger C
#: loops over the classes and reads the logits once per pass (three passes).
REG_CLASSES = tl.constexpr(32)

LOG2E = tl.constexpr(1.4426950408889634)
LN2 = tl.constexpr(0.6931471805599453)

#: ptxas' register ceiling for the fused kernel (PTX ``.maxnreg``). Without one, ptxas at
#: 128 threads sometimes squeezes a variant to an occupancy step (80 or 168 registers) and
#: spills 12-16 bytes (r = 1 at C = 5 in bf16/fp16 map mode on sm_90); with it every variant
#: of the compile grid fits without spills, below the 255 cap. Set for windows (r > 0) only:
#: the r = 0 variants fit without it and would otherwise grow to the ceiling
FUSED_MAXNREG = 240

#: lg2.approx on the GPU; the interpreter (numpy) cannot run inline PTX. Triton chooses the
#: interpreter when the kernels are defined, so this is read at the same moment.
FAST_LOG = tl.constexpr(not interpreting())


@triton.jit
def _log2(x, FAST: tl.constexpr):
    """log2(x) for x >= 1e-6 (never a denormal): the SFU's lg2.approx.ftz, one instruction with
    an absolute error below 2^-22 (tl.log is libdevice's ~20-instruction polynomial)."""
    if FAST:
        return tl.inline_asm_elementwise("lg2.approx.ftz.f32 $0, $1;", "=r,r", [x], dtype=tl.float32,
                                         is_pure=True, pack=1)
    else:
        return tl.log2(x)


@triton.jit
def _axis_taps(Y, n_out, n_in, scale, stride, UPSAMPLE: tl.constexpr):
    """Along one axis, for output coordinates Y: the element offsets of the two source taps
    (int32, inside one image) and their weights (w0, w1), bilinear with align_corners=True.

    Coordinates are clamped into the image, so lanes outside it read valid memory and no
    load needs a mask. A tap of weight 0 would meet a masked class as 0·-inf = NaN; such a
    pixel reads its other tap twice at weights ½, ½ instead (a·½ + a·½ = a exactly, -inf
    stays -inf), so every weight is positive and a NaN or +inf tap always reaches the
    interpolated value (where the flag sees it, through the softmax denominator)."""
    if UPSAMPLE:
        sy = scale * Y.to(tl.float32)
        y0 = tl.minimum(tl.maximum(sy.to(tl.int32), 0), n_in - 1)
        y1 = tl.minimum(y0 + 1, n_in - 1)
        ly = tl.minimum(tl.maximum(sy - y0.to(tl.float32), 0.0), 1.0)
        lo = ly == 0.0
        hi = ly == 1.0
        y1 = tl.where(lo, y0, y1)
        y0 = tl.where(hi, y1, y0)
        ly = tl.where(lo | hi, 0.5, ly)
        return y0 * stride, y1 * stride, 1.0 - ly, ly
    else:
        y = tl.minimum(tl.maximum(Y, 0), n_out - 1) * stride
        return y, y, tl.full(Y.shape, 1.0, tl.float32), tl.zeros(Y.shape, tl.float32)


@triton.jit
def _logit(p, o00, o01, o10, o11, w00, w01, w10, w11, UPSAMPLE: tl.constexpr):
    """One class plane ``p`` of the (upsampled) logits at the block's pixels, float32."""
    if UPSAMPLE:
        v00 = tl.load(p + o00).to(tl.float32)
        v01 = tl.load(p + o01).to(tl.float32)
        v10 = tl.load(p + o10).to(tl.float32)
        v11 = tl.load(p + o11).to(tl.float32)
        # four products with the per-pixel tap weights (one multiply, three FMAs); PyTorch
        # blends along x first and then along y, the same value to a few ulp
        return v00 * w00 + v01 * w01 + v10 * w10 + v11 * w11
    else:
        return tl.load(p + o00).to(tl.float32)


@triton.jit
def _stats_unrolled(base, s_c, o00, o01, o10, o11, w00, w01, w10, w11, C: tl.constexpr,
                    NEED_ENT: tl.constexpr, NEED_M2: tl.constexpr, UPSAMPLE: tl.constexpr):
    """Per pixel: max, second max (NEED_M2), argmax (lowest class on ties), the softmax
    denominator Σ exp(v - max), its reciprocal and Σ e·log2(p + 1e-6) (NEED_ENT), from one
    read of the logits: the C values stay in registers between the three unrolled passes."""
    vals = ()
    mx = tl.full(o00.shape, float("-inf"), tl.float32)
    m2 = mx
    # the argmax is carried as a float (one select per class; an int select chain is turned
    # into a packed bit mask by LLVM, two logic ops per class)
    labf = tl.zeros(o00.shape, tl.float32)
    for c in tl.static_range(C):
        v = _logit(base + c * s_c, o00, o01, o10, o11, w00, w01, w10, w11, UPSAMPLE)
        vals = vals + (v,)
        gt = v > mx
        if NEED_M2:
            m2 = tl.where(gt, mx, tl.maximum(m2, v))
        labf = tl.where(gt, float(c), labf)
        mx = tl.maximum(mx, v)
    lab = labf.to(tl.int32)
    # exp(v - max) as exp2(v·log2e - max·log2e): one FMA and one SFU op; -inf (a masked
    # class) gives exactly 0; NaN, +inf or a pixel with no finite class give a NaN sum.
    # The argmax is the lowest class equal to the max (classes visited from the top down).
    ml = mx * LOG2E
    es = ()
    den = tl.zeros(o00.shape, tl.float32)
    for cd in tl.static_range(C - 1, -1, -1):
        e = tl.exp2(vals[cd] * LOG2E - ml)
        es = (e,) + es
        den += e
    inv = 1.0 / den
    acc = tl.zeros(o00.shape, tl.float32)
    if NEED_ENT:
        for c in tl.static_range(C):
            acc += es[c] * _log2(es[c] * inv + 1e-6, FAST_LOG)
    return mx, m2, lab, den, inv, acc


@triton.jit
def _stats_looped(base, s_c, o00, o01, o10, o11, w00, w01, w10, w11, C: tl.constexpr,
                  NEED_ENT: tl.constexpr, NEED_M2: tl.constexpr, UPSAMPLE: tl.constexpr):
    """``_stats_unrolled`` for C > REG_CLASSES: loops over the classes, reading the logits
    once per pass (max, denominator, entropy) instead of holding them in registers."""
    mx = tl.full(o00.shape, float("-inf"), tl.float32)
    m2 = mx
    lab = tl.zeros(o00.shape, tl.int32)
    for c in range(C):
        v = _logit(base + c * s_c, o00, o01, o10, o11, w00, w01, w10, w11, UPSAMPLE)
        gt = v > mx
        if NEED_M2:
            m2 = tl.where(gt, mx, tl.maximum(m2, v))
        lab = tl.where(gt, c, lab)
        mx = tl.maximum(mx, v)
    ml = mx * LOG2E
    den = tl.zeros(o00.shape, tl.float32)
    for c in range(C):
        v = _logit(base + c * s_c, o00, o01, o10, o11, w00, w01, w10, w11, UPSAMPLE)
        den += tl.exp2(v * LOG2E - ml)
    inv = 1.0 / den
    acc = tl.zeros(o00.shape, tl.float32)
    if NEED_ENT:
        for c in range(C):
            v = _logit(base + c * s_c, o00, o01, o10, o11, w00, w01, w10, w11, UPSAMPLE)
            e = tl.exp2(v * LOG2E - ml)
            acc += e * _log2(e * inv + 1e-6, FAST_LOG)
    return mx, m2, lab, den, inv, acc


@triton.jit
def _popc(x, FAST: tl.constexpr):
    """Set bits of int32 lanes: the POPC instruction on the GPU, SWAR arithmetic in the
    interpreter (which cannot run inline PTX)."""
    if FAST:
        return tl.inline_asm_elementwise("popc.b32 $0, $1;", "=r,r", [x], dtype=tl.int32, is_pure=True, pack=1)
    else:
        u = x.to(tl.uint32, bitcast=True)
        u = u - ((u >> 1) & 0x55555555)
        u = (u & 0x33333333) + ((u >> 2) & 0x33333333)
        u = (u + (u >> 4)) & 0x0F0F0F0F
        u = (u * 0x01010101).to(tl.uint32) >> 24
        return u.to(tl.int32)


@triton.jit
def _maj(a, b, c):
    return (a & b) | (c & (a ^ b))


@triton.jit
def _window_bits(pw, tab, WB: tl.constexpr):
    """Window sum of the normalised entropy and -Σ_c q_c ln(q_c + 1e-6) over the 3×3 window,
    without a loop over the classes.

    Each scratch word (int64) packs a pixel's normalised entropy (float32 bits, high half)
    and its pseudo label one-hot (bit c of the low half; 0 outside the image), so C <= 32
    and one load per window entry. The nine one-hot words are added bit-sliced (a
    carry-save tree of full adders: bit c of (b3 b2 b1 b0) is the window count n_c of class
    c, 0..9); the classes with count k are popc(match_k), and the impurity is
    -Σ_k popc(match_k)·T[k] with ``tab`` = T[n, :], T[n, k] = (k/n)·ln(k/n + 1e-6) in float32
    as the reference computes each class term. About 45 integer ops and 9 table reads per
    pixel instead of C·9 compares and C logs. ``pw``: pointers to the window centres' words
    (row pitch WB)."""
    ws = ()
    esum = tl.zeros(pw.shape, tl.float32)
    for d in tl.static_range(9):
        wd = tl.load(pw + ((d // 3 - 1) * WB + (d % 3 - 1)), cache_modifier=".cg")
        esum += (wd >> 32).to(tl.int32).to(tl.float32, bitcast=True)
        ws = ws + (wd.to(tl.int32),)
    s1 = ws[0] ^ ws[1] ^ ws[2]
    c1 = _maj(ws[0], ws[1], ws[2])
    s2 = ws[3] ^ ws[4] ^ ws[5]
    c2 = _maj(ws[3], ws[4], ws[5])
    s3 = ws[6] ^ ws[7] ^ ws[8]
    c3 = _maj(ws[6], ws[7], ws[8])
    b0 = s1 ^ s2 ^ s3
    c4 = _maj(s1, s2, s3)
    s5 = c1 ^ c2 ^ c3
    c5 = _maj(c1, c2, c3)
    b1 = s5 ^ c4
    c6 = s5 & c4
    b2 = c5 ^ c6
    b3 = c5 & c6
    # counts are at most 9: b3 (8 or 9) excludes b2 and b1
    acc = _popc(b0 & ~(b1 | b2 | b3), FAST_LOG).to(tl.float32) * tl.load(tab + 1)
    acc += _popc(b1 & ~(b0 | b2), FAST_LOG).to(tl.float32) * tl.load(tab + 2)
    acc += _popc(b1 & b0 & ~b2, FAST_LOG).to(tl.float32) * tl.load(tab + 3)
    acc += _popc(b2 & ~(b1 | b0), FAST_LOG).to(tl.float32) * tl.load(tab + 4)
    acc += _popc(b2 & b0 & ~b1, FAST_LOG).to(tl.float32) * tl.load(tab + 5)
    acc += _popc(b2 & b1 & ~b0, FAST_LOG).to(tl.float32) * tl.load(tab + 6)
    acc += _popc(b2 & b1 & b0, FAST_LOG).to(tl.float32) * tl.load(tab + 7)
    acc += _popc(b3 & ~b0, FAST_LOG).to(tl.float32) * tl.load(tab + 8)
    acc += _popc(b3 & b0, FAST_LOG).to(tl.float32) * tl.load(tab + 9)
    return esum, -acc


@triton.jit
def fused_score_kernel(
    logits, s_b, s_c, s_h, s_w,
    h, w, H, W, scale_h, scale_w, ln_c,
    image_ids, seed_mix,
    weights, blocked, cut_s, cut_g,
    score_out, label_out,
    cand_score, cand_li, cand_label, cand_count,
    hist, bad_flag,
    scratch_e, scratch_l, imp_table,
    ntiles, tiles_w, tiles_per_img, nprog,
    C: tl.constexpr,
    HEUR: tl.constexpr, R: tl.constexpr, HB: tl.constexpr, WB: tl.constexpr, NW: tl.constexpr,
    C_BINS: tl.constexpr, UPSAMPLE: tl.constexpr, HAS_W: tl.constexpr, HAS_BLOCKED: tl.constexpr,
    WRITE_MAPS: tl.constexpr, EMIT: tl.constexpr, HIST: tl.constexpr,
):
    pid = tl.program_id(0)
    TH: tl.constexpr = HB - 2 * R
    TW: tl.constexpr = WB - 2 * R
    NEED_ENT: tl.constexpr = HEUR == 0 or HEUR == 1 or HEUR == 5
    # the 3×3 window of ripu at r = 1 counts labels bit-sliced (one-hot words, C <= 32)
    ONEHOT: tl.constexpr = R == 1 and C <= 32
    k = tl.arange(0, HB * WB)
    i = k // WB
    j = k % WB
    slot = pid.to(tl.int64) * (HB * WB)
    bad_any = k < 0
    # (tile walks that replace the two divisions by carries save ~10 instructions per pixel
    # but pushed ptxas past its 168-register target into 16-byte spills in the C = 5 and r = 2
    # round variants)
    for t in range(pid, ntiles, nprog):
        b = t // tiles_per_img
        rem = t % tiles_per_img
        Y = (rem // tiles_w) * TH - R + i
        X = (rem % tiles_w) * TW - R + j
        inimg = (Y >= 0) & (Y < H) & (X >= 0) & (X < W)
        interior = inimg & (i >= R) & (i < R + TH) & (j >= R) & (j < R + TW)
        # -- taps: offsets inside the image (int32) and weights, once per pixel ----------------
        oy0, oy1, wy0, wy1 = _axis_taps(Y, H, h, scale_h, s_h, UPSAMPLE)
        ox0, ox1, wx0, wx1 = _axis_taps(X, W, w, scale_w, s_w, UPSAMPLE)
        base = logits + b.to(tl.int64) * s_b
        if C <= REG_CLASSES:
            mx, m2, lab, den, inv, acc = _stats_unrolled(base, s_c, oy0 + ox0, oy0 + ox1, oy1 + ox0, oy1 + ox1,
                                                         wy0 * wx0, wy0 * wx1, wy1 * wx0, wy1 * wx1, C, NEED_ENT,
                                                         HEUR == 2, UPSAMPLE)
        else:
            mx, m2, lab, den, inv, acc = _stats_looped(base, s_c, oy0 + ox0, oy0 + ox1, oy1 + ox0, oy1 + ox1,
                                                       wy0 * wx0, wy0 * wx1, wy1 * wx0, wy1 * wx1, C, NEED_ENT,
                                                       HEUR == 2, UPSAMPLE)
        # NaN/+inf logits or a pixel with no finite class (the reference gives NaN there): the
        # denominator is NaN exactly then; gathered over the tiles, reduced once at the end
        bad_any = bad_any | (inimg & (den != den))
        # -- per-pixel score ---------------------------------------------------------------
        if NEED_ENT:
            ent = acc * (-LN2) * inv  # -Σ p ln(p + 1e-6) with p = e·inv
            if HEUR == 5:
                score = ent
            else:
                score = ent / ln_c
        elif HEUR == 2:
            score = 1.0 - (inv - tl.exp(m2 - mx) * inv)
        elif HEUR == 3:
            score = 1.0 - inv
        else:
            iid = tl.load(image_ids + b)
            # int arguments may arrive as constexpr (Triton specialises some values), so
            # the casts act on tensors only
            hh = _mix32(((iid >> 32) ^ seed_mix).to(tl.uint32))
            hh = _mix32((iid & 0xFFFFFFFF).to(tl.uint32) ^ hh)
            pix = (Y * W + X).to(tl.uint32)
            hh = _mix32(pix ^ hh)
            score = (hh >> 8).to(tl.float32) * (1.0 / 16777216.0)
        # -- window statistics of the ripu score: scratch, barrier, shifted reads -------------
        if HEUR == 0 and R > 0:
            if ONEHOT:
                # one int64 word per pixel: entropy bits (high half), label one-hot (low half)
                eb = tl.where(inimg, score, 0.0).to(tl.int32, bitcast=True).to(tl.int64)
                mb = tl.where(inimg, 1 << lab, 0).to(tl.int64) & 0xFFFFFFFF
                tl.store(scratch_e.to(tl.pointer_type(tl.int64)) + slot + k, (eb << 32) | mb)
            else:
                tl.store(scratch_e + slot + k, tl.where(inimg, score, 0.0))
                tl.store(scratch_l + slot + k, tl.where(inimg, lab, -1))
            tl.debug_barrier()
            # in-image window size n(x), the clipped (2R+1)^2 square
            ny = tl.minimum(Y + R, H - 1) - tl.maximum(Y - R, 0) + 1
            nx = tl.minimum(X + R, W - 1) - tl.maximum(X - R, 0) + 1
            n = tl.maximum(ny * nx, 1).to(tl.float32)  # 1 on masked lanes
            if ONEHOT:
                # lanes outside the owned block read an owned lane's window (their results are
                # discarded), so the shifted reads stay inside the slot and need no mask
                kc = slot + tl.where(interior, k, R * WB + R)
                esum, imp = _window_bits(scratch_e.to(tl.pointer_type(tl.int64)) + kc,
                                         imp_table + tl.where(interior, ny * nx, 9) * 16, WB)
                u = esum / n
            else:
                # r = 2 (or C > 32): the window's labels stay in registers (a tuple of
                # (2R+1)² vectors) and each class counts its matches
                WS: tl.constexpr = 2 * R + 1
                kc = slot + tl.where(interior, k, R * WB + R)
                u = tl.zeros([HB * WB], tl.float32)
                labs = ()
                for d in tl.static_range(WS * WS):
                    u += tl.load(scratch_e + kc + ((d // WS - R) * WB + (d % WS - R)), cache_modifier=".cg")
                    labs = labs + (tl.load(scratch_l + kc + ((d // WS - R) * WB + (d % WS - R)), cache_modifier=".cg"),)
                u = u / n
                imp = tl.zeros([HB * WB], tl.float32)
                for c in range(C):
                    cnt = tl.zeros([HB * WB], tl.float32)
                    for d in tl.static_range(WS * WS):
                        cnt += tl.where(labs[d] == c, 1.0, 0.0)
                    q = cnt / n
                    imp -= q * (LN2 * _log2(q + 1e-6, FAST_LOG))
            score = (imp / ln_c) * u
            tl.debug_barrier()  # the slot is rewritten by this program's next tile
        elif HEUR == 0:
            # r = 0: the window is the pixel, q is one-hot, P = -ln(1 + 1e-6) / ln C
            one = tl.full([HB * WB], 1.0, tl.float32)
            score = (-(one * tl.log(one + 1e-6)) / ln_c) * score
        # -- epilogue on the owned pixels -------------------------------------------------
        if HAS_W:
            score = score * tl.load(weights + lab, mask=interior, other=1.0)
        pix64 = (Y * W + X).to(tl.int64)
        li = b.to(tl.int64) * H * W + pix64
        if WRITE_MAPS:
            tl.store(score_out + li, score, mask=interior)
            tl.store(label_out + li, lab.to(tl.int64), mask=interior)
        if HIST:
            hg = tl.histogram(lab, C_BINS, mask=interior)
            bins = tl.arange(0, C_BINS)
            tl.atomic_add(hist + bins, hg.to(tl.int64), mask=bins < C)
        if EMIT:
            keep = interior
            if HAS_BLOCKED:
                keep = keep & (tl.load(blocked + li, mask=interior, other=1) == 0)
            cs = tl.load(cut_s)
            cg = tl.load(cut_g)
            g = tl.load(image_ids + b) * H * W + pix64
            keep = keep & ((score > cs) | ((score == cs) & (g < cg)))
            ki = keep.to(tl.int32)
            nk = tl.sum(ki, axis=0)
            start = tl.atomic_add(cand_count, nk.to(tl.int64))  # one reservation per tile
            pos = start + (tl.cumsum(ki, axis=0) - 1).to(tl.int64)
            tl.store(cand_score + pos, score, mask=keep)
            tl.store(cand_li + pos, li, mask=keep)
            tl.store(cand_label + pos, lab, mask=keep)
    if tl.max(bad_any.to(tl.int32), axis=0) > 0:
        tl.store(bad_flag, 1)


@triton.jit
def emit_kernel(
    scores, labels, n_total, HW, image_ids, weights, blocked, cut_s, cut_g,
    cand_score, cand_li, cand_label, cand_count,
    BLOCK: tl.constexpr, HAS_LABELS: tl.constexpr, HAS_W: tl.constexpr, HAS_BLOCKED: tl.constexpr,
):
    """Precomputed (B, H, W) maps -> weighted candidates beating the cut-off (compacted)."""
    li = tl.program_id(0).to(tl.int64) * BLOCK + tl.arange(0, BLOCK)
    m = li < n_total
    s = tl.load(scores + li, mask=m, other=0.0)
    if HAS_LABELS:
        lab = tl.load(labels + li, mask=m, other=0).to(tl.int32)
    else:
        lab = tl.zeros([BLOCK], tl.int32)
    if HAS_W:
        s = s * tl.load(weights + lab, mask=m, other=1.0)
    keep = m
    if HAS_BLOCKED:
        keep = keep & (tl.load(blocked + li, mask=m, other=1) == 0)
    b = li // HW
    g = tl.load(image_ids + b, mask=m, other=0) * HW + (li - b * HW)
    cs = tl.load(cut_s)
    cg = tl.load(cut_g)
    keep = keep & ((s > cs) | ((s == cs) & (g < cg)))
    ki = keep.to(tl.int32)
    start = tl.atomic_add(cand_count, tl.sum(ki, axis=0).to(tl.int64))
    pos = start + (tl.cumsum(ki, axis=0) - 1).to(tl.int64)
    tl.store(cand_score + pos, s, mask=keep)
    tl.store(cand_li + pos, li, mask=keep)
    tl.store(cand_label + pos, lab, mask=keep)


# ---------------------------------------------------------------------------------------
# host side
# ---------------------------------------------------------------------------------------


def _next_pow2(n: int) -> int:
    return 1 << max(0, int(n) - 1).bit_length()


def tile_config(radius: int) -> tuple[int, int, int]:
    """(HB, WB, NW) for window radius R: NW = pow2 >= (2R+1)^2 window lanes; the block keeps
    HB·WB·NW around 16k lanes so the (NW, HB·WB) window block fits in registers."""
    if radius == 0:
        # 4×64 (two pixels per thread at 4 warps): 64-72 registers. 16×64 spilled 8-16 bytes on
        # sm_80/sm_90 and 8×64 still spilled 4 bytes in the map variants on sm_90 (ptxas
        # settled at 96 registers); no halo at r = 0, so small blocks cost no re-reads
        return 4, 64, 1
    nw = _next_pow2((2 * radius + 1) ** 2)
    if radius == 1:
        # 16×32 (four pixels per thread at 4 warps): a pixel's C <= 32 logits stay in registers
        # (~170-190 registers at C = 19); 14×30 owned pixels, 1.22 computed per owned one
        return 16, 32, nw
    # r = 2: the 25 window labels of each lane stay in registers during the class loop; at
    # four lanes per thread (16×32) that reached the 255-register cap, so 16×16
    return 16, 16, nw


def _f32(x: float) -> float:
    """x rounded to float32 (as PyTorch rounds the align_corners scale), in plain Python: the
    launch path reads no tensor back to the host."""
    return struct.unpack("f", struct.pack("f", x))[0]


_IMP_TABLES: dict[str, torch.Tensor] = {}


def impurity_table(device: torch.device) -> torch.Tensor:
    """(10·16,) float32: row n (window size 1..9), column k (count 1..9) holds the class term
    q·ln(q + 1e-6) of the impurity with q = k/n, computed as the reference computes it (q
    rounded from float64 to float32, the product and the log in float32). Cached per device."""
    key = str(device)
    if key not in _IMP_TABLES:
        t = torch.zeros(10, 16, dtype=torch.float32)
        for n in range(1, 10):
            q = (torch.arange(1, n + 1, dtype=torch.float64) / n).to(torch.float32)
            t[n, 1 : n + 1] = q * torch.log(q + LOG_EPS)
        t = t.reshape(-1)
        _IMP_TABLES[key] = t if device.type == "cpu" else t.to(device)  # host to device: no sync
    return _IMP_TABLES[key]


def _num_programs(ntiles: int, device: torch.device) -> int:
    if device.type == "cuda":
        sms = torch.cuda.get_device_properties(device).multi_processor_count
        return max(1, min(ntiles, 8 * sms))
    return max(1, min(ntiles, 64))


class Candidates:
    """Device buffers the kernels append candidates to: score (f32), batch-local index
    li = b·H·W + y·W + x (int64), pseudo label (int32), and the count (int64 atomic)."""

    def __init__(self, capacity: int, device: torch.device):
        self.capacity = int(capacity)
        self.score = torch.empty(max(1, self.capacity), dtype=torch.float32, device=device)
        self.li = torch.empty(max(1, self.capacity), dtype=torch.int64, device=device)
        self.label = torch.empty(max(1, self.capacity), dtype=torch.int32, device=device)
        self.status = NonFiniteFlag(device)
        self.count = self.status.count


def run_fused(
    logits: torch.Tensor,
    heuristic_code: int,
    radius: int,
    out_size: tuple[int, int],
    image_ids: torch.Tensor,
    seed: int = 0,
    weights: torch.Tensor | None = None,
    blocked: torch.Tensor | None = None,
    cutoff: tuple[torch.Tensor, torch.Tensor] | None = None,
    maps: tuple[torch.Tensor, torch.Tensor] | None = None,
    cand: Candidates | None = None,
    hist: torch.Tensor | None = None,
    num_warps: int = 4,
    tile: tuple[int, int, int] | None = None,
    bad_flag: torch.Tensor | None = None,
) -> None:
    """Launch the fused kernel on one batch.

    Args:
        logits: (B, C, h, w) float32/bfloat16/float16, any strides.
        heuristic_code: HEUR_CODES value or PIXEL_STATS.
        radius: window radius of the ripu score (ignored otherwise).
        out_size: (H, W).
        image_ids: (B,) int64 on the logits' device.
        weights: (C,) float32 class weights or None. blocked: (B, H, W) uint8 or None.
        cutoff: device scalars (score f32 (1,), global index int64 (1,)); None: no cut-off.
        maps: (scores (B,H,W) f32, labels (B,H,W) int64) to write, or None.
        cand: candidate buffers to append to (capacity >= B·H·W), or None.
        hist: (C,) int64 histogram to add the interior pseudo labels to, or None.
        bad_flag: (1,) int64 word set to 1 on NaN/+inf logits or a pixel with no finite
            class (the candidates' own status word when None and ``cand`` is given).
    """
    b, c, h, w = logits.shape
    H, W = int(out_size[0]), int(out_size[1])
    if H * W >= 2**31:
        raise ValueError("out_size: H*W must be below 2^31 for the triton backend")
    # tap offsets inside one image are int32 (one multiply-add per load)
    extent = sum((n - 1) * st for n, st in zip(logits.shape[1:], logits.stride()[1:]))
    if extent >= 2**31:
        raise ValueError(f"logits: one image spans {extent + 1} elements (C, h, w and strides {tuple(logits.stride())}); "
                         "the triton backend takes below 2^31")
    dev = logits.device
    r = int(radius) if heuristic_code == 0 else 0
    if r > MAX_FUSED_RADIUS:
        raise ValueError(f"radius: the fused kernel takes r <= {MAX_FUSED_RADIUS}, got {r} (use score_maps)")
    hb, wb, nw = tile or tile_config(r)
    th, tw = hb - 2 * r, wb - 2 * r
    tiles_h, tiles_w = -(-H // th), -(-W // tw)
    ntiles = b * tiles_h * tiles_w
    nprog = _num_programs(ntiles, dev)
    upsample = (H, W) != (h, w)
    # float32 scale as PyTorch computes it for align_corners=True
    scale_h = _f32((h - 1) / (H - 1) if H > 1 else 0.0)
    scale_w = _f32((w - 1) / (W - 1) if W > 1 else 0.0)
    dummy_f = torch.empty(1, dtype=torch.float32, device=dev)
    dummy_i = torch.empty(1, dtype=torch.int64, device=dev)
    dummy_i32 = torch.empty(1, dtype=torch.int32, device=dev)
    if r > 0:
        # r = 1, C <= 32 packs a pixel's entropy and one-hot label into one int64 word
        scratch_e = torch.empty(nprog * hb * wb * 2, dtype=torch.float32, device=dev)
        scratch_l = torch.empty(nprog * hb * wb, dtype=torch.int32, device=dev)
    else:
        scratch_e, scratch_l = dummy_f, dummy_i32
    if cutoff is None:
        cut_s = torch.full((1,), float("-inf"), dtype=torch.float32, device=dev)
        cut_g = torch.zeros(1, dtype=torch.int64, device=dev)
    else:
        cut_s, cut_g = cutoff
    seed_mix = int(mix32(int(seed) & 0xFFFFFFFF))  # mix32's uint32 arithmetic works on ints as well
    if bad_flag is None:
        bad_flag = cand.status.flag if cand is not None else torch.zeros(1, dtype=torch.int64, device=dev)
    with device_guard(dev):
        _launch_fused(nprog, logits, h, w, H, W, c, scale_h, scale_w, image_ids, seed_mix, weights, blocked,
                      cut_s, cut_g, maps, cand, hist, bad_flag, scratch_e, scratch_l,
                      impurity_table(dev) if heuristic_code == 0 and r == 1 else dummy_f, ntiles, tiles_w,
                      tiles_h, heuristic_code, r, hb, wb, nw, upsample, num_warps, dummy_f, dummy_i, dummy_i32)


def _launch_fused(nprog, logits, h, w, H, W, c, scale_h, scale_w, image_ids, seed_mix, weights, blocked,
                  cut_s, cut_g, maps, cand, hist, bad_flag, scratch_e, scratch_l, imp_table, ntiles, tiles_w,
                  tiles_h, heuristic_code, r, hb, wb, nw, upsample, num_warps, dummy_f, dummy_i, dummy_i32):
    fused_score_kernel[(nprog,)](
        logits, *(int(s) for s in logits.stride()),
        h, w, H, W, scale_h, scale_w, math.log(c),
        image_ids, seed_mix,
        weights if weights is not None else dummy_f,
        blocked if blocked is not None else dummy_i,
        cut_s, cut_g,
        maps[0] if maps is not None else dummy_f,
        maps[1] if maps is not None else dummy_i,
        cand.score if cand is not None else dummy_f,
        cand.li if cand is not None else dummy_i,
        cand.label if cand is not None else dummy_i32,
        cand.count if cand is not None else dummy_i,
        hist if hist is not None else dummy_i, bad_flag,
        scratch_e, scratch_l, imp_table,
        ntiles, tiles_w, tiles_h * tiles_w, nprog,
        C=c, HEUR=heuristic_code, R=r, HB=hb, WB=wb, NW=nw, C_BINS=_next_pow2(max(c, 2)),
        UPSAMPLE=upsample, HAS_W=weights is not None, HAS_BLOCKED=blocked is not None,
        WRITE_MAPS=maps is not None, EMIT=cand is not None, HIST=hist is not None,
        num_warps=num_warps, **({"maxnreg": FUSED_MAXNREG} if r > 0 and not interpreting() else {}),
    )


def run_emit(
    scores: torch.Tensor,
    labels: torch.Tensor | None,
    image_ids: torch.Tensor,
    weights: torch.Tensor | None,
    blocked: torch.Tensor | None,
    cutoff: tuple[torch.Tensor, torch.Tensor] | None,
    cand: Candidates,
    block: int = 1024,
    num_warps: int = 4,
) -> None:
    """Candidates of precomputed (B, H, W) float32 score maps (and int64 labels)."""
    b, H, W = scores.shape
    dev = scores.device
    n = b * H * W
    if n == 0:
        return
    if cutoff is None:
        cutoff = (torch.full((1,), float("-inf"), dtype=torch.float32, device=dev), torch.zeros(1, dtype=torch.int64, device=dev))
    dummy_f = torch.empty(1, dtype=torch.float32, device=dev)
    dummy_i = torch.empty(1, dtype=torch.int64, device=dev)
    with device_guard(dev):
        emit_kernel[(triton.cdiv(n, block),)](
            scores.contiguous(), labels.contiguous() if labels is not None else dummy_i, n, H * W, image_ids,
            weights if weights is not None else dummy_f,
            blocked if blocked is not None else dummy_i,
            cutoff[0], cutoff[1], cand.score, cand.li, cand.label, cand.count,
            BLOCK=block, HAS_LABELS=labels is not None, HAS_W=weights is not None,
            HAS_BLOCKED=blocked is not None, num_warps=num_warps,
        )


def score_maps(
    logits: torch.Tensor,
    heuristic: str,
    radius: int,
    out_size: tuple[int, int] | None,
    image_ids: torch.Tensor,
    seed: int = 0,
    hist: torch.Tensor | None = None,
    num_warps: int = 4,
    bad_flag: torch.Tensor | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Scores (B, H, W) float32 and pseudo labels (B, H, W) int64 of a batch (``cbda.score``).

    ``ripu`` with r <= MAX_FUSED_RADIUS is one fused pass; wider windows (``ripu`` with
    r > 2, ``ripu_pixel``'s 65×65) write per-pixel entropy and labels and then take the
    running-count window pass of ``cbda.triton.window``.

    bad_flag: (1,) int64 word the kernel sets on NaN/+inf logits (or a pixel with no finite
    class); None: checked here (one device read) and raised as InputError.
    """
    from .window import window_scores

    b, c, h, w = logits.shape
    H, W = out_size if out_size is not None else (h, w)
    dev = logits.device
    scores = torch.empty((b, H, W), dtype=torch.float32, device=dev)
    labels = torch.empty((b, H, W), dtype=torch.int64, device=dev)
    if b == 0:
        return scores, labels
    ids = image_ids.to(torch.int64)
    # a copy to the device, never a read back; non_blocking: a blocking one synchronises the stream
    ids = (ids if ids.device == dev else ids.to(dev, non_blocking=True)).contiguous()
    own_flag = bad_flag is None
    if own_flag:
        bad_flag = torch.zeros(1, dtype=torch.int64, device=dev)
    wide = heuristic == "ripu_pixel" or (heuristic == "ripu" and radius > MAX_FUSED_RADIUS)
    if not wide:
        run_fused(logits, HEUR_CODES[heuristic], radius, (H, W), ids, seed, maps=(scores, labels), hist=hist,
                  num_warps=num_warps, bad_flag=bad_flag)
    else:
        pixel = heuristic == "ripu_pixel"
        run_fused(logits, PIXEL_STATS if pixel else HEUR_CODES["entropy"], 0, (H, W), ids, seed,
                  maps=(scores, labels), hist=hist, num_warps=num_warps, bad_flag=bad_flag)
        with device_guard(dev):
            scores = window_scores(scores, labels, c, RIPU_PIXEL_RADIUS if pixel else radius, mean_u=not pixel,
                                   num_warps=num_warps)
    if own_flag:
        raise_if_bad(int(bad_flag.item()))
    return scores, labels
