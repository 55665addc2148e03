"""Every CUDA source compiles with nvcc (docs/architecture.md, Testing): runs wherever nvcc is found, GPU or not.

The device code is compiled for sm_80 and sm_90 (the default arch list) with ``-Xptxas -v``;
the resource report of every kernel is printed (registers, shared memory, stack) and any
spill fails the test. The files compile in parallel. A failure shows nvcc's stderr. The host
module (module.cpp) is compiled too, with the host compiler nvcc drives, since it includes
the CUDA runtime header. Without nvcc the tests skip.
"""

from __future__ import annotations

import glob
import os
import subprocess
from concurrent.futures import ThreadPoolExecutor

import pytest

from cbda.compile_report import ARCHS, compile_cuda_source, find_nvcc

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SOURCES = sorted(glob.glob(os.path.join(ROOT, "csrc", "cuda", "*.cu")))


NVCC = find_nvcc()
pytestmark = pytest.mark.skipif(NVCC is None, reason="nvcc not found")


def _compile(src: str, out_dir: str, arch: int, host: bool) -> tuple[str, int, str, list]:
    rc, err, rows = compile_cuda_source(NVCC, src, os.path.join(ROOT, "csrc"), out_dir, arch, host)
    return src, rc, err, rows


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


@pytest.fixture(scope="module")
def compiled(tmp_path_factory):
    """All .cu files (-Xptxas -v: sm_90 as a whole translation unit, as the build compiles
    it; sm_80 device code only, which is all its report needs) and module.cpp, in parallel,
    once."""
    pytest.importorskip("pybind11")
    out = str(tmp_path_factory.mktemp("nvcc"))
    jobs = max(1, os.cpu_count() or 1)
    with ThreadPoolExecutor(max_workers=jobs) as pool:
        futures = [pool.submit(_compile, s, out, arch, arch == ARCHS[-1]) for s in SOURCES for arch in ARCHS]
        host = pool.submit(_compile_host, out)
        results = [f.result() for f in futures]
        host_result = host.result()
    return results, host_result


def test_every_cuda_source_compiles(compiled):
    results, (hsrc, hrc, herr) = compiled
    failed = [(os.path.relpath(s, ROOT), err) for s, rc, err, _ in results if rc != 0]
    assert len(results) == len(SOURCES) * len(ARCHS)
    if hrc != 0:
        failed.append((os.path.relpath(hsrc, ROOT), herr))
    assert not failed, "\n\n".join(f"nvcc failed on {s}:\n{err[-6000:]}" for s, err in failed)


def test_no_cuda_kernel_spills(compiled):
    """ptxas resource report of every kernel for every arch: printed; zero spill bytes."""
    results, _ = compiled
    rows = [r for _, rc, _, rs in results if rc == 0 for r in rs]
    assert rows, "no ptxas report parsed"
    assert {r["arch"] for r in rows} == {f"sm_{a}" for a in ARCHS}
    for r in sorted(rows, key=lambda r: (r["arch"], r["variant"], r["kernel"])):
        print(f"{r['arch']} {r['variant']:12s} regs {r['regs']:3d} smem {r['smem']:6d} stack {r['stack']:4d} "
              f"spill {r['spill_stores']}/{r['spill_loads']}  {r['kernel'][:90]}")
    spills = [r for r in rows if r["spill_stores"] or r["spill_loads"]]
    assert not spills, "kernels spill registers:\n" + "\n".join(
        f"{r['arch']} {r['kernel']}: {r['spill_stores']} B stores / {r['spill_loads']} B loads" for r in spills)
