"""The ``triton`` backend: fused Triton kernels on CUDA tensors (or CPU tensors under
``TRITON_INTERPRET=1``, which is how CI runs them).

Per batch of a region round:
1. one fused kernel scores the batch at the label resolution, weights, masks (earlier picks:
   a dense map built on the device from the prior's host arrays) and compacts the
   candidates that beat the current cut-off into a reused device buffer
   (``cbda.triton.score``);
2. the one host read of the batch (``RoundCounters.host_read``): candidate count and the
   non-finite flag;
3. pruning to the greedy bound (docs/semantics.md, "Pruning"): when there are more
   candidates than the limit, a radix select on the device keeps the best q·(4r+1)² per image
   (``ra``/``cbra``) or the best M = K·(4r+1)² of the batch (``da``/``cbda``)
   (``cbda.triton.select``); for ``da``/``cbda`` the M-th best candidate of a batch with at
   least M also raises the cut-off of later batches;
4. only the kept candidates are sorted per image and the exact greedy runs one program per
   image (``cbda.triton.greedy``); the picks join the round buffer, which is cut back to
   exactly K past 2K, raising the cut-off on the device (``cbda.triton.topk``).
Nothing else in ``add`` reads the device: sizes are host-known (the count read, B·H·W, the
limits), the cut-offs and the per-image counts of candidates that entered the greedy stay on
the device, and ``finish()`` reads what it must. ``self.counters`` (``RoundCounters``) counts
batches, pixels scored, candidates, greedy_in (read once in ``finish``) against
greedy_bound, and host reads. Memory: O(K) for the round, O(B·H·W) for one batch.

Triton is imported on first use, never by ``import cbda``.
"""

from __future__ import annotations

import importlib.util
import os

import torch

from .base import (Picks, RoundAccumulator, RoundCounters, RoundPlan, greedy_bound, image_picks, max_picks_per_image,
                   mean_buckets, means_from_buckets)

NAME = "triton"
DTYPES = (torch.float32, torch.bfloat16, torch.float16)

#: launch knobs a GPU session may tune (block sizes are constexpr in the kernels)
NUM_WARPS = int(os.environ.get("CBDA_TRITON_NUM_WARPS", "4"))
GREEDY_CHUNK = int(os.environ.get("CBDA_TRITON_GREEDY_CHUNK", "32"))
GREEDY_WARPS = int(os.environ.get("CBDA_TRITON_GREEDY_WARPS", "1"))


def _interpret() -> bool:
    return os.environ.get("TRITON_INTERPRET") == "1"


def not_supported_reasons(device: torch.device, dtype: torch.dtype) -> list[str]:
    reasons = []
    if importlib.util.find_spec("triton") is None:
        reasons.append("triton is not installed (pip install 'triton>=3.4')")
    if device.type != "cuda" and not (device.type == "cpu" and _interpret()):
        reasons.append(
            f"tensors are on {device.type}; the triton backend needs CUDA tensors "
            "(or CPU tensors with TRITON_INTERPRET=1 set before triton is imported)"
        )
    if dtype not in DTYPES:
        reasons.append(f"dtype {dtype} not in float32/bfloat16/float16")
    return reasons


def score(logits, spec, image_ids):
    from ..triton.score import score_maps

    return score_maps(logits, spec.heuristic, spec.radius, spec.out_size, image_ids, spec.seed, num_warps=NUM_WARPS)


def _on(t: torch.Tensor, device: torch.device) -> torch.Tensor:
    """``t`` on ``device``; a host-to-device copy at most (never a read back).

    ``non_blocking``: a blocking copy to CUDA ends with a stream synchronize (the host would
    wait for every queued kernel); from pageable memory the asynchronous copy stages the
    source before returning, so the CPU tensor may go right after."""
    return t if t.device == device else t.to(device, non_blocking=True)


def _blocked(prior, image_size, radius, device) -> torch.Tensor | None:
    """Dense (B·H·W,) uint8 map of centres blocked by earlier region picks, None when there
    are none. The prior lives on the CPU with host-known sizes: the P squares become the
    4P corners of a 2-D difference array on the host, and the device adds them and takes two
    cumsums, so nothing is read back (a device ``repeat_interleave`` would be). Images
    labelled whole are handled by the caller (their candidates get score -inf)."""
    if prior is None or prior.num_picks == 0:
        return None
    h, w = int(image_size[0]), int(image_size[1])
    b = prior.batch_size
    counts = prior.offsets[1:] - prior.offsets[:-1]
    bi = torch.repeat_interleave(torch.arange(b), counts)  # CPU: host-known output size
    d = prior.radii + int(radius)
    y0, x0 = (prior.ys - d).clamp(min=0), (prior.xs - d).clamp(min=0)
    y1, x1 = (prior.ys + d + 1).clamp(max=h), (prior.xs + d + 1).clamp(max=w)
    base = bi * ((h + 1) * (w + 1))
    idx = torch.cat([base + yy * (w + 1) + xx for yy, xx in ((y0, x0), (y0, x1), (y1, x0), (y1, x1))])
    one = torch.ones_like(bi, dtype=torch.int32)
    val = torch.cat([one, -one, -one, one])
    diff = torch.zeros(b * (h + 1) * (w + 1), dtype=torch.int32, device=device)
    diff.index_add_(0, _on(idx, device), _on(val, device))
    # in place and in int32 (a count of picks): 5 bytes per pixel in all, where cumsum's
    # default int64 results would add 16
    d = diff.view(b, h + 1, w + 1)
    d.cumsum_(1)
    d.cumsum_(2)
    return (d[:, :h, :w] > 0).view(torch.uint8).reshape(-1)


def _ranks(image_ids: torch.Tensor) -> torch.Tensor:
    """(B,) int64 CPU: the position of each id among the batch's sorted ids (the global
    index order of the batch's images, for the radix keys of ``cbda.triton.select``)."""
    rank = torch.empty_like(image_ids)
    rank[torch.argsort(image_ids)] = torch.arange(image_ids.numel(), dtype=image_ids.dtype)
    return rank


class TritonRound(RoundAccumulator):
    def __init__(self, plan: RoundPlan):
        self.plan = plan
        self.buffer = None
        self.cand = None
        self.counts: torch.Tensor | None = None
        self.device: torch.device | None = None
        self.weights: torch.Tensor | None = None
        self.means: list[torch.Tensor] = []
        self.ids: list[torch.Tensor] = []
        self.whole: list[torch.Tensor] = []
        self.counters = RoundCounters()
        #: per batch, the (B,) device counts of candidates that entered the greedy, per image
        self._greedy_in: list[torch.Tensor] = []
        #: filled in by finish(): per batch, the list of those counts (host ints)
        self.greedy_in_per_image: list[list[int]] = []

    # -- set-up on the first batch ----------------------------------------------------------
    def _setup(self, device: torch.device):
        from ..triton.topk import RoundBuffer

        if self.device is not None:
            return
        self.device = device
        plan = self.plan
        if plan.class_weights is not None:
            self.weights = _on(plan.class_weights.to(torch.float32), device).contiguous()
        self.buffer = RoundBuffer(device, plan.total if plan.scope == "global" else None)

    def _candidates(self, n: int):
        from ..triton.score import Candidates

        if self.cand is None or self.cand.capacity < n:
            self.cand = Candidates(n, self.device)
        self.cand.status.status.zero_()
        return self.cand

    # -- one batch ----------------------------------------------------------------------------
    def add(self, image_ids, prior, logits=None, scores=None, labels=None):
        from ..triton import score as ks

        plan = self.plan
        dev = logits.device if logits is not None else scores.device
        self._setup(dev)
        h, w = plan.image_size
        hw = h * w
        b = int(image_ids.numel())
        self.counters.batches += 1
        self.counters.scored += b * hw
        ids = _on(image_ids.to(torch.int64), dev).contiguous()
        if logits is not None and self.counts is None:
            self.counts = torch.zeros(logits.shape[1], dtype=torch.int64, device=dev)
        spec = plan.spec
        if plan.scope == "image":
            flag = torch.zeros(1, dtype=torch.int64, device=dev)
            if logits is not None:
                scores, labels = ks.score_maps(logits, spec.heuristic, spec.radius, (h, w), ids, spec.seed,
                                               hist=self.counts, num_warps=NUM_WARPS, bad_flag=flag)
            s = scores.to(torch.float32)
            if self.weights is not None:
                s = s * self.weights[labels]
            # exact means (no reduction-order ties): the non-finite flag and the mean buckets
            # come back in the batch's one host read
            words = self.counters.host_read(torch.cat([flag, mean_buckets(s).reshape(-1)]))
            ks.raise_if_bad(words[0])
            self.means.append(means_from_buckets([words[1 + 256 * i:1 + 256 * (i + 1)] for i in range(b)], hw))
            self.ids.append(image_ids)  # both on the CPU already (the accumulator's contract)
            self.whole.append(prior.whole_image)
            return
        per_image = plan.scope == "per_image"
        quota = plan.per_image if per_image else plan.total
        if quota is None or quota <= 0:
            if logits is not None:  # still count the pseudo labels
                ks.score_maps(logits, spec.heuristic, spec.radius, (h, w), ids, spec.seed, hist=self.counts, num_warps=NUM_WARPS)
            return
        blocked = _blocked(prior, (h, w), plan.radius, dev)
        whole = _on(prior.whole_image, dev)
        cand = self._candidates(b * hw)
        cutoff = self.buffer.cutoff if plan.scope == "global" else None
        wide = spec.heuristic == "ripu_pixel" or (spec.heuristic == "ripu" and spec.radius > ks.MAX_FUSED_RADIUS)
        if logits is not None and not wide:
            ks.run_fused(
                logits, ks.HEUR_CODES[spec.heuristic], spec.radius, (h, w), ids, spec.seed,
                weights=self.weights, blocked=blocked, cutoff=cutoff, cand=cand, hist=self.counts,
                num_warps=NUM_WARPS,
            )
        else:
            if logits is not None:  # wide windows: maps first, then the running-count window pass
                scores, labels = ks.score_maps(logits, spec.heuristic, spec.radius, (h, w), ids, spec.seed,
                                               hist=self.counts, num_warps=NUM_WARPS, bad_flag=cand.status.flag)
            ks.run_emit(scores.to(torch.float32), labels, ids, self.weights, blocked, cutoff, cand, num_warps=NUM_WARPS)
        # the one host read of the batch: candidate count and non-finite flag
        n, bad = self.counters.host_read(cand.status.status)
        ks.raise_if_bad(bad)
        self.counters.candidates += n
        c_s, c_li, c_lab = cand.score[:n], cand.li[:n], cand.label[:n]
        # images labelled whole in an earlier round: every centre is blocked; score -inf orders
        # their candidates after every real one (keys stay unique) and makes their picks padding
        c_s = torch.where(whole[torch.div(c_li, hw, rounding_mode="floor")], float("-inf"), c_s)
        q = min(int(quota), max_picks_per_image(h, w, plan.radius))
        c_s, c_li, c_lab = self._prune(c_s, c_li, c_lab, n, b, image_ids, ids, q)
        if plan.radius > 0 or per_image:
            c_s, c_li, c_lab = self._greedy(c_s, c_li, c_lab, b, q)
        else:  # plain top-k: the pruned batch is the batch's picks
            self._count_in(c_li, b)
            if c_lab.data_ptr() == cand.label.data_ptr():  # not pruned: copy out of the reused buffer
                c_lab = c_lab.clone()  # (c_s is torch.where's new tensor; c_li only feeds gidx)
        gidx = ids[torch.div(c_li, hw, rounding_mode="floor")] * hw + c_li % hw
        self.buffer.append(c_s, gidx, c_lab)

    def _prune(self, c_s, c_li, c_lab, n, b, image_ids, ids, q):
        """Only the best q·(4r+1)² candidates of each image (``ra``/``cbra``) or the best
        M = K·(4r+1)² of the batch (``da``/``cbda``) can be picked (``greedy_bound``); keep
        those (a radix select on the device, ``cbda.triton.select``), nothing when n <= the
        limit. For da/cbda, the M-th best candidate of a batch with >= M candidates is also a
        valid cut-off for later batches: it is offered to the round buffer."""
        from ..triton.select import prune

        plan = self.plan
        h, w = plan.image_size
        hw = h * w
        per_image = plan.scope == "per_image"
        limit = greedy_bound(q if per_image else plan.total, plan.radius)
        self.counters.greedy_bound += b * limit if per_image else limit
        if n > limit:  # per image: every image has at most n <= limit otherwise
            rank = None if per_image else _on(_ranks(image_ids), c_s.device)
            c_s, c_li, c_lab, _ = prune(c_s, c_li, c_lab, n, b, hw, limit, rank, num_warps=NUM_WARPS)
        if not per_image and n >= limit:
            self._offer_cutoff(c_s, c_li, ids, hw)
        return c_s, c_li, c_lab

    def _offer_cutoff(self, c_s, c_li, ids, hw):
        """The worst of exactly M kept candidates (the M-th best of the batch) as a cut-off."""
        from ..triton.topk import desc_score_key

        key = desc_score_key(c_s)
        g = ids[torch.div(c_li, hw, rounding_mode="floor")] * hw + c_li % hw
        worst = key.max()
        at_worst = key == worst
        g_w = torch.where(at_worst, g, -1).max()
        at = torch.argmax((at_worst & (g == g_w)).to(torch.int32)).view(1)
        self.buffer.raise_cutoff(c_s.index_select(0, at), g_w.view(1))

    def _count_in(self, c_li, b) -> torch.Tensor:
        """Per-image counts (B+1,) of the candidates entering the greedy (index B: padding);
        the first B are kept on the device for ``finish``."""
        hw = self.plan.image_size[0] * self.plan.image_size[1]
        img = torch.div(c_li, hw, rounding_mode="floor")
        # index_add, not bincount: bincount sizes its output from a device max (a host sync)
        per_img = torch.zeros(b + 1, dtype=torch.int64, device=c_li.device).index_add_(0, img, torch.ones_like(img))
        self._greedy_in.append(per_img[:b])
        return per_img

    def _greedy(self, c_s, c_li, c_lab, b, q):
        """Per-image greedy over the candidates; returns the picks padded with -inf.
        Padding candidates (li = B·H·W, from ``prune``) sort after every image and are skipped."""
        from ..triton.greedy import greedy_scan
        from ..triton.topk import desc_score_key

        plan = self.plan
        h, w = plan.image_size
        hw = h * w
        # (image asc, score desc, index asc): li ascending, then stably by (image, score key)
        p1 = torch.sort(c_li, stable=True).indices
        li1 = c_li[p1]
        img = torch.div(li1, hw, rounding_mode="floor")
        p2 = torch.sort((img << 32) | desc_score_key(c_s[p1]), stable=True).indices
        perm = p1[p2]
        s_sorted, li_sorted, lab_sorted = c_s[perm], c_li[perm], c_lab[perm]
        per_img = self._count_in(c_li, b)
        seg = torch.zeros(b + 1, dtype=torch.int64, device=c_s.device)
        seg[1:] = torch.cumsum(per_img[:b], 0)
        # picks at seg[b] + k (n slots) or at b·q + k (B·q slots): the smaller, so that the round
        # buffer (da/cbda) appends, and sorts at its trims, as little padding as possible
        seg_out = plan.scope == "global" and int(c_li.numel()) <= b * q
        pos = greedy_scan(li_sorted.contiguous(), seg, b, (h, w), plan.radius, q, seg_out=seg_out,
                          chunk=GREEDY_CHUNK, num_warps=GREEDY_WARPS)
        # one padding entry at index n
        pad_s = torch.cat([s_sorted, s_sorted.new_full((1,), float("-inf"))])
        pad_li = torch.cat([li_sorted, li_sorted.new_zeros(1)])
        pad_lab = torch.cat([lab_sorted, lab_sorted.new_zeros(1)])
        return pad_s[pos], pad_li[pos], pad_lab[pos]

    # -- the round's result -------------------------------------------------------------------
    def finish(self) -> Picks:
        plan = self.plan
        if self._greedy_in:  # the per-batch device counts, read once
            flat = self.counters.host_read(torch.cat(self._greedy_in))
            self.counters.greedy_in = sum(flat)
            sizes = [int(t.numel()) for t in self._greedy_in]
            starts = [sum(sizes[:i]) for i in range(len(sizes))]
            self.greedy_in_per_image = [flat[a:a + k] for a, k in zip(starts, sizes)]
            self._greedy_in = []
        counts = self.counts.cpu() if self.counts is not None else None
        if plan.scope == "image":
            return image_picks(self.ids, self.means, self.whole, plan.total, counts)
        if self.buffer is None:
            out = Picks.empty()
            out.predicted_counts = counts
            return out
        s, g, lab = self.buffer.result()
        h, w = plan.image_size
        hw = h * w
        g = g.cpu()
        pix = g % hw
        return Picks(torch.div(g, hw, rounding_mode="floor"), pix // w, pix % w, s.cpu(), lab.cpu().to(torch.int64), counts)


def open_round(plan: RoundPlan) -> RoundAccumulator:
    return TritonRound(plan)
