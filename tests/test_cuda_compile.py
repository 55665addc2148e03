"""Every CUDA source compiles with nvcc (docs/architecture.md, Testing): runs wherever nvcc is found, GPU or not.

One arch (sm_80, or the first of CBDA_CUDA_ARCH_LIST) keeps it quick; the files compile in
parallel. A failure shows nvcc's stderr. The host module (module.cpp) is compiled too, with
the host compiler nvcc drives, since it includes the CUDA runtime header.
"""

from __future__ import annotations

import glob
import os
import shutil
import subprocess
from concurrent.futures import ThreadPoolExecutor

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SOURCES = sorted(glob.glob(os.path.join(ROOT, "csrc", "cuda", "*.cu")))


def _nvcc() -> str | None:
    if os.environ.get("NVCC"):
        return shutil.which(os.environ["NVCC"])
    for home in (os.environ.get("CUDA_HOME"), os.environ.get("CUDA_PATH"), "/usr/local/cuda"):
        if home and os.path.exists(os.path.join(home, "bin", "nvcc")):
            return os.path.join(home, "bin", "nvcc")
    return shutil.which("nvcc")


NVCC = _nvcc()
pytestmark = pytest.mark.skipif(NVCC is None, reason="nvcc not found")


def _arch() -> str:
    first = os.environ.get("CBDA_CUDA_ARCH_LIST", "80").replace(",", ";").split(";")[0].strip()
    return first.replace(".", "") or "80"


def _compile(src: str, out_dir: str) -> tuple[str, int, str]:
    arch = _arch()
    obj = os.path.join(out_dir, os.path.basename(src) + ".o")
    cmd = [
        NVCC, "-c", src, "-o", obj, "-I", os.path.join(ROOT, "csrc"), "-std=c++17", "-O3",
        "--expt-relaxed-constexpr", "-Xcompiler", "-fPIC", f"-gencode=arch=compute_{arch},code=sm_{arch}",
    ]
    proc = subprocess.run(cmd, capture_output=True, text=True)
    return src, proc.returncode, proc.stderr


def test_cuda_sources_exist():
    assert SOURCES, "csrc/cuda/*.cu is empty"


def _compile_host(out_dir: str) -> tuple[str, int, str]:
    import sysconfig

    import pybind11

    src = os.path.join(ROOT, "csrc", "cuda", "module.cpp")
    cmd = [
        NVCC, "-x", "c++", "-c", src, "-o", os.path.join(out_dir, "module.o"), "-std=c++17", "-Xcompiler", "-fPIC",
        "-I", os.path.join(ROOT, "csrc"), "-I", pybind11.get_include(), "-I", sysconfig.get_paths()["include"],
    ]
    proc = subprocess.run(cmd, capture_output=True, text=True)
    return src, proc.returncode, proc.stderr


def test_every_cuda_source_compiles(tmp_path):
    """All .cu files (device code for one arch) and module.cpp, in parallel."""
    pytest.importorskip("pybind11")
    jobs = max(1, os.cpu_count() or 1)
    with ThreadPoolExecutor(max_workers=jobs) as pool:
        futures = [pool.submit(_compile, s, str(tmp_path)) for s in SOURCES]
        futures.append(pool.submit(_compile_host, str(tmp_path)))
        results = [f.result() for f in futures]
    failed = [(os.path.relpath(s, ROOT), err) for s, rc, err in results if rc != 0]
    assert not failed, "\n\n".join(f"nvcc failed on {s}:\n{err[-6000:]}" for s, err in failed)
