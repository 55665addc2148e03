"""Exact pruning of a batch's candidates before the greedy: a radix select on the device.

Why. A pick blocks at most (4r+1)² centres, so only the best ``L`` candidates (by the full
order key: score desc, then index asc) of a segment can ever be picked, with L = q·(4r+1)²
per image (``ra``/``cbra``, q the image's quota) or M = K·(4r+1)² over the batch
(``da``/``cbda``), and the greedy restricted to them gives exactly the prefix of the
greedy sequence that matters (docs/semantics.md, "Pruning"). Keys are unique (they
contain the pixel index), so "the best L" is one well defined set.

Key. An ascending 96-bit key per candidate in two int64 words, compared lexicographically:
``hi`` = the descending-score key of ``cbda.triton.topk.desc_score_key`` (32 bits), ``lo`` =
the tie-break rank of the index: the pixel y·W + x inside an image (per-image segments) or
``rank[image]·H·W + pixel`` over a batch (one segment), ``rank`` the position of the image's
global id among the batch's ids, so ``lo`` orders like the 64-bit global index but needs
only bit_length(B·H·W) bits. Both are computed in the kernels from the candidate's score
and batch-local index; nothing is materialised.

Select. Eight-bit digits, most significant first: ``hi`` in 4 passes, then ``lo`` in
ceil(bits/8). Each pass is two launches: a histogram of the digit over the candidates
whose key matches the segment's prefix so far (one ``tl.histogram`` and one vector atomic
per block when the block lies in one segment; per-element atomics per (segment, digit)
otherwise), and
a one-program-per-segment scan that finds the digit where the cumulative count reaches the
segment's remaining need, appends it to the prefix and subtracts the counts below. A
segment is done when the chosen digit's bucket holds exactly the remaining need (all of it
is kept: the threshold is the prefix with every lower bit set), or at the first pass when
it holds at most L candidates (keep all); unique keys make the last pass finish every
segment. Later passes skip done segments, and skip reading at all once every segment is
done. The state is a few int64 words per segment on the device: no host read, no sort of
the n candidates. A last launch compacts the candidates at or below their segment's
threshold (one atomic reservation per block), so only ≤ L per segment are sorted and
scanned by the greedy.

Traffic: (passes + 1) reads of 12 bytes per candidate; 4 + ceil(bits/8) passes at most
(8 for a Cityscapes batch of 16), usually fewer reads as segments finish early.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from .score import device_guard

__all__ = ["prune", "key_passes", "DIGIT_BITS"]

DIGIT_BITS = 8
_NB = 1 << DIGIT_BITS
# per-segment state words
_P_HI, _P_LO, _NEED, _DONE, _T_HI, _T_LO = range(6)
_NSTATE = 6


@triton.jit
def _keys(score, li, rank, offs, m, HW, GLOBAL: tl.constexpr):
    """(hi, lo, segment) of the candidates at ``offs`` (see the module docstring)."""
    s = tl.load(score + offs, mask=m, other=0.0)
    s = tl.where(s == 0.0, 0.0, s)  # -0.0 and +0.0 are one score
    bits = s.to(tl.int32, bitcast=True)
    # orderable: non-negative floats flip the sign bit, negative ones flip every bit; then
    # complemented so that ascending keys are descending scores
    asc = bits ^ ((bits >> 31) | -2147483648)
    hi = (~asc).to(tl.uint32, bitcast=True).to(tl.int64)
    idx = tl.load(li + offs, mask=m, other=0)
    img = idx // HW
    pix = idx - img * HW
    if GLOBAL:
        lo = tl.load(rank + img, mask=m, other=0) * HW + pix
        seg = tl.zeros_like(img)
    else:
        lo = pix
        seg = img
    return hi, lo, seg


@triton.jit
def radix_hist_kernel(
    score, li, rank, n, HW, state, hist, ndone, nseg, shift,
    WORD: tl.constexpr, GLOBAL: tl.constexpr, BLOCK: tl.constexpr, NB: tl.constexpr,
):
    # a finished select costs one scalar load per block, not a read of the candidates
    if tl.load(ndone) < nseg:
        offs = tl.program_id(0).to(tl.int64) * BLOCK + tl.arange(0, BLOCK)
        m = offs < n
        hi, lo, seg = _keys(score, li, rank, offs, m, HW, GLOBAL)
        st = state + seg * 6
        done = tl.load(st + 3, mask=m, other=1)
        p_hi = tl.load(st + 0, mask=m, other=0)
        up = shift + 8
        if WORD == 0:
            match = (hi >> up) == (p_hi >> up)
            digit = (hi >> shift) & (NB - 1)
        else:
            p_lo = tl.load(st + 1, mask=m, other=0)
            match = (hi == p_hi) & ((lo >> up) == (p_lo >> up))
            digit = (lo >> shift) & (NB - 1)
        match = match & m & (done == 0)
        # a block inside one segment (always for the batch; nearly always per image, since
        # the scoring kernel reserves a tile's candidates contiguously) reduces its digits
        # first: the few hot digits of the score's top bits then cost one atomic per block,
        # not one per candidate on the same address
        s_lo = tl.min(tl.where(m, seg, 1 << 62), axis=0)
        s_hi = tl.max(tl.where(m, seg, -1), axis=0)
        if s_lo == s_hi:
            hg = tl.histogram(digit.to(tl.int32), NB, mask=match)
            tl.atomic_add(hist + s_lo * NB + tl.arange(0, NB), hg.to(tl.int64))
        else:
            tl.atomic_add(hist + seg * NB + digit, tl.full([BLOCK], 1, tl.int64), mask=match)


@triton.jit
def radix_scan_kernel(state, hist, ndone, shift, WORD: tl.constexpr, FIRST: tl.constexpr, NB: tl.constexpr):
    s = tl.program_id(0)
    st = state + s * 6
    if tl.load(st + 3) == 0:
        bins = tl.arange(0, NB)
        h = tl.load(hist + s * NB + bins)
        need = tl.load(st + 2)
        total = tl.sum(h, axis=0)
        cum = tl.cumsum(h, axis=0)
        d = tl.sum((cum < need).to(tl.int64), axis=0)  # the digit where the count reaches need
        below = tl.sum(tl.where(bins < d, h, 0), axis=0)
        cnt = tl.sum(tl.where(bins == d, h, 0), axis=0)
        need2 = need - below
        p_hi = tl.load(st + 0)
        p_lo = tl.load(st + 1)
        ones = (tl.full([], 1, tl.int64) << shift) - 1
        if WORD == 0:
            p_hi = p_hi | (d << shift)
            t_hi = p_hi | ones
            t_lo = tl.full([], 1 << 62, tl.int64)
        else:
            p_lo = p_lo | (d << shift)
            t_hi = p_hi
            t_lo = p_lo | ones
        if FIRST:
            keep_all = total <= need
        else:
            keep_all = total < 0
        done = keep_all | (cnt == need2)
        # keep all: a threshold above every hi (< 2^32); not done: the exact prefix (final after the last pass, where unique keys finish)
        t_hi = tl.where(keep_all, 1 << 40, tl.where(done, t_hi, p_hi))
        t_lo = tl.where(done, t_lo, p_lo)
        tl.store(st + 0, p_hi)
        tl.store(st + 1, p_lo)
        tl.store(st + 2, need2)
        tl.store(st + 3, done.to(tl.int64))
        tl.store(st + 4, t_hi)
        tl.store(st + 5, t_lo)
        if done:
            tl.atomic_add(ndone, 1)


@triton.jit
def radix_keep_kernel(
    score, li, label, rank, n, HW, state, out_s, out_li, out_lab, out_count,
    GLOBAL: tl.constexpr, BLOCK: tl.constexpr,
):
    offs = tl.program_id(0).to(tl.int64) * BLOCK + tl.arange(0, BLOCK)
    m = offs < n
    hi, lo, seg = _keys(score, li, rank, offs, m, HW, GLOBAL)
    t_hi = tl.load(state + seg * 6 + 4, mask=m, other=0)
    t_lo = tl.load(state + seg * 6 + 5, mask=m, other=0)
    keep = m & ((hi < t_hi) | ((hi == t_hi) & (lo <= t_lo)))
    ki = keep.to(tl.int32)
    start = tl.atomic_add(out_count, tl.sum(ki, axis=0).to(tl.int64))  # one reservation per block
    pos = start + (tl.cumsum(ki, axis=0) - 1).to(tl.int64)
    tl.store(out_s + pos, tl.load(score + offs, mask=keep, other=0.0), mask=keep)
    tl.store(out_li + pos, tl.load(li + offs, mask=keep, other=0), mask=keep)
    tl.store(out_lab + pos, tl.load(label + offs, mask=keep, other=0), mask=keep)


def key_passes(lo_max: int) -> list[tuple[int, int]]:
    """(word, shift) of every digit pass, most significant first, for ``lo`` values in
    [0, lo_max]: 4 passes over the 32-bit score key, then ceil(bit_length(lo_max)/8)."""
    lo_bits = -(-int(lo_max).bit_length() // DIGIT_BITS) * DIGIT_BITS
    if lo_bits > 56:
        raise ValueError(f"lo_max: tie-break ranks need at most 56 bits, got {lo_max}")
    return [(0, s) for s in range(32 - DIGIT_BITS, -1, -DIGIT_BITS)] + \
           [(1, s) for s in range(lo_bits - DIGIT_BITS, -1, -DIGIT_BITS)]


def prune(
    score: torch.Tensor,
    li: torch.Tensor,
    label: torch.Tensor,
    n: int,
    batch: int,
    hw: int,
    limit: int,
    rank: torch.Tensor | None = None,
    block: int = 1024,
    num_warps: int = 4,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """The best ``limit`` candidates of every image (``rank`` None) or of the whole batch
    (``rank`` given), by (score desc, global index asc), compacted in no particular order.

    Args:
        score, li, label: candidate buffers (float32, int64 batch-local index b·H·W + y·W + x,
            int32), valid in ``[:n]``; ``n`` is the host-known count.
        batch: B; hw: H·W; limit: L > 0.
        rank: (B,) int64 on the device, the position of each image's global id among the
            batch's sorted ids (global order of the tie-break), or None for per-image
            segments.
    Returns:
        (score (cap,), li (cap,), label (cap,), count (1,) int64 on the device), cap =
        min(n, limit) for the batch, min(n, B·limit) per image. Slots past ``count`` are
        padding: score -inf, li = B·H·W (image B, after every real image), label 0.
        Exactly min(n, limit) candidates are kept for the batch (keys are unique); per image,
        min(n_b, limit) of each image's n_b.
    """
    if int(limit) < 1:
        raise ValueError(f"limit: the candidates to keep per segment must be >= 1, got {limit}")
    dev = score.device
    per_image = rank is None
    nseg = int(batch) if per_image else 1
    cap = min(int(n), nseg * int(limit))
    out_s = torch.full((max(cap, 1),), float("-inf"), dtype=torch.float32, device=dev)
    out_li = torch.full((max(cap, 1),), int(batch) * int(hw), dtype=torch.int64, device=dev)
    out_lab = torch.zeros(max(cap, 1), dtype=torch.int32, device=dev)
    count = torch.zeros(1, dtype=torch.int64, device=dev)
    if n == 0 or nseg == 0:
        return out_s[:cap], out_li[:cap], out_lab[:cap], count
    passes = key_passes(hw - 1 if per_image else int(batch) * int(hw) - 1)
    state = torch.zeros((nseg, _NSTATE), dtype=torch.int64, device=dev)
    state[:, _NEED] = int(limit)
    hist = torch.zeros((len(passes), nseg, _NB), dtype=torch.int64, device=dev)
    ndone = torch.zeros(1, dtype=torch.int64, device=dev)
    dummy = rank if rank is not None else count
    grid = (triton.cdiv(int(n), block),)
    with device_guard(dev):
        for p, (word, shift) in enumerate(passes):
            radix_hist_kernel[grid](score, li, dummy, int(n), int(hw), state, hist[p], ndone, nseg, shift,
                                    WORD=word, GLOBAL=not per_image, BLOCK=block, NB=_NB, num_warps=num_warps)
            radix_scan_kernel[(nseg,)](state, hist[p], ndone, shift, WORD=word, FIRST=p == 0, NB=_NB,
                                       num_warps=1)
        radix_keep_kernel[grid](score, li, label, dummy, int(n), int(hw), state, out_s, out_li, out_lab, count,
                                GLOBAL=not per_image, BLOCK=block, num_warps=num_warps)
    return out_s[:cap], out_li[:cap], out_lab[:cap], count
