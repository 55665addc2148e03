"""The ``triton`` backend: fused Triton kernels on CUDA tensors (or CPU tensors under
``TRITON_INTERPRET=1``, which is how CI runs them).

Per batch of a region round: one fused kernel scores the batch at the label resolution,
weights, masks and compacts the candidates that beat the current cut-off into a device
buffer (``cbda.triton.score``); one host read gets their count; for r > 0 they are sorted per
image and the exact greedy runs one program per image (``cbda.triton.greedy``); the picks
join the round buffer, which is cut back to exactly K past 2K, raising the cut-off on the
device (``cbda.triton.topk``). Memory: O(K) for the round, O(B·H·W) for one batch.

Triton is imported on first use, never by ``import cbda``.
"""

from __future__ import annotations

import importlib.util
import os

import torch

from .base import Picks, RoundAccumulator, RoundPlan, exact_means, image_picks, max_picks_per_image

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


def _blocked(prior, image_size, radius, device) -> torch.Tensor | None:
    """Dense (B·H·W,) uint8 map of centres blocked by earlier rounds, None when none is.
    The prior lives on the CPU, so the test needs no device sync."""
    if prior is None or (prior.num_picks == 0 and not bool(prior.whole_image.any())):
        return None
    return prior.to(device).blocked_masks(image_size, radius).to(torch.uint8).reshape(-1)


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

    # -- set-up on the first batch ----------------------------------------------------------
    def _setup(self, device: torch.device):
        from ..triton.topk import RoundBuffer

        if self.device is not None:
            return
        self.device = device
        plan = self.plan
        if plan.class_weights is not None:
            self.weights = plan.class_weights.to(device=device, dtype=torch.float32).contiguous()
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
        b = int(image_ids.numel())
        ids = image_ids.to(device=dev, dtype=torch.int64).contiguous()
        if logits is not None and self.counts is None:
            self.counts = torch.zeros(logits.shape[1], dtype=torch.int64, device=dev)
        spec = plan.spec
        if plan.scope == "image":
            if logits is not None:
                scores, labels = ks.score_maps(logits, spec.heuristic, spec.radius, (h, w), ids, spec.seed, hist=self.counts, num_warps=NUM_WARPS)
            s = scores.to(torch.float32)
            if self.weights is not None:
                s = s * self.weights[labels]
            self.means.append(exact_means(s))  # exact: no reduction-order ties
            self.ids.append(image_ids.cpu())
            self.whole.append(prior.whole_image.cpu())
            return
        quota = plan.per_image if plan.scope == "per_image" else plan.total
        if quota is None or quota <= 0:
            if logits is not None:  # still count the pseudo labels
                ks.score_maps(logits, spec.heuristic, spec.radius, (h, w), ids, spec.seed, hist=self.counts, num_warps=NUM_WARPS)
            return
        blocked = _blocked(prior, (h, w), plan.radius, dev)
        cand = self._candidates(b * h * w)
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
        n, bad = cand.status.status.tolist()  # the one host read of the batch: count and flag
        ks.raise_if_bad(bad)
        c_s, c_li, c_lab = cand.score[:n], cand.li[:n], cand.label[:n]
        if plan.radius > 0 or plan.scope == "per_image":
            c_s, c_li, c_lab = self._greedy(c_s, c_li, c_lab, b, quota)
        else:  # plain top-k: copy out of the reused candidate buffer
            c_s, c_li, c_lab = c_s.clone(), c_li.clone(), c_lab.clone()
        hw = h * w
        gidx = ids[torch.div(c_li, hw, rounding_mode="floor")] * hw + c_li % hw
        self.buffer.append(c_s, gidx, c_lab)

    def _greedy(self, c_s, c_li, c_lab, b, quota):
        """Per-image greedy over the candidates; returns the picks padded with -inf."""
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
        seg = torch.zeros(b + 1, dtype=torch.int64, device=c_s.device)
        # index_add, not bincount: bincount sizes its output from a device max (a host sync)
        per_img = torch.zeros(b, dtype=torch.int64, device=c_s.device).index_add_(0, img, torch.ones_like(img))
        seg[1:] = torch.cumsum(per_img, 0)
        q = min(int(quota), max_picks_per_image(h, w, plan.radius))
        pos = greedy_scan(li_sorted.contiguous(), seg, b, (h, w), plan.radius, q, seg_out=plan.scope == "global",
                          chunk=GREEDY_CHUNK, num_warps=GREEDY_WARPS)
        # one padding entry at index n
        pad_s = torch.cat([s_sorted, s_sorted.new_full((1,), float("-inf"))])
        pad_li = torch.cat([li_sorted, li_sorted.new_zeros(1)])
        pad_lab = torch.cat([lab_sorted, lab_sorted.new_zeros(1)])
        return pad_s[pos], pad_li[pos], pad_lab[pos]

    # -- the round's result -------------------------------------------------------------------
    def finish(self) -> Picks:
        plan = self.plan
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
