"""One acquisition round through the public API: the model's own low-resolution logits are
streamed into cbda.select with out_size = the label size, so the kernels upsample them on the
fly (nothing full-resolution is materialised here), then the picks get their labels."""
from __future__ import annotations

from typing import Callable, Iterator

import numpy as np
import torch

import cbda


def stream_logits(model, loader, prepare, autocast=None) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
    """Yield (image_ids (B,) int64, logits (B, C, h, w) on the model's device) for every target
    image. Must be consumed under torch.no_grad() with the model in eval mode. bfloat16 logits
    from autocast are passed as they are: every backend reads them and computes in float32."""
    for batch in loader:
        images = prepare(batch["image"])
        if autocast is not None:
            with autocast():
                logits = model(images)
        else:
            logits = model(images)
        yield torch.as_tensor(batch["index"], dtype=torch.int64), logits.contiguous()


def run_round(model, loader, state, round_index: int, active: dict, label_size: tuple[int, int],
              num_images: int, gt_lookup: Callable[[int], np.ndarray], prepare, autocast=None,
              seed: int = 0, shard: bool = False):
    """Select round `round_index` into `state` and label it from the ground truth.

    active: the `active` config section (strategy, budget, rounds, radius, heuristic, backend,
    goal, select_batch_size: images per kernel batch, None = from free GPU memory; the model's
    own forward batches of `batch_size` are joined into those). gt_lookup(image_id) -> (H, W) uint8 train ids at label_size. With `shard`, `loader`
    holds this rank's share of the target images and every rank of the default process group
    must call this together: the selection is merged across ranks (cbda.select(shard=True)) and
    every rank labels it into its own replica of the state. gt_lookup None: the round stays
    pending (human labels, `active.labels: human`). Returns the Selection."""
    was_training = model.training
    model.eval()
    with torch.no_grad():
        sel = cbda.select(
            stream_logits(model, loader, prepare, autocast),
            budget=float(active["budget"]), rounds=int(active["rounds"]), round_index=round_index,
            strategy=active["strategy"], heuristic=active.get("heuristic", "ripu"),
            radius=int(active.get("radius", 1)), out_size=tuple(label_size), state=state,
            goal=active.get("goal"), backend=active.get("backend", "auto"),
            num_images=num_images, seed=seed, shard=shard, batch_size=active.get("select_batch_size"))
    if gt_lookup is not None:
        state.label_from_ground_truth(gt_lookup, round_index=round_index)
    model.train(was_training)
    return sel


def round_summary(state, class_names, round_index: int, iteration: int, num_picks: int) -> dict:
    """The metrics.json "rounds" entry after round `round_index`: labelled-class histogram of all
    rounds so far, its imbalance score, and the labelled share of all pixels."""
    counts = state.class_counts().tolist()
    H, W = state.image_size if hasattr(state, "image_size") else (0, 0)
    total = getattr(state, "num_images", None)
    labelled = int(sum(counts))
    frac = labelled / (total * H * W) if total and H and W else None
    score = float(cbda.imbalance_score(torch.tensor(counts, dtype=torch.float64))) if labelled else None
    return {"round": round_index, "iteration": iteration,
            "class_histogram": {n: int(c) for n, c in zip(class_names, counts)},
            "labelled_pixels": labelled, "labelled_fraction": frac,
            "imbalance_score": score, "num_picks": num_picks}
