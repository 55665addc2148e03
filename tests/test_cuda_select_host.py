"""The radix select of csrc/cuda/select.cu, on the CPU: tests/cuda_select_harness.cu runs the
per-entry steps of csrc/cuda/select.cuh (the code the kernels run: key layouts, digits,
prefixes, skipped passes, the keep test, the cut-off rule) in the kernels' order, and must keep
exactly the entries a sort keeps. Built with nvcc as host code (no GPU needed); skipped without
nvcc. The kernels' parallel parts (atomics, scans, warp appends) need a GPU
(tests/test_cuda_backend.py)."""

from __future__ import annotations

import os
import subprocess

import numpy as np
import pytest

from cbda.compile_report import find_nvcc

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
NVCC = find_nvcc()
pytestmark = pytest.mark.skipif(NVCC is None, reason="nvcc not found")
_M32 = 0xFFFFFFFF


@pytest.fixture(scope="module")
def harness(tmp_path_factory):
    exe = str(tmp_path_factory.mktemp("select") / "harness")
    cmd = [NVCC, "-std=c++17", "-I", os.path.join(ROOT, "csrc"), "-o", exe,
           os.path.join(ROOT, "tests", "cuda_select_harness.cu")]
    proc = subprocess.run(cmd, capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr[-4000:]
    return exe


def _run(exe, ints) -> tuple[list[int], tuple[int, int]]:
    proc = subprocess.run([exe], input=" ".join(str(int(v)) for v in ints), capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr
    kept_line, cut_line = proc.stdout.splitlines()
    _, bits, gidx = cut_line.split()
    return sorted(int(v) for v in kept_line.split()), (int(bits), int(gidx))


def _order_bits(f: np.ndarray) -> np.ndarray:
    u = f.astype(np.float32).view(np.uint32).astype(np.uint64)
    u = np.where((u << np.uint64(1)) & np.uint64(_M32) == 0, np.uint64(0), u)  # -0.0 -> +0.0
    return np.where(u & np.uint64(0x80000000), ~u & np.uint64(_M32), u | np.uint64(0x80000000))


def _tie_scores(rng, n):
    """Scores with many ties, negative values and both zeros."""
    s = rng.integers(-3, 4, n).astype(np.float32) * np.float32(0.5)
    s[rng.random(n) < 0.1] = -0.0
    return s


def _bits(f: float) -> int:
    return int(np.array([f], dtype=np.float32).view(np.uint32)[0])


def _stricter(a, b) -> bool:
    """(score, gidx) a comes before b in the order (score desc, gidx asc)."""
    return a[0] > b[0] or (a[0] == b[0] and a[1] < b[1])


def _candidates(rng, b, hw, pixbits, n):
    cell = rng.choice(b * hw, n, replace=False)  # distinct (slot, pixel) pairs, in any order
    slot, pix = cell // hw, cell % hw
    score = _tie_scores(rng, n)
    key = (slot.astype(np.uint64) << np.uint64(32 + pixbits)) | (
        (~_order_bits(score) & np.uint64(_M32)) << np.uint64(pixbits)) | pix.astype(np.uint64)
    return slot, pix, score, key


@pytest.mark.parametrize("seed", range(6))
def test_per_slot_select_keeps_the_best_of_each_image(harness, seed):
    rng = np.random.default_rng(seed)
    b, h, w = int(rng.integers(1, 6)), int(rng.integers(3, 20)), int(rng.integers(3, 20))
    hw = h * w
    pixbits = max(1, (hw - 1).bit_length())
    n = int(rng.integers(1, b * hw // 2 + 2))
    slot, pix, score, key = _candidates(rng, b, hw, pixbits, n)
    limit = int(rng.integers(1, max(2, n // b)))
    counts = np.bincount(slot, minlength=b)
    ids = rng.choice(1000, b, replace=False)
    kept, cut = _run(harness, [0, n, b, pixbits, limit, hw, *key.view(np.int64), *counts, *np.zeros(b), *ids,
                               0, 0, 0])
    want = []
    for s in range(b):  # per image: score desc, pixel asc, the first `limit`
        idx = np.flatnonzero(slot == s)
        order = sorted(idx, key=lambda i: (-float(score[i]), int(pix[i])))
        want += [int(i) for i in order[:limit]]
    assert kept == sorted(want)
    assert cut == (0, 0)  # no cut-off per image


@pytest.mark.parametrize("seed", range(6))
def test_batch_select_orders_by_global_index_and_raises_the_cutoff(harness, seed):
    rng = np.random.default_rng(100 + seed)
    b, hw = int(rng.integers(2, 9)), int(rng.integers(5, 60))
    pixbits = max(1, (hw - 1).bit_length())
    n = int(rng.integers(2, b * hw))
    slot, pix, score, key = _candidates(rng, b, hw, pixbits, n)
    ids = rng.choice(2**40, b, replace=False)  # wider than the slot rank: the rank must stand in
    rank = np.argsort(np.argsort(ids))
    gidx = ids[slot] * hw + pix
    limit = int(rng.integers(1, n))
    start = (float(rng.integers(-3, 4)) * 0.5, int(rng.integers(0, 2**45))) if seed % 2 else (float("-inf"), 2**63 - 1)
    kept, cut = _run(harness, [1, n, b, pixbits, limit, hw, *key.view(np.int64), *np.bincount(slot, minlength=b),
                               *rank, *ids, 1, _bits(start[0]), start[1]])
    order = sorted(range(n), key=lambda i: (-float(score[i]), int(gidx[i])))
    assert kept == sorted(order[:limit])
    last = (float(score[order[limit - 1]]), int(gidx[order[limit - 1]]))
    want = last if _stricter(last, start) else start
    got = (float(np.array([cut[0]], dtype=np.uint32).view(np.float32)[0]), cut[1])
    assert got == want or (got[0] == want[0] == 0.0 and got[1] == want[1])  # -0.0 == +0.0


@pytest.mark.parametrize("seed", range(6))
def test_pick_trim_keeps_the_best_k_with_skipped_index_passes(harness, seed):
    rng = np.random.default_rng(200 + seed)
    n = int(rng.integers(1, 400))
    score = _tie_scores(rng, n)
    top = [8, 20, 33, 50, 62][seed % 5]
    gidx = rng.choice(2**top, n, replace=False) if top < 62 else rng.integers(0, 2**62, n)
    gmax = int(gidx.max()) + int(rng.integers(0, 3))
    limit = int(rng.integers(1, n + 2))
    kept, cut = _run(harness, [2, n, limit, gmax, *(_bits(s) for s in score), *gidx, 1, _bits(float("-inf")),
                               2**63 - 1])
    order = sorted(range(n), key=lambda i: (-float(score[i]), int(gidx[i])))
    assert kept == sorted(order[:limit])
    if n > limit:
        assert cut[1] == int(gidx[order[limit - 1]])
    else:
        assert cut == (_bits(float("-inf")), 2**63 - 1)  # nothing trimmed: no cut-off


def test_unique_key_means_exactly_limit_kept_on_a_full_plateau(harness):
    # every score equal: only the index decides; the select must still keep exactly `limit`
    n, limit = 300, 37
    gidx = np.arange(n)[::-1] * 7
    kept, cut = _run(harness, [2, n, limit, int(gidx.max()), *([_bits(1.0)] * n), *gidx, 1, _bits(float("-inf")),
                               2**63 - 1])
    assert len(kept) == limit and cut[1] == int(np.sort(gidx)[limit - 1])
