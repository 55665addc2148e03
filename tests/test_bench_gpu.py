"""bench/bench_gpu.py's CPU-tiny mode runs in CI, so the GPU benchmark cannot rot unseen, and
bench/gpu_check.sh is a valid script that runs the steps issue 13 names."""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def test_tiny_mode_runs_and_writes_results(tmp_path):
    from cbda.backends import cpu as cpu_backend
    import torch

    backends = ["reference"] + ([] if cpu_backend.not_supported_reasons(torch.device("cpu"), torch.float32) else ["cpu"])
    notes = tmp_path / "notes.txt"
    notes.write_text("== build: ok in 1 s\n")
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    proc = subprocess.run(
        [sys.executable, os.path.join(ROOT, "bench", "bench_gpu.py"), "--tiny", "--out", str(tmp_path),
         "--backends", ",".join(backends), "--notes", str(notes)],
        capture_output=True, text=True, cwd=str(tmp_path), env=env, timeout=600,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    files = sorted(p.name for p in tmp_path.glob("gpu-*"))
    assert len(files) == 2 and files[0].endswith(".json") and files[1].endswith(".md")
    data = json.loads((tmp_path / files[0]).read_text())
    assert data["tiny"] and data["device_name"] and data["steps"].startswith("== build")
    assert [r["backend"] for r in data["results"]] == backends
    for r in data["results"]:
        assert r["check"]["ok"], r["check"]
        assert len(r["latency"]) == 4 and all(row["ms_per_image"] > 0 for row in r["latency"])
        if r["backend"] != "reference":
            assert [rd["strategy"] for rd in r["rounds"]] == ["cbda", "ra"]
            assert all(rd["images"] == 6 and rd["picks"] > 0 for rd in r["rounds"])
    md = (tmp_path / files[1]).read_text()
    assert "| backend |" in md and "Whole rounds" in md


def test_tiny_mode_reports_a_wrong_backend(tmp_path, monkeypatch):
    # the worker's correctness gate: a backend whose scores are off is reported, not timed
    sys.path.insert(0, os.path.join(ROOT, "bench"))
    try:
        import bench_gpu
    finally:
        sys.path.pop(0)
    import cbda.backends.reference as ref

    real = ref.score
    calls = {"n": 0}

    def skewed(logits, spec, image_ids):
        calls["n"] += 1
        s, lab = real(logits, spec, image_ids)
        return (s + 1e-3 if calls["n"] == 1 else s), lab  # the backend's first call only

    monkeypatch.setattr(ref, "score", skewed)
    monkeypatch.setenv("CBDA_SELF_CHECK", "1")  # the worker turns it off; restored after the test
    cfg = bench_gpu._cfg(argparse.Namespace(tiny=True, repeat=1, round_images=6))
    cfg["round_budget"] = 10.0
    out = bench_gpu.worker("reference", cfg)
    assert not out["check"]["ok"] and out["latency"] == [] and out["check"]["max_abs_score_error"] >= 1e-3


def test_gpu_check_script_is_valid_and_complete():
    path = os.path.join(ROOT, "bench", "gpu_check.sh")
    text = open(path).read()
    if shutil.which("bash"):
        assert subprocess.run(["bash", "-n", path]).returncode == 0
    for step in ("pip install --no-build-isolation --no-deps", "-m pytest -m gpu", "cbda.info --check",
                 "bench/bench_gpu.py", "CBDA_BUILD_CUDA=1"):
        assert step in text, step
    assert 'BUDGET="${CBDA_GPU_CHECK_SECONDS:-480}"' in text  # 8 minutes
