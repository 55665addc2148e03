"""``cbda.select`` and the streaming round API ``AcquisitionRound``."""

from __future__ import annotations

import functools
from collections.abc import Iterable

import torch

from ..backends.base import STRATEGIES, RoundPlan
from ..balance import check_goal, class_weights as compute_class_weights
from ..errors import InputError, StateError
from ..scores import ScoreSpec
from ..selection import Selection
from . import dispatch
from .batching import Rebatcher, auto_batch_size, bytes_per_image
from .validate import (
    check_budget,
    check_heuristic,
    check_id_range,
    check_image_ids,
    check_int,
    check_logits,
    check_num_images_fit,
    check_out_size,
    check_radius,
    check_round_index,
    check_scores,
    check_state,
    check_strategy,
    image_quota,
    per_image_quota,
    window_radius,
)

__all__ = ["AcquisitionRound", "select"]


def _remember_error(method):
    """In a sharded round, keep the first error of add()/add_scores() for finish()'s agreement."""

    @functools.wraps(method)
    def wrapper(self, *args, **kwargs):
        try:
            return method(self, *args, **kwargs)
        except Exception as e:
            if self._group is not None and self._error is None:
                self._error = e
            raise

    return wrapper


def _prior_picks(state, image_ids: torch.Tensor):
    from ..state import PriorPicks

    if state is None:
        return PriorPicks.empty(int(image_ids.numel()))
    return state.prior_picks(image_ids)


class AcquisitionRound:
    """One acquisition round fed batch by batch; ``finish()`` returns the ``Selection``.

    Memory stays O(K + one batch) on the fused backends: no score map of an earlier batch is
    kept. The round touches the ``state`` only in ``finish(commit=True)``, so an error at any
    point leaves the state as it was.

    Args: as ``cbda.select`` (``num_images`` is the size N of the whole target set, needed by
    ``da``/``cbda``/``image`` and by class weights; taken from ``state.num_images`` when
    not given). When N is known, ``finish()`` refuses a round that did not see every image
    0..N-1 unless ``subset=True``, and always refuses a round that saw no image.

    Logits are scored in backend batches of ``batch_size`` images (the caller's batches are
    joined or split; picks do not depend on it). None: on a GPU backend (cuda, triton), as many
    as fit in the device's free memory (``cbda.api.batching``); elsewhere, as they come.

    Sharded (``shard=True`` or a ``process_group``): every rank feeds its own images and
    calls ``finish()`` (also after an error in ``add``: put it in a ``finally``), which agrees
    on success across ranks and returns the same global selection everywhere
    (see ``cbda.distributed``).
    """

    def __init__(
        self,
        *,
        budget: float,
        rounds: int = 5,
        round_index: int | None = None,
        strategy: str = "cbda",
        heuristic: str = "ripu",
        radius: int = 1,
        out_size: tuple[int, int] | None = None,
        state=None,
        goal=None,
        class_weights=None,
        backend: str = "auto",
        num_images: int | None = None,
        seed: int = 0,
        subset: bool = False,
        batch_size: int | None = None,
        shard: bool = False,
        process_group=None,
    ):
        from ..distributed import resolve_group

        self._group = resolve_group(shard, process_group)
        self._error: BaseException | None = None
        self.budget = check_budget(budget)
        self.rounds = check_int("rounds", rounds, 1)
        self.strategy = check_strategy(strategy)
        self.spec_heuristic = check_heuristic(heuristic)
        self.out_size = check_out_size(out_size)
        self.state = check_state(state)
        self._regions = STRATEGIES[self.strategy][0] != "image"
        self.radius = check_radius(radius, tuple(state.image_size) if state is not None else self.out_size, self._regions)
        if not isinstance(subset, bool):
            raise InputError(f"subset: expected True or False, got {subset!r}")
        self.subset = subset
        self.batch_size = None if batch_size is None else check_int("batch_size", batch_size, 1)
        self._rebatch = None
        if backend not in dispatch.BACKEND_NAMES:
            raise InputError(f"backend: expected one of {', '.join(dispatch.BACKEND_NAMES)}, got {backend!r}")
        self.backend = backend
        self.seed = check_int("seed", seed)
        if round_index is None:
            round_index = state.num_rounds + 1 if state is not None else 1
        self.round_index = check_round_index(round_index, self.rounds)
        if state is not None and self.round_index != state.num_rounds + 1:
            raise StateError(
                f"round_index: the state has {state.num_rounds} rounds recorded, so the next round is "
                f"{state.num_rounds + 1}, got {self.round_index}"
            )
        if state is not None and self.out_size is not None and tuple(state.image_size) != self.out_size:
            raise InputError(f"out_size: expected the state's image_size {tuple(state.image_size)}, got {self.out_size}")
        self.num_classes = state.num_classes if state is not None else None
        self.goal = goal
        if goal is not None and self.num_classes is not None:
            check_goal(goal, self.num_classes)
        self.user_weights = None
        if class_weights is not None:
            w = torch.as_tensor(class_weights, dtype=torch.float32).flatten().cpu()
            if not torch.isfinite(w).all() or (w < 0).any():
                raise InputError("class_weights: expected finite non-negative weights, one per class")
            if self.num_classes is not None and w.numel() != self.num_classes:
                raise InputError(f"class_weights: expected {self.num_classes} weights (one per class), got {w.numel()}")
            if w.numel() < 2:
                raise InputError(f"class_weights: expected one weight per class (C >= 2), got {w.numel()}")
            self.user_weights = w
            self.num_classes = self.num_classes or w.numel()
        if num_images is not None:
            num_images = check_int("num_images", num_images, 1)
            if state is not None and state.num_images is not None and num_images != state.num_images:
                raise StateError(
                    f"num_images: the state holds {state.num_images} images (state.num_images), got "
                    f"num_images={num_images}; for a round over part of the set pass subset=True, not a smaller N"
                )
        elif state is not None and state.num_images is not None:
            num_images = int(state.num_images)
        if subset and num_images is None:
            raise InputError(
                "subset: a round over part of the target set needs the size N of the whole set (quotas and class "
                "weights use N); pass num_images= or a state with num_images"
            )
        self.num_images = num_images
        # True when N was given (num_images=, state): ids then index the set, [0, N)
        self._ids_index_set = num_images is not None
        if num_images is not None and self._image_size_known() is not None:
            check_num_images_fit(num_images, self._image_size_known())
        if state is not None and self.class_balanced and self.user_weights is None:
            if state.num_rounds and state.labels_pending():
                raise StateError(
                    "state: labels of an earlier round are still pending; class weights need them "
                    "(call state.set_labels or state.label_from_ground_truth first)"
                )
        self._acc = None
        self._module = None
        self._plan: RoundPlan | None = None
        self._seen: set[int] = set()
        self._image_size = tuple(state.image_size) if state is not None else self.out_size
        self._finished = False
        self._device: torch.device | None = None

    def _adopt_input_size(self, n: int | None) -> None:
        """N is the number of images given to ``select`` (B, or the sum of the shard sizes):
        the input is the whole set and its ids are free labels (not bounded by N)."""
        if self.num_images is None and n:
            self.num_images = check_int("num_images", n, 1)
            if self._image_size_known() is not None:
                check_num_images_fit(self.num_images, self._image_size_known())

    def _image_size_known(self) -> tuple[int, int] | None:
        return tuple(self.state.image_size) if self.state is not None else self.out_size

    def _set_image_size(self, size: tuple[int, int], name: str) -> None:
        """Fix the round's label size at its first batch, or check a later batch against it."""
        if self._image_size is None:
            check_radius(self.radius, size, self._regions)
            if self.num_images is not None:
                check_num_images_fit(self.num_images, size)
            self._image_size = tuple(size)
        elif tuple(size) != tuple(self._image_size):
            extra = " (or pass out_size)" if name == "logits" else ""
            raise InputError(f"{name}: expected spatial size {tuple(self._image_size)}{extra}, got {tuple(size)}")

    @property
    def counters(self):
        """The backend's ``cbda.backends.base.RoundCounters`` of this round (batches, pixels
        scored, candidates, candidates through the greedy and the bound on them, host reads),
        or None when the backend does not count or no batch was added."""
        return getattr(self._acc, "counters", None)

    @property
    def class_balanced(self) -> bool:
        return STRATEGIES[self.strategy][1]

    # -- the plan, fixed at the first batch --------------------------------------------------
    def _weights(self, num_classes: int, n: int) -> torch.Tensor | None:
        if self.user_weights is not None:
            return self.user_weights
        if not self.class_balanced:
            return None
        h, w = self._image_size
        if self.state is not None:
            counts = self.state.class_counts(before_round=self.round_index)
        else:
            counts = torch.zeros(num_classes, dtype=torch.int64)
        return compute_class_weights(counts, n * h * w, self.budget, self.round_index, self.rounds, self.goal)

    def _rebatcher(self, device, dtype, num_classes, low_size, out_size, module):
        size = self.batch_size
        if size is None and getattr(module, "NAME", None) in ("cuda", "triton"):
            wide = self.spec_heuristic == "ripu_pixel" or self.radius > 2
            per_image = bytes_per_image(num_classes, low_size, out_size, torch.empty(0, dtype=dtype).element_size(), wide)
            size = auto_batch_size(device, per_image)
        return Rebatcher(size) if size is not None else None

    def _feed(self, ids: torch.Tensor, logits: torch.Tensor) -> None:
        """Hand a validated batch to the backend, re-batched when a batch size applies."""
        batches = self._rebatch.push(ids, logits) if self._rebatch is not None else [(ids, logits)]
        for bi, bx in batches:
            self._acc.add(bi, _prior_picks(self.state, bi), logits=bx)

    def _flush(self) -> None:
        if self._rebatch is not None:
            for bi, bx in self._rebatch.flush():
                self._acc.add(bi, _prior_picks(self.state, bi), logits=bx)

    def _open(self, device: torch.device, dtype: torch.dtype, num_classes: int | None, batch: int,
              low_size: tuple[int, int] | None = None):
        scope = STRATEGIES[self.strategy][0]
        n = self.num_images
        if n is None and scope != "per_image" or n is None and self.class_balanced and self.user_weights is None:
            raise InputError(
                "num_images: the size N of the target set is needed (for K = N·m, whole-image quotas and "
                "class weights); pass num_images=, a state with num_images, or all logits as one tensor"
            )
        if num_classes is not None and self.num_classes is not None and num_classes != self.num_classes:
            raise InputError(f"logits: expected {self.num_classes} classes (dimension 1), got {num_classes}")
        c = self.num_classes or num_classes
        if self.goal is not None and c is not None:
            check_goal(self.goal, c)
        h, w = self._image_size
        m = per_image_quota(h, w, self.budget, self.rounds, self.radius)
        total = None
        if scope == "global":
            total = n * m
        elif scope == "image":
            total = image_quota(n, self.budget, self.rounds)
        weights = self._weights(c, n) if c is not None else None
        if self.class_balanced and weights is None:
            raise InputError("class_weights: the number of classes is unknown; give pseudo_labels with a state, or class_weights")
        r = window_radius(self.radius, (h, w))  # == self.radius for region strategies (checked)
        spec = ScoreSpec(self.spec_heuristic, r, self.out_size, self.seed)
        module = dispatch.resolve(self.backend, device, dtype)
        plan = RoundPlan(self.strategy, spec, r, (h, w), m if scope == "per_image" else None, total, weights)
        self._module, self._plan, self.num_classes = module, plan, c
        self._acc = module.open_round(plan)
        if low_size is not None:
            self._rebatch = self._rebatcher(device, dtype, c, low_size, (h, w), module)

    def _check_ids(self, image_ids, batch: int) -> torch.Tensor:
        ids = check_image_ids(image_ids, batch)
        again = self._seen.intersection(ids.tolist())
        if again:
            raise InputError(f"image_ids: image ids {sorted(again)[:5]} appear twice in this round")
        # ids index the target set, [0, N), when N was given; when N is the input's own size,
        # any distinct non-negative integers whose global pixel indices fit in int64
        check_id_range(ids, self.num_images if self._ids_index_set else None, self._image_size)
        return ids

    def _check_coverage(self, seen: int, missing) -> None:
        """No empty round; no partial one unless ``subset`` (``missing()``: a few absent ids)."""
        if seen == 0:
            raise InputError(
                "logits: the round received no image (an empty stream); nothing was selected or recorded"
            )
        if self.num_images is not None and not self.subset and seen < self.num_images:
            raise InputError(
                f"logits: the round saw {seen} of the {self.num_images} images of the target set (num_images); "
                f"missing ids include {missing()}. Stream every image, or pass subset=True for a deliberate "
                "subset (quotas and class weights still use the whole set's N)"
            )

    def _check_device(self, device: torch.device, name: str) -> None:
        if self._device is None:
            self._device = device
        elif device != self._device:
            raise InputError(f"{name}: every batch of a round must be on one device; expected {self._device}, got {device}")

    def _check_open(self):
        if self._finished:
            raise StateError("this round is finished; start a new AcquisitionRound")

    @_remember_error
    def add(self, image_ids, logits: torch.Tensor) -> None:
        """Score and consider one batch.

        Args:
            image_ids: (B,) int64 (tensor or sequence) global ids, distinct in the round.
            logits: (B, C, h, w) float32/bfloat16/float16 on any device.
        """
        self._check_open()
        check_logits(logits, num_classes=self.num_classes)
        b, c, h, w = logits.shape
        self._set_image_size(self.out_size or (h, w), "logits")
        ids = self._check_ids(image_ids, b)
        if b == 0:
            return
        if self._acc is None:
            self._open(logits.device, logits.dtype, c, b, (h, w))
        self._check_device(logits.device, "logits")
        self._feed(ids, logits)
        self._seen.update(ids.tolist())

    @_remember_error
    def add_scores(self, image_ids, scores: torch.Tensor, pseudo_labels: torch.Tensor | None = None) -> None:
        """Consider one batch of precomputed score maps (heuristic agnostic).

        Args:
            image_ids: (B,) int64 global ids.
            scores: (B, H, W) floating, finite (higher = more worth labelling).
            pseudo_labels: (B, H, W) integer classes in [0, C); needed by cbra/cbda.
        """
        self._check_open()
        need = self.class_balanced and self.user_weights is None or self.user_weights is not None
        scores, labels = check_scores(scores, pseudo_labels, self.num_classes, need)
        b, h, w = scores.shape
        self._set_image_size((h, w), "scores")
        ids = self._check_ids(image_ids, b)
        if b == 0:
            return
        if self._acc is None:
            c = self.num_classes
            if c is None and labels is not None and self.class_balanced:
                raise InputError("class_weights: the number of classes is unknown for precomputed scores; pass a state or class_weights")
            self._open(scores.device, torch.float32, c, b)
        self._check_device(scores.device, "scores")
        self._flush()
        self._acc.add(ids, _prior_picks(self.state, ids), scores=scores.to(torch.float32), labels=labels)
        self._seen.update(ids.tolist())

    def finish(self, commit: bool = True) -> Selection:
        """The round's picks; with a state and ``commit``, record them as a new round."""
        self._check_open()
        if self._group is not None:
            from ..distributed import finish_sharded

            return finish_sharded(self, commit)
        self._check_coverage(len(self._seen), lambda: _absent(self._seen, self.num_images))
        picks, weights = self._local_picks()
        sel = self._selection(picks, weights)
        if self.state is not None and commit:
            self.state.record(sel)
        self._finished = True
        return sel

    def _local_picks(self):
        """(Picks of the images this process saw, class weights applied or None)."""
        if self._acc is None:
            from ..backends.base import Picks

            return Picks.empty(), None
        self._flush()
        return self._acc.finish(), self._plan.class_weights

    def _selection(self, picks, weights) -> Selection:
        return Selection(
            image_ids=picks.image_ids.cpu(),
            ys=picks.ys.cpu(),
            xs=picks.xs.cpu(),
            scores=picks.scores.cpu().to(torch.float32),
            classes=picks.classes.cpu(),
            radius=self.radius,
            image_size=tuple(self._image_size),
            round_index=self.round_index,
            strategy=self.strategy,
            class_weights=weights,
            predicted_counts=picks.predicted_counts.cpu() if picks.predicted_counts is not None else None,
        )


def _absent(seen: set[int], n: int, limit: int = 5) -> list[int]:
    """The first ``limit`` ids of [0, n) not in ``seen``."""
    out = []
    for i in range(n):
        if i not in seen:
            out.append(i)
            if len(out) == limit:
                break
    return out


def _batches(logits, image_ids):
    """Normalise ``logits`` into (image_ids, logits) batches."""
    if isinstance(logits, torch.Tensor):
        yield image_ids, logits
        return
    if not isinstance(logits, Iterable):
        raise InputError(f"logits: expected a tensor (B, C, h, w) or an iterable of (image_ids, logits), got {type(logits).__name__}")
    if image_ids is not None:
        raise InputError("image_ids: give the ids inside each (image_ids, logits) batch when logits is an iterable")
    for item in logits:
        if not (isinstance(item, (tuple, list)) and len(item) == 2):
            raise InputError("logits: each item of the iterable must be a pair (image_ids, logits)")
        yield item[0], item[1]


def select(
    logits=None,
    *,
    scores=None,
    pseudo_labels=None,
    image_ids=None,
    budget: float,
    rounds: int = 5,
    round_index: int | None = None,
    strategy: str = "cbda",
    heuristic: str = "ripu",
    radius: int = 1,
    out_size: tuple[int, int] | None = None,
    state=None,
    goal=None,
    class_weights=None,
    backend: str = "auto",
    num_images: int | None = None,
    seed: int = 0,
    commit: bool = True,
    subset: bool = False,
    batch_size: int | None = None,
    shard: bool = False,
    process_group=None,
) -> Selection:
    """Run one acquisition round and return what to label.

    Args:
        logits: (B, C, h, w) float32/bfloat16/float16 tensor, or an iterable of
            ``(image_ids, logits)`` batches consumed streaming (then ``num_images`` or
            ``state.num_images`` gives N).
        scores, pseudo_labels: precomputed (B, H, W) scores and int64 classes instead of logits.
        image_ids: (B,) int64 global ids of a tensor input (default 0..B-1).
        budget: total labelled fraction over all rounds, in (0, 1]; each round takes
            budget/rounds, counted in regions of (2r+1)² pixels as RIPU does.
        rounds: number of rounds R. round_index: 1-based; default state.num_rounds + 1 (or 1).
        strategy: ``image``, ``ra``, ``da``, ``cbra`` or ``cbda``.
        heuristic: see ``cbda.HEURISTICS``. radius: region radius r.
        out_size: (H, W) label size the logits are upsampled to inside the kernel.
        state: ``cbda.ActiveLabelState``: earlier picks block overlapping centres, its class
            counts give the class weights, and with ``commit`` the picks are recorded in it.
        goal: (C,) goal class distribution (uniform by default).
        class_weights: (C,) weights to use instead of those from the state's counts.
        backend: ``auto``, ``reference``, ``cpu``, ``triton`` or ``cuda``.
        num_images: N, the size of the target set; must equal ``state.num_images`` when both
            are known. When N is given (here or by the state) the image ids index the set and
            lie in [0, N). When neither gives it, N is the number of images given (B, or the
            sum of the shard sizes) and the ids are any distinct non-negative integers.
        seed: seed of the ``random`` heuristic.
        commit: record the picks in ``state``.
        subset: the input is deliberately only part of the target set. Without it, when N is
            known (``num_images``, ``state.num_images``), a round that does not see every id in
            [0, N) raises, so a short data loader can never concentrate the budget on fewer
            images unnoticed. With it, quotas and class weights still use the whole set's N
            (``da``: K = N·m picks among the images given), so N must be known. A round that
            sees no image always raises.
        batch_size: images per backend batch (the input's batches are joined or split; picks
            do not depend on it). None: from the device's free memory on the GPU backends,
            the batches as given elsewhere.
        shard: the input is this process's shard of the target set: every rank of
            ``process_group`` (default: the initialised default group) calls ``select`` with
            its own images (globally distinct ids; a shard may be empty) and gets the same
            global selection, equal to one process selecting over all images; with ``commit``
            every rank records it in its replica of ``state``. N defaults to the sum of the
            shard sizes. If any rank fails, every rank raises and nobody records.
        process_group: a ``torch.distributed`` group; implies ``shard``.
    Returns:
        ``cbda.Selection`` (image_ids, ys, xs int64; scores float32; classes int64; in pick
        order).
    """
    from .. import distributed

    group = distributed.resolve_group(shard, process_group)
    given = None
    if isinstance(logits, torch.Tensor):
        given = logits.shape[0] if logits.dim() == 4 else None
    elif isinstance(scores, torch.Tensor):
        given = scores.shape[0] if scores.dim() == 3 else None
    if group is not None:  # the sum of the shard sizes; on every rank, whatever its arguments
        given = distributed.global_num_images(given, group)
    try:  # in a sharded round a local error must reach the other ranks, so catch from here
        if (logits is None) == (scores is None):
            raise InputError("logits/scores: give exactly one of logits (a tensor or batches) or scores")
        if scores is None and pseudo_labels is not None:
            raise InputError("pseudo_labels: only used together with scores")
        rnd = AcquisitionRound(
            budget=budget, rounds=rounds, round_index=round_index, strategy=strategy, heuristic=heuristic,
            radius=radius, out_size=out_size, state=state, goal=goal, class_weights=class_weights,
            backend=backend, num_images=num_images, seed=seed, subset=subset, batch_size=batch_size,
            process_group=group,
        )
        if not subset:
            rnd._adopt_input_size(given)
        if scores is not None:
            rnd.add_scores(image_ids, scores, pseudo_labels)
        else:
            for ids, batch in _batches(logits, image_ids):
                if not isinstance(batch, torch.Tensor):
                    raise InputError(f"logits: expected tensors (B, C, h, w) in each batch, got {type(batch).__name__}")
                rnd.add(ids if ids is not None else None, batch)
    except Exception as e:
        if group is None:
            raise
        distributed.fail_round(e, group)  # every rank learns of it and raises
    return rnd.finish(commit=commit)
