"""The CUDA tile kernel's arithmetic, run on the host (no GPU needed).

csrc/cuda/tile_math.h holds every per-pixel and per-tile computation of tile_kernel as
__host__ __device__ code; tests/cuda_host_harness.cpp compiles the same header with the host
compiler and runs the kernel's phases tile by tile, thread by thread in thread order, between
the barriers. Its score and label maps are compared with the reference: labels identical,
scores within the GPU tolerance (1e-5 relative, 1e-6 absolute). Skipped without a C++
compiler; the build is cached in the temporary directory, keyed by the sources.

The SFU approximations (ex2, lg2, rcp) run as accurate libm calls on the host; a second run
perturbs every one of them by the error bounds of the hardware instructions (relative 2^-22
for ex2 and lg2, absolute 2^-22 for lg2 near 1, relative 2^-23 for rcp) in a pseudo-random
direction, and the scores must still be within the tolerance.
"""

from __future__ import annotations

import hashlib
import math
import os
import shutil
import struct
import subprocess
import tempfile

import numpy as np
import pytest
import torch

from cbda.reference.scores import reference_score, upsample_logits
from cbda.scores import ScoreSpec, mix32
from helpers import random_logits

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SOURCES = [os.path.join(ROOT, "tests", "cuda_host_harness.cpp"), os.path.join(ROOT, "csrc", "cuda", "tile_math.h"),
           os.path.join(ROOT, "csrc", "common", "mix32.h")]
CXX = shutil.which(os.environ.get("CXX", "g++")) or shutil.which("c++")
HEURISTICS = {"ripu": 0, "entropy": 2, "margin": 3, "least_confidence": 4, "random": 5}
DTYPES = {torch.float32: 0, torch.bfloat16: 1, torch.float16: 2}
# the hardware bounds the host emulation perturbs by (see the module docstring)
SFU_ERRORS = (2.0**-22, 2.0**-22, 2.0**-22, 2.0**-23)

pytestmark = pytest.mark.skipif(CXX is None, reason="no host C++ compiler")


@pytest.fixture(scope="session")
def harness() -> str:
    digest = hashlib.sha256(b"".join(open(p, "rb").read() for p in SOURCES)).hexdigest()[:16]
    out = os.path.join(tempfile.gettempdir(), f"cbda-host-math-{digest}")
    if not os.path.exists(out):
        tmp = f"{out}.{os.getpid()}"
        cmd = [CXX, "-O2", "-std=c++17", "-ffp-contract=off", "-Wall", "-Wno-unknown-pragmas",
               "-I", os.path.join(ROOT, "csrc"), "-o", tmp, SOURCES[0]]
        proc = subprocess.run(cmd, capture_output=True, text=True)
        assert proc.returncode == 0, proc.stderr[-4000:]
        os.replace(tmp, out)  # atomic: parallel sessions share the cache
    return out


def run_tiles(harness, logits, out_size, heuristic="ripu", radius=1, seed=0, image_ids=None, sfu_error=False,
              check_values=False):
    """Score maps (B, H, W) float32, labels (B, H, W) int64, the bad flag and the value
    mismatch count of the harness."""
    b, c, h, w = logits.shape
    H, W = out_size
    ids = list(range(b)) if image_ids is None else list(image_ids)
    seed_hash = mix32(seed & 0xFFFFFFFF)
    if logits.dtype == torch.float32:
        raw = logits.contiguous().numpy().tobytes()
    else:
        raw = logits.contiguous().view(torch.int16).numpy().tobytes()
    header = struct.pack("<10iI4f", b, c, h, w, H, W, radius, HEURISTICS[heuristic], DTYPES[logits.dtype],
                         int(check_values), seed_hash, *(SFU_ERRORS if sfu_error else (0.0,) * 4))
    with tempfile.TemporaryDirectory() as tmp:
        src, dst = os.path.join(tmp, "in"), os.path.join(tmp, "out")
        with open(src, "wb") as f:
            f.write(header + struct.pack(f"<{b}q", *ids) + raw)
        proc = subprocess.run([harness, src, dst], capture_output=True, text=True)
        assert proc.returncode == 0, proc.stderr
        data = open(dst, "rb").read()
    n = b * H * W
    scores = torch.from_numpy(np.frombuffer(data, np.float32, n).copy()).reshape(b, H, W)
    labels = torch.from_numpy(np.frombuffer(data, np.int32, n, offset=4 * n).astype(np.int64)).reshape(b, H, W)
    bad, mismatches = struct.unpack("<2i", data[8 * n:8 * n + 8])
    return scores, labels, bad, mismatches


def reference(logits, out_size, heuristic="ripu", radius=1, seed=0, image_ids=None):
    spec = ScoreSpec(heuristic=heuristic, radius=radius, out_size=out_size, seed=seed)
    ids = None if image_ids is None else torch.tensor(image_ids)
    return reference_score(logits, spec, ids)


def masked_logits(b, c, h, w, seed, dtype):
    """Random logits with masked classes: scattered -inf entries (classes >= 2), a whole -inf
    class plane, and a pixel where every class but one is -inf. Class 1 is never masked
    elsewhere, so that no upsampled pixel has every class -inf (an error)."""
    x = random_logits(b, c, h, w, seed=seed).to(torch.float32)
    g = torch.Generator().manual_seed(seed + 1)
    hit = torch.rand(x.shape, generator=g) < 0.3
    hit[:, :2] = False
    x[hit] = -math.inf
    x[:, c // 2] = -math.inf
    x[:, :, 0, 0] = -math.inf
    x[:, 1, 0, 0] = 0.5
    return x.to(dtype)


SHAPES = [((13, 17), (37, 50)), ((9, 11), (20, 31)), ((16, 16), (64, 64)), ((8, 20), (33, 70)), ((5, 7), (1, 40)),
          ((1, 1), (3, 3)), ((12, 10), (12, 10))]


@pytest.mark.parametrize("dtype", list(DTYPES))
@pytest.mark.parametrize("c", [19, 16, 5, 32])
@pytest.mark.parametrize("radius", [0, 1, 2])
def test_tiles_match_reference(harness, dtype, c, radius):
    start = (c + radius + DTYPES[dtype]) % len(SHAPES)
    for i, ((h, w), out) in enumerate((SHAPES * 2)[start:start + 3]):  # each shape in several cases
        logits = random_logits(2, c, h, w, seed=100 * radius + c + i, dtype=dtype)
        s, lab, bad, mismatches = run_tiles(harness, logits, out, radius=radius, check_values=True)
        rs, rlab = reference(logits, out, radius=radius)
        assert bad == 0 and mismatches == 0
        assert torch.equal(lab, rlab), (h, w, out)
        torch.testing.assert_close(s, rs, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("dtype", list(DTYPES))
@pytest.mark.parametrize("radius", [0, 1, 2])
def test_masked_classes(harness, dtype, radius):
    for c in (19, 7):
        logits = masked_logits(2, c, 11, 13, seed=c + radius, dtype=dtype)
        for out in ((30, 41), (11, 13)):
            s, lab, bad, mismatches = run_tiles(harness, logits, out, radius=radius, check_values=True)
            rs, rlab = reference(logits, out, radius=radius)
            assert bad == 0 and mismatches == 0
            assert torch.equal(lab, rlab)
            torch.testing.assert_close(s, rs, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("heuristic", ["entropy", "margin", "least_confidence", "random"])
@pytest.mark.parametrize("c", [19, 6])
def test_pointwise_heuristics(harness, heuristic, c):
    logits = random_logits(3, c, 10, 12, seed=c, dtype=torch.bfloat16)
    ids = [5, 0, 2**33 + 7]
    s, lab, bad, _ = run_tiles(harness, logits, (27, 35), heuristic=heuristic, radius=0, seed=-3, image_ids=ids)
    rs, rlab = reference(logits, (27, 35), heuristic=heuristic, radius=0, seed=-3, image_ids=ids)
    assert bad == 0 and torch.equal(lab, rlab)
    if heuristic == "random":
        assert torch.equal(s, rs)
    else:
        torch.testing.assert_close(s, rs, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("radius", [0, 1, 2])
def test_sfu_error_bounds_keep_scores_within_tolerance(harness, radius):
    # C = 19 at Cityscapes' 4x, bf16, plus confident pixels (tiny entropies)
    logits = random_logits(2, 19, 16, 24, seed=7 + radius, dtype=torch.float32)
    logits[:, 3, :4] += 30.0
    logits = logits.to(torch.bfloat16)
    for heuristic in ("ripu", "entropy", "margin"):
        r = radius if heuristic == "ripu" else 0
        s, lab, bad, _ = run_tiles(harness, logits, (61, 93), heuristic=heuristic, radius=r, sfu_error=True)
        rs, rlab = reference(logits, (61, 93), heuristic=heuristic, radius=r)
        assert bad == 0 and torch.equal(lab, rlab)
        torch.testing.assert_close(s, rs, rtol=1e-5, atol=1e-6)


def test_bad_logits_set_the_flag(harness):
    for poison in (math.nan, math.inf):
        for dtype in DTYPES:
            logits = random_logits(2, 19, 9, 10, seed=3).clone()
            logits[1, 4, 8, 9] = poison  # the last low-res pixel: a corner tap of weight 1
            _, _, bad, _ = run_tiles(harness, logits.to(dtype), (25, 28))
            assert bad == 1
    logits = random_logits(1, 5, 6, 6, seed=4)
    logits[0, :, 2, 3] = -math.inf  # a pixel with every class masked
    _, _, bad, _ = run_tiles(harness, logits, (6, 6))
    assert bad == 1
    _, _, bad, _ = run_tiles(harness, random_logits(1, 5, 6, 6, seed=4), (6, 6))
    assert bad == 0


def test_pure_windows_score_as_the_reference(harness):
    # one class everywhere: P is exactly -ln(1 + eps) / ln C per the table, as the reference
    logits = torch.full((1, 19, 8, 8), -2.0)
    logits[:, 11] = 4.0
    logits = logits + 0.01 * random_logits(1, 19, 8, 8, seed=1)
    s, lab, _, _ = run_tiles(harness, logits, (29, 31), radius=1)
    rs, rlab = reference(logits, (29, 31), radius=1)
    assert torch.equal(lab, rlab) and bool((lab == 11).all())
    assert bool((s < 0).all())
    torch.testing.assert_close(s, rs, rtol=1e-5, atol=1e-9)


def test_staged_values_equal_the_generic_formula_at_odd_scales(harness):
    # scales whose taps land exactly on source pixels (weight 0) and -inf neighbours of them
    for (h, w), out in (((4, 5), (7, 9)), ((3, 3), (5, 5)), ((6, 4), (11, 10)), ((7, 9), (4, 5))):
        logits = masked_logits(1, 6, h, w, seed=h * w, dtype=torch.float32)
        _, lab, _, mismatches = run_tiles(harness, logits, out, radius=1, check_values=True)
        assert mismatches == 0
        assert torch.equal(lab, upsample_logits(logits, out).argmax(1))
