"""Acquisition over several processes: each rank scores its shard, collectives find the exact
global selection, every rank ends with the same picks.

Why a merge of local results is exact: blocking never crosses images, and every accumulator's
``finish()`` returns the picks of the images it saw in the order of docs/semantics.md (score
desc, global index asc). So for ``da``/``cbda`` the global top-K is contained in the union of the ranks'
local top-K; for ``ra``/``cbra`` the per-image picks are already final; for ``image`` the
global top-n images are contained in the union of the local top-n. The round therefore ends
with one header exchange (success, sizes, a fingerprint of the round's configuration), one
all_gather of the local picks, and a merge sort that every rank does identically.

The collective sequence is the same on every rank whatever happens locally, so a rank that
fails never leaves the others waiting: it still takes part in the header exchange (flagging
its error), every rank sees the flag, and every rank raises before anyone records.

Used through ``cbda.select(..., shard=True)`` / ``AcquisitionRound(..., shard=True)``; works
with any ``torch.distributed`` backend (gloo on the CPU; NCCL with the current CUDA device)::

    mine = list(range(rank, N, world))          # globally distinct ids; no padding duplicates
    batches = ((ids, model(images)) for ids, images in loader_over(mine))
    sel = cbda.select(batches, budget=0.05, rounds=5, strategy="cbda", out_size=(H, W),
                      state=state, num_images=N, shard=True)   # same sel on every rank
    cbda.distributed.label_from_ground_truth(state, lambda i: gt(i) if i in mine else None)

Every rank must call with the same arguments (checked: a mismatch raises on every rank) and
its own replica of the state. Each shard is part of the target set, but together the shards
must cover all N images (or the round must be called with ``subset=True``), and at least
one rank must hold an image; otherwise every rank raises the same error and nobody records. ``select`` catches a rank's local error and still meets the
others; with ``AcquisitionRound`` build it identically everywhere and call ``finish()`` in a
``finally``, or a rank that stops early leaves the others waiting for the group's timeout.
"""

from __future__ import annotations

import hashlib
import pickle
from dataclasses import dataclass, field

import numpy as np
import torch

from .backends.base import STRATEGIES, Picks
from .errors import CbdaError, InputError
from .reference.select import sort_picks

__all__ = [
    "CommStats",
    "DistributedRoundError",
    "comm_stats",
    "finish_sharded",
    "global_num_images",
    "label_from_ground_truth",
    "reset_comm_stats",
    "resolve_group",
]

# header row per rank: success, payload sizes, what the rank knows of the round's shape,
# and a fingerprint of everything that must agree across ranks
_OK, _NIDS, _NPICKS, _NCOUNTS, _C, _H, _W, _FP = range(8)
_HEADER = 8

#: Before the gather, a da/cbda round finds the global K-th best score with four all_reduces
#: of 256-bin histograms (8 KiB in all) so that each rank sends only its picks at or above it
#: (its share of K, not K) — when some rank holds at least this many local picks and the
#: ranks together hold more than K. 0 forces it (tests); None turns it off.
THRESHOLD_MIN_PICKS: int | None = 2048


class DistributedRoundError(CbdaError, RuntimeError):
    """A sharded round failed on at least one rank; raised on every rank, nothing recorded.

    Attributes:
        ranks: the ranks (in the process group) that failed.
        causes: rank -> ``"ErrorType: message"`` of each failing rank.
    """

    def __init__(self, message: str, ranks: list[int], causes: dict[int, str]):
        super().__init__(message)
        self.ranks = ranks
        self.causes = causes


@dataclass
class CommStats:
    """Bytes this process put into collectives (the tensors it contributed) and received.

    ``sent`` counts each collective's input buffer on this rank (padding included), which is
    what the payload of the round costs independently of the collective algorithm; a ring
    all_gather transmits ``(P-1)`` times its chunk per rank, a ring all_reduce about
    ``2(P-1)/P`` times its buffer.
    """

    calls: list[tuple[str, int, int]] = field(default_factory=list)  # (op, sent, received)

    @property
    def sent(self) -> int:
        return sum(c[1] for c in self.calls)

    @property
    def received(self) -> int:
        return sum(c[2] for c in self.calls)

    def to_dict(self) -> dict:
        return {"sent": self.sent, "received": self.received,
                "calls": [{"op": o, "sent": s, "received": r} for o, s, r in self.calls]}


_STATS = CommStats()


def comm_stats() -> CommStats:
    """The collectives of sharded rounds on this process since the last ``reset_comm_stats``."""
    return _STATS


def reset_comm_stats() -> None:
    _STATS.calls.clear()


def _dist():
    import torch.distributed as dist

    return dist


def resolve_group(shard: bool, process_group):
    """The process group of a sharded round, or None for a single-process one."""
    if process_group is None and not shard:
        return None
    dist = _dist()
    if not dist.is_available() or not dist.is_initialized():
        raise InputError(
            "process_group: shard=True needs torch.distributed initialised "
            "(torch.distributed.init_process_group, e.g. under torchrun) or an explicit process_group"
        )
    return process_group if process_group is not None else dist.group.WORLD


def _device(group) -> torch.device:
    dist = _dist()
    if dist.get_backend(group) == "nccl":
        return torch.device("cuda", torch.cuda.current_device())
    return torch.device("cpu")


def _all_gather(t: torch.Tensor, group, op: str) -> list[torch.Tensor]:
    dist = _dist()
    world = dist.get_world_size(group)
    t = t.to(_device(group)).contiguous()
    out = [torch.empty_like(t) for _ in range(world)]
    dist.all_gather(out, t, group=group)
    nbytes = t.numel() * t.element_size()
    _STATS.calls.append((op, nbytes, nbytes * world))
    return [o.cpu() for o in out]


def _all_gather_object(obj, group, op: str) -> list:
    dist = _dist()
    world = dist.get_world_size(group)
    out = [None] * world
    dist.all_gather_object(out, obj, group=group)
    _STATS.calls.append((op, len(pickle.dumps(obj)), sum(len(pickle.dumps(o)) for o in out)))
    return out


def global_num_images(local: int | None, group) -> int | None:
    """N of the whole target set as the sum of the shard sizes (None if a rank cannot tell)."""
    dist = _dist()
    t = torch.tensor([0 if local is None else int(local), 1 if local is None else 0], dtype=torch.int64)
    t = t.to(_device(group))
    dist.all_reduce(t, group=group)
    _STATS.calls.append(("all_reduce num_images", 16, 16))
    total, unknown = (int(v) for v in t.cpu())
    return None if unknown or total == 0 else total


# ---------------------------------------------------------------------------- agreement


def _describe(e: BaseException) -> str:
    return f"{type(e).__name__}: {e}"


def _agree(group, row: torch.Tensor, error: BaseException | None) -> torch.Tensor:
    """Exchange header rows; if any rank failed, every rank raises (nobody has recorded)."""
    rows = torch.stack(_all_gather(row, group, "all_gather header"))
    failed = [int(r) for r in torch.nonzero(rows[:, _OK] == 0).flatten()]
    if failed:
        causes = _all_gather_object(None if error is None else _describe(error), group, "all_gather errors")
        causes = {r: causes[r] or "unknown error" for r in failed}
        detail = "; ".join(f"rank {r}: {c}" for r, c in causes.items())
        me = _dist().get_rank(group)
        who = "this rank" if me in failed else f"rank(s) {', '.join(map(str, failed))}"
        exc = DistributedRoundError(
            f"sharded acquisition round failed on {who} ({detail}); no rank recorded the round", failed, causes
        )
        raise exc from error
    return rows


def fail_round(error: BaseException, group) -> None:
    """Take part in the agreement of a round that failed on this rank before ``finish``; raises."""
    row = torch.zeros(_HEADER, dtype=torch.int64)
    _agree(group, row, error)
    raise AssertionError("unreachable: the agreement raises when a rank failed")  # pragma: no cover


def _config(rnd) -> dict:
    """What every rank must agree on; compared by fingerprint, spelled out on mismatch."""

    def vec(x):
        return None if x is None else [float(v) for v in torch.as_tensor(x, dtype=torch.float64).flatten()]

    st = rnd.state
    state = None
    if st is not None:
        try:
            counts = st.class_counts(before_round=rnd.round_index).tolist()
        except CbdaError:
            counts = None
        state = (st.num_rounds, st.num_picks, getattr(st, "num_images", None), tuple(st.image_size),
                 st.num_classes, counts)
    return {
        "strategy": rnd.strategy, "heuristic": rnd.spec_heuristic, "radius": rnd.radius,
        "rounds": rnd.rounds, "round_index": rnd.round_index, "budget": rnd.budget,
        "num_images": rnd.num_images, "subset": rnd.subset, "seed": rnd.seed, "out_size": rnd.out_size,
        "goal": vec(rnd.goal), "class_weights": vec(rnd.user_weights), "state": state,
    }


def _fingerprint(cfg: dict) -> int:
    return int.from_bytes(hashlib.blake2b(repr(cfg).encode(), digest_size=8).digest(), "little") >> 1


# ---------------------------------------------------------------------------- payload


def _pack(picks: Picks, ids: torch.Tensor, counts: torch.Tensor | None, h: int, w: int) -> torch.Tensor:
    """One int64 vector: image ids, then per pick (global index, score bits << 32 | class),
    then the pseudo-label histogram: 16 bytes a pick."""
    ys, xs = picks.ys.clamp(min=0), picks.xs.clamp(min=0)
    gidx = picks.image_ids * (h * w) + ys * w + xs
    bits = picks.scores.to(torch.float32).contiguous().view(torch.int32).to(torch.int64)
    word = (bits << 32) | (picks.classes.to(torch.int64) & 0xFFFFFFFF)
    parts = [ids.to(torch.int64), torch.stack([gidx, word], 1).flatten()]
    if counts is not None:
        parts.append(counts.to(torch.int64).cpu())
    return torch.cat(parts)


def _unpack(vec: torch.Tensor, n_ids: int, n_picks: int, n_counts: int, h: int, w: int, whole: bool):
    ids = vec[:n_ids]
    pk = vec[n_ids:n_ids + 2 * n_picks].view(n_picks, 2)
    counts = vec[n_ids + 2 * n_picks:n_ids + 2 * n_picks + n_counts] if n_counts else None
    gidx, word = pk[:, 0], pk[:, 1]
    scores = (word >> 32).to(torch.int32).view(torch.float32)
    classes = (word << 32) >> 32  # arithmetic shift sign-extends the low 32 bits (-1 stays -1)
    img = gidx // (h * w)
    pix = gidx - img * (h * w)
    if whole:
        m1 = torch.full_like(img, -1)
        return ids, Picks(img, m1, m1.clone(), scores, classes), counts
    return ids, Picks(img, pix // w, pix % w, scores, classes), counts


def _ordered_score_bits(scores: torch.Tensor) -> torch.Tensor:
    """float32 scores -> int64 in [0, 2^32) with the same order (-0.0 counts as +0.0)."""
    bits = (scores.to(torch.float32) + 0.0).contiguous().view(torch.int32).to(torch.int64)
    return torch.where(bits < 0, bits ^ 0x7FFFFFFF, bits) + 2**31


def _all_reduce(t: torch.Tensor, group, op: str) -> torch.Tensor:
    dist = _dist()
    t = t.to(_device(group)).contiguous()
    dist.all_reduce(t, group=group)
    nbytes = t.numel() * t.element_size()
    _STATS.calls.append((op, nbytes, nbytes))
    return t.cpu()


def _kth_score_key(keys: torch.Tensor, k: int, group) -> int:
    """The k-th largest of the keys of all ranks (radix select, 8 bits a pass, all_reduce)."""
    prefix, remaining = 0, k
    for shift in (24, 16, 8, 0):
        mine = keys if shift == 24 else keys[(keys >> (shift + 8)) == prefix]
        hist = torch.bincount((mine >> shift) & 255, minlength=256)
        hist = _all_reduce(hist, group, "all_reduce score histogram")
        above = torch.flip(torch.cumsum(torch.flip(hist, [0]), 0), [0])  # above[b] = count(digit >= b)
        b = int(torch.nonzero(above >= remaining).max())
        remaining -= int(above[b]) - int(hist[b])
        prefix = (prefix << 8) | b
        if int(hist[b]) == remaining:  # the whole bucket is needed: nothing below it
            return prefix << shift
    return prefix


def _round_total(rnd, h: int, w: int) -> int | None:
    from .api.validate import image_quota, per_image_quota

    scope = STRATEGIES[rnd.strategy][0]
    n = rnd.num_images
    if scope == "per_image" or n is None:
        return None
    if scope == "image":
        return image_quota(n, rnd.budget, rnd.rounds)
    return n * per_image_quota(h, w, rnd.budget, rnd.rounds, rnd.radius)


def _agreed(rows: torch.Tensor, col: int, what: str) -> int:
    vals = sorted({int(v) for v in rows[:, col] if int(v) >= 0})
    if len(vals) > 1:
        per = ", ".join(f"rank {r}: {int(v)}" for r, v in enumerate(rows[:, col]) if int(v) >= 0)
        raise InputError(f"{what}: the ranks disagree ({per})")
    return vals[0] if vals else -1


def finish_sharded(rnd, commit: bool):
    """``AcquisitionRound.finish`` of a sharded round (called on every rank)."""
    group = rnd._group
    error = rnd._error
    row = torch.zeros(_HEADER, dtype=torch.int64)
    local = None
    cfg = None
    if error is None:
        try:
            cfg = _config(rnd)
            picks, _ = rnd._local_picks()
            ids = torch.tensor(sorted(rnd._seen), dtype=torch.int64)
            counts = picks.predicted_counts
            h, w = rnd._image_size if rnd._image_size is not None else (-1, -1)
            c = rnd.num_classes if rnd.num_classes is not None else -1
            row = torch.tensor([1, ids.numel(), len(picks.image_ids), 0 if counts is None else counts.numel(),
                                c, h, w, _fingerprint(cfg)], dtype=torch.int64)
            local = (picks, ids, counts)
        except Exception as e:  # reaches every rank through the agreement
            error = e
            row = torch.zeros(_HEADER, dtype=torch.int64)
    rnd._finished = True  # whatever happens next, this round object is spent
    stats_start = len(_STATS.calls)
    rows = _agree(group, row, error)

    if len({int(v) for v in rows[:, _FP]}) > 1:
        cfgs = _all_gather_object(cfg, group, "all_gather config")
        diff = [k for k in cfgs[0] if len({repr(c[k]) for c in cfgs}) > 1]
        per = "; ".join(f"{k}: " + ", ".join(f"rank {r}: {c[k]!r}" for r, c in enumerate(cfgs)) for k in diff)
        raise InputError(f"{', '.join(diff)}: every rank of a sharded round needs the same value ({per})")
    h, w = _agreed(rows, _H, "logits (spatial size)"), _agreed(rows, _W, "logits (spatial size)")
    c = _agreed(rows, _C, "logits (number of classes)")
    if h < 0:
        raise InputError("logits: no rank received an image; the image size is unknown")

    whole = rnd.strategy == "image"
    if local is not None and rnd._image_size is None:
        rnd._image_size = (h, w)
    total = _round_total(rnd, h, w)
    n_picks = rows[:, _NPICKS]
    if (THRESHOLD_MIN_PICKS is not None and STRATEGIES[rnd.strategy][0] == "global" and total
            and int(n_picks.sum()) > total and int(n_picks.max()) >= THRESHOLD_MIN_PICKS):
        # send only what can make the global top-K: scores at or above the K-th best
        # (ties at it included; the merge below resolves them by global index)
        picks = local[0]
        keys = _ordered_score_bits(picks.scores)
        keep = keys >= _kth_score_key(keys, total, group)
        local = (Picks(*(getattr(picks, f)[keep] for f in ("image_ids", "ys", "xs", "scores", "classes")),
                       picks.predicted_counts), *local[1:])
        sizes = _all_gather(torch.tensor([int(keep.sum())], dtype=torch.int64), group, "all_gather sizes")
        rows = rows.clone()
        rows[:, _NPICKS] = torch.cat(sizes)

    # every rank's ids and picks, padded to the longest; 16 bytes a pick
    vec = _pack(*local, h, w)
    lengths = (rows[:, _NIDS] + 2 * rows[:, _NPICKS] + rows[:, _NCOUNTS]).tolist()
    longest = max(lengths)
    gathered = []
    if longest:
        pad = torch.zeros(longest - vec.numel(), dtype=torch.int64)
        gathered = _all_gather(torch.cat([vec, pad]), group, "all_gather picks")
    parts = [
        _unpack(g, int(rows[r, _NIDS]), int(rows[r, _NPICKS]), int(rows[r, _NCOUNTS]), h, w, whole)
        for r, g in enumerate(gathered)
    ]

    all_ids = torch.cat([p[0] for p in parts]) if parts else torch.empty(0, dtype=torch.int64)
    uniq, cnt = torch.unique(all_ids, return_counts=True)
    if (cnt > 1).any():
        dup = uniq[cnt > 1][:5].tolist()
        ranks = [r for r, p in enumerate(parts) if set(p[0].tolist()) & set(dup)]
        raise InputError(
            f"image_ids: image ids {dup} appear on more than one rank ({', '.join(map(str, ranks))}); "
            "the shards of a sharded round must hold globally distinct ids"
        )
    # each shard is part of the set; together they must cover it (or the round is a subset)
    from .api.select import _absent

    rnd._check_coverage(int(uniq.numel()), lambda: _absent(set(uniq.tolist()), rnd.num_images))

    # the same merge on every rank: (score desc, global index asc), then the round's quota
    merged = Picks.empty()
    if parts:
        merged = Picks(*(torch.cat([getattr(p[1], f) for p in parts])
                         for f in ("image_ids", "ys", "xs", "scores", "classes")))
    gidx = merged.image_ids * (h * w) + merged.ys.clamp(min=0) * w + merged.xs.clamp(min=0)
    perm = sort_picks(merged.scores, gidx)
    if total is not None:
        perm = perm[:total]
    out = Picks(merged.image_ids[perm], merged.ys[perm], merged.xs[perm], merged.scores[perm], merged.classes[perm])
    counted = [p[2] for p in parts if p[2] is not None]
    out.predicted_counts = torch.stack(counted).sum(0) if counted else None

    # class weights: the plan's where this rank scored images, else the same computation
    if rnd._plan is not None:
        weights = rnd._plan.class_weights
    elif rnd.user_weights is not None:
        weights = rnd.user_weights
    elif STRATEGIES[rnd.strategy][1] and c > 0 and rnd.num_images is not None:
        weights = rnd._weights(c, rnd.num_images)
    else:
        weights = None
    sel = rnd._selection(out, weights)
    rnd.comm_stats = CommStats(list(_STATS.calls[stats_start:]))
    if rnd.state is not None and commit:
        rnd.state.record(sel)
    return sel


# ---------------------------------------------------------------------------- labels


def label_from_ground_truth(state, lookup, round_index: int | None = None, process_group=None) -> None:
    """Label a round of every rank's replica of ``state`` from ground truth held in pieces.

    Each rank's ``lookup(image_id)`` returns the (H, W) train-id map of an image it holds, or
    None for one it does not (typically: the images of its own shard). The windows are cut
    where the ground truth is, combined with one all_reduce (MIN over uint8, 255 = "not
    here"), and every rank sets the same labels. Raises on every rank, setting nothing, if a
    lookup fails on any rank or no rank holds some picked image. Collective: call it on every
    rank of the group.
    """
    group = resolve_group(True, process_group)
    error, labels, have = None, None, None
    try:
        if round_index is None:
            round_index = state.num_rounds
        sel = state.selection(round_index)
        h, w = state.image_size
        ids = sel.image_ids.numpy()
        whole = sel.unit == "image"
        k = 2 * sel.radius + 1
        labels = np.full((len(ids), h, w) if whole else (len(ids), k, k), 255, dtype=np.uint8)
        have = np.zeros(len(ids), dtype=np.int32)
        off = np.arange(-sel.radius, sel.radius + 1)
        for image_id in np.unique(ids).tolist():
            gt = lookup(image_id)
            if gt is None:
                continue
            gt = np.asarray(gt.cpu() if isinstance(gt, torch.Tensor) else gt)
            if gt.shape != (h, w):
                raise InputError(f"lookup: expected an ({h}, {w}) train-id map for image {image_id}, got shape {gt.shape}")
            if gt.dtype.kind not in "iu" or gt.size and (gt.min() < 0 or gt.max() > 255):
                raise InputError(f"lookup (image {image_id}): expected integer train ids in [0, 255]")
            rows = np.flatnonzero(ids == image_id)
            have[rows] = 1
            if whole:
                labels[rows] = gt
            else:  # clamped reads; set_labels voids the positions outside the image
                cy = np.clip(sel.ys.numpy()[rows, None] + off, 0, h - 1)
                cx = np.clip(sel.xs.numpy()[rows, None] + off, 0, w - 1)
                labels[rows] = gt[cy[:, :, None], cx[:, None, :]]
    except Exception as e:
        error = e
    row = torch.zeros(_HEADER, dtype=torch.int64)
    row[_OK] = int(error is None)
    _agree(group, row, error)
    dist = _dist()
    t = torch.from_numpy(labels).to(_device(group))
    dist.all_reduce(t, op=dist.ReduceOp.MIN, group=group)
    cov = torch.from_numpy(have).to(_device(group))
    dist.all_reduce(cov, group=group)
    _STATS.calls += [("all_reduce labels", t.numel(), t.numel()), ("all_reduce label coverage", cov.numel() * 4, cov.numel() * 4)]
    missing = sorted(set(ids[cov.cpu().numpy() == 0].tolist()))
    if missing:
        raise InputError(f"lookup: no rank has the ground truth of picked images {missing[:5]}; nothing was labelled")
    state.set_labels(round_index, t.cpu().numpy())
