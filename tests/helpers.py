"""Brute-force oracles and random inputs shared by the tests."""

from __future__ import annotations

import math

import numpy as np
import torch


def random_logits(b, c, h, w, seed=0, dtype=torch.float32, scale=3.0):
    g = torch.Generator().manual_seed(seed)
    return (torch.randn(b, c, h, w, generator=g) * scale).to(dtype)


#: the logits errors the kernels flag: a NaN, a +inf, a pixel whose every class is -inf
POISONS = ("nan", "+inf", "all -inf")


def poisoned_logits(poison: str, seed: int) -> torch.Tensor:
    """(2, 4, 5, 6) float32 logits carrying one of ``POISONS``."""
    x = random_logits(2, 4, 5, 6, seed=seed)
    if poison == "nan":
        x[1, 2, 3, 4] = float("nan")
    elif poison == "+inf":
        x[0, 1, 0, 0] = float("inf")
    else:
        x[1, :, 2, 2] = float("-inf")
    return x


def tie_scores(b, h, w, seed=0, levels=5, negative=True):
    """Score maps with many exact ties (and negative values)."""
    g = torch.Generator().manual_seed(seed)
    s = torch.randint(0, levels, (b, h, w), generator=g).to(torch.float32)
    return s - (levels // 2) if negative else s


def brute_greedy_sequence(scores: np.ndarray, blocked: np.ndarray, radius: int, image_id: int, limit=None):
    """Sort-and-scan greedy of one image in pure Python: [(score, gidx, y, x), ...]."""
    h, w = scores.shape
    order = sorted(((-float(scores[y, x]), y * w + x) for y in range(h) for x in range(w)))
    blk = blocked.copy()
    out = []
    for neg, pix in order:
        if limit is not None and len(out) >= limit:
            break
        y, x = divmod(pix, w)
        if blk[y, x]:
            continue
        out.append((-neg, image_id * h * w + pix, y, x))
        blk[max(0, y - 2 * radius): y + 2 * radius + 1, max(0, x - 2 * radius): x + 2 * radius + 1] = True
    return out


def brute_select(scores, image_ids, blocked, radius, per_image=None, total=None):
    """Picks (image_id, y, x) in (score desc, gidx asc) order by brute force."""
    seqs = []
    for i, img in enumerate(image_ids):
        seq = brute_greedy_sequence(scores[i], blocked[i], radius, int(img), per_image)
        seqs += [(s, g, int(img), y, x) for s, g, y, x in seq]
    seqs.sort(key=lambda t: (-t[0], t[1]))
    if total is not None:
        seqs = seqs[:total]
    return [(img, y, x) for _, _, img, y, x in seqs]


def brute_scores(logits: torch.Tensor, heuristic: str, radius: int):
    """Scores by explicit loops over pixels and windows, in float64."""
    x = logits.to(torch.float64)
    b, c, h, w = x.shape
    p = torch.softmax(x, 1).numpy()
    lab = x.argmax(1).numpy()
    ent = -(p * np.log(p + 1e-6)).sum(1)
    out = np.zeros((b, h, w))
    for n in range(b):
        for y in range(h):
            for xx in range(w):
                if heuristic == "entropy":
                    out[n, y, xx] = ent[n, y, xx] / math.log(c)
                    continue
                if heuristic == "margin":
                    s = np.sort(p[n, :, y, xx])[::-1]
                    out[n, y, xx] = 1 - (s[0] - s[1])
                    continue
                if heuristic == "least_confidence":
                    out[n, y, xx] = 1 - p[n, :, y, xx].max()
                    continue
                r = radius if heuristic == "ripu" else 32
                ys = range(max(0, y - r), min(h, y + r + 1))
                xs = range(max(0, xx - r), min(w, xx + r + 1))
                cells = [(a, bb) for a in ys for bb in xs]
                q = np.bincount([lab[n, a, bb] for a, bb in cells], minlength=c) / len(cells)
                imp = -(q * np.log(q + 1e-6)).sum() / math.log(c)
                if heuristic == "ripu":
                    u = np.mean([ent[n, a, bb] for a, bb in cells]) / math.log(c)
                    out[n, y, xx] = imp * u
                else:
                    out[n, y, xx] = imp * ent[n, y, xx]
    return out, lab


def triton_greedy_case(scores, blocked, radius, quota, device, chunk):
    """Run the triton greedy (``greedy_scan``) on the unblocked pixels of (B, H, W) maps, in
    the driver's (image, score desc, index asc) order; [(y, x), ...] picks per image.
    Imports triton: call it only from test files that set up the interpreter first."""
    from cbda.triton.greedy import greedy_scan
    from cbda.triton.topk import desc_score_key

    b, h, w = scores.shape
    flat = scores.reshape(-1)
    li = torch.nonzero(~blocked.reshape(-1)).flatten()
    s = flat[li]
    img = li // (h * w)
    perm = torch.argsort(li, stable=True)
    perm = perm[torch.argsort((img[perm] << 32) | desc_score_key(s[perm]), stable=True)]
    sorted_li = li[perm].contiguous().to(device)
    seg = torch.zeros(b + 1, dtype=torch.int64)
    seg[1:] = torch.cumsum(torch.bincount(img, minlength=b), 0)
    pos = greedy_scan(sorted_li, seg.to(device), b, (h, w), radius, quota, seg_out=False, chunk=chunk).cpu()
    out = []
    for i in range(b):
        p = pos[i * quota : (i + 1) * quota]
        p = p[p < len(sorted_li)]
        pix = sorted_li.cpu()[p] - i * h * w
        out.append([(int(q) // w, int(q) % w) for q in pix])
    return out
