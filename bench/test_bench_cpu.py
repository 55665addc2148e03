"""pytest-benchmark cases for the cpu backend beside the reference (same process, same inputs).

    python -m pytest bench --benchmark-only          # (not collected by `pytest tests`)

A smaller shape than bench_cpu.py so the reference finishes quickly; correctness (identical
picks) is checked before anything is timed.
"""

import os
import sys

import pytest
import torch

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import cbda  # noqa: E402
from cbda import _native  # noqa: E402

pytestmark = pytest.mark.skipif(_native.load("_cpu") is None, reason="cbda._cpu not built")

N, C, LOW, SIZE = 4, 19, (64, 128), (256, 512)


@pytest.fixture(scope="module")
def logits():
    g = torch.Generator().manual_seed(0)
    return torch.empty((N, C, *LOW)).normal_(generator=g).mul_(3.0)


def _select(logits, backend, strategy="cbda", heuristic="ripu", dtype=torch.float32):
    x = logits.to(dtype)
    batches = [([i, i + 1], x[i:i + 2]) for i in range(0, N, 2)]
    return cbda.select(iter(batches), budget=0.05, rounds=5, strategy=strategy, heuristic=heuristic, radius=1,
                       out_size=SIZE, num_images=N, backend=backend)


@pytest.fixture(scope="module", autouse=True)
def same_picks(logits):
    a, b = _select(logits, "cpu"), _select(logits, "reference")
    assert torch.equal(a.image_ids, b.image_ids) and torch.equal(a.ys, b.ys) and torch.equal(a.xs, b.xs)


@pytest.mark.parametrize("backend", ["cpu", "reference"])
def test_round_cbda_ripu(benchmark, logits, backend):
    benchmark.group = "round cbda ripu r=1"
    benchmark.pedantic(_select, args=(logits, backend), rounds=3 if backend == "cpu" else 1, iterations=1)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float16])
def test_round_cpu_dtypes(benchmark, logits, dtype):
    benchmark.group = "cpu dtypes"
    benchmark.pedantic(_select, args=(logits, "cpu", "cbda", "ripu", dtype), rounds=3, iterations=1)


@pytest.mark.parametrize("heuristic", ["ripu", "ripu_pixel", "entropy", "margin", "least_confidence", "random"])
def test_score_cpu_heuristics(benchmark, logits, heuristic):
    benchmark.group = "cbda.score cpu"
    benchmark(cbda.score, logits, heuristic, 1, SIZE, "cpu")
