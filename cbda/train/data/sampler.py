"""Index streams for training: RIPU's class-balanced source sampler and a shuffled target stream.

Both are *replayable*: their output depends only on the seed and how many indices were drawn, so
a checkpoint stores the count and `--resume` replays up to it (cheap: no image is read). That
also keeps them correct under DataLoader prefetching, which draws batches ahead of training.
"""
from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Callable, Iterator

import numpy as np


def class_presence(num_images: int, read_gt: Callable[[int], np.ndarray], num_classes: int,
                   cache: str | Path | None = None, key: list[str] | None = None) -> list[list[int]]:
    """Per image, the sorted train ids present in its labels. Cached as JSON at `cache` (checked
    against `key`, e.g. the file names, so a different dataset never reuses a stale index)."""
    if cache is not None and Path(cache).is_file():
        data = json.loads(Path(cache).read_text())
        if data.get("key") == key and data.get("num_classes") == num_classes:
            return data["classes"]
    classes = []
    for i in range(num_images):
        present = np.unique(read_gt(i))
        classes.append([int(c) for c in present if c < num_classes])
    if cache is not None:
        Path(cache).parent.mkdir(parents=True, exist_ok=True)
        # one temporary name per process: under torchrun every rank may build the cache at once
        tmp = Path(f"{cache}.tmp-{os.getpid()}")
        tmp.write_text(json.dumps({"key": key, "num_classes": num_classes, "classes": classes}))
        tmp.replace(cache)
    return classes


class ClassBalancedSampler:
    """Infinite stream of source indices, balancing class presence (RIPU's source sampler).

    Each draw picks a class c with probability proportional to 1 / ln(1.01 + f_c), f_c the
    share of class c among the class presences drawn so far, then an image containing c
    uniformly; the image's classes are added to the counts. Classes absent from every image are
    never picked.
    """

    def __init__(self, classes_per_image: list[list[int]], num_classes: int, seed: int = 0):
        self.num_classes = num_classes
        self.seed = seed
        self.by_class = [[] for _ in range(num_classes)]
        for i, cls in enumerate(classes_per_image):
            for c in cls:
                self.by_class[c].append(i)
        self.classes_per_image = classes_per_image
        self.available = np.array([len(v) > 0 for v in self.by_class])
        if not self.available.any():
            raise ValueError("class-balanced sampler: no image contains any labelled class")
        self.reset()

    def reset(self) -> None:
        self.rng = np.random.default_rng(self.seed)
        self.counts = np.zeros(self.num_classes, np.float64)
        self.drawn = 0

    def next(self) -> int:
        total = self.counts.sum()
        freq = self.counts / total if total > 0 else self.counts
        weight = np.where(self.available, 1.0 / np.log(1.01 + freq), 0.0)
        c = int(self.rng.choice(self.num_classes, p=weight / weight.sum()))
        pool = self.by_class[c]
        index = pool[int(self.rng.integers(len(pool)))]
        self.counts[self.classes_per_image[index]] += 1
        self.drawn += 1
        return index

    def skip_to(self, drawn: int) -> None:
        """Replay from the start until `drawn` indices have been produced."""
        if drawn < self.drawn:
            self.reset()
        while self.drawn < drawn:
            self.next()


class ShuffledStream:
    """Infinite stream of indices in 0..n-1: a fresh permutation per epoch, seeded by (seed, epoch)."""

    def __init__(self, n: int, seed: int = 0, shuffle: bool = True):
        if n <= 0:
            raise ValueError("ShuffledStream needs at least one index")
        self.n, self.seed, self.shuffle = n, seed, shuffle
        self.drawn = 0

    def next(self) -> int:
        epoch, pos = divmod(self.drawn, self.n)
        if pos == 0 or not hasattr(self, "_perm") or self._epoch != epoch:
            rng = np.random.default_rng([self.seed, epoch])
            self._perm = rng.permutation(self.n) if self.shuffle else np.arange(self.n)
            self._epoch = epoch
        self.drawn += 1
        return int(self._perm[pos])

    def skip_to(self, drawn: int) -> None:
        self.drawn = drawn


class BatchStream:
    """Batch sampler for a DataLoader: yields lists of `batch_size` indices from a stream.

    `consumed` is counted by the trainer (batches actually used), not by this iterator, which
    runs ahead when the DataLoader prefetches."""

    def __init__(self, stream, batch_size: int):
        self.stream, self.batch_size = stream, batch_size

    def __iter__(self) -> Iterator[list[int]]:
        while True:
            yield [self.stream.next() for _ in range(self.batch_size)]
