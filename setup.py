"""Build of cbda's native modules.

cbda._cpu  : csrc/cpu/*.cpp, C++17 + OpenMP when the compiler has it.
cbda._cuda : csrc/cuda/*.cu (nvcc) + csrc/cuda/*.cpp, when nvcc is found.

Neither needs torch at build time (kernels take raw pointers, docs/architecture.md), and neither can
break the install: a module that fails to build is skipped with a warning and the reason is
written to cbda/_build_info.json, which `python -m cbda.info` prints.

Environment overrides:
  CBDA_BUILD_CPU=0          skip the C++ module
  CBDA_BUILD_CUDA=0|1|auto  skip / require / detect the CUDA module (default auto)
  CBDA_CUDA_ARCH_LIST       e.g. "80;90" (default), "90a", "80;86;90"
  CBDA_NO_OPENMP=1          build the C++ module without OpenMP
  CBDA_BUILD_JOBS=N         parallel nvcc compiles (default: CPU count)
  CUDA_HOME / NVCC          where nvcc lives
"""

from __future__ import annotations

import glob
import json
import os
import shutil
import subprocess
import sys
import sysconfig
import tempfile
from concurrent.futures import ThreadPoolExecutor

from setuptools import Extension, setup
from setuptools.command.build_ext import build_ext

HERE = os.path.dirname(os.path.abspath(__file__))


def _env_flag(name: str, default: str) -> str:
    return os.environ.get(name, default).strip().lower()


def _log(msg: str) -> None:
    print(f"[cbda build] {msg}", flush=True)


def find_nvcc() -> str | None:
    if os.environ.get("NVCC"):
        return os.environ["NVCC"] if shutil.which(os.environ["NVCC"]) else None
    for home in (os.environ.get("CUDA_HOME"), os.environ.get("CUDA_PATH"), "/usr/local/cuda"):
        if home and os.path.exists(os.path.join(home, "bin", "nvcc")):
            return os.path.join(home, "bin", "nvcc")
    return shutil.which("nvcc")


def cuda_arch_list() -> list[str]:
    raw = os.environ.get("CBDA_CUDA_ARCH_LIST", "80;90")
    return [a.strip().replace(".", "") for a in raw.replace(",", ";").replace(" ", ";").split(";") if a.strip()]


def pybind11_include() -> str:
    import pybind11

    return pybind11.get_include()


class BuildExt(build_ext):
    """Builds each module independently; a failure is recorded, never fatal (unless a
    module was required by its environment variable)."""

    def run(self):
        self.info = {"python": sys.version.split()[0], "platform": sysconfig.get_platform(), "modules": {}}
        super().run()
        self._write_info()

    # -- helpers ---------------------------------------------------------------------------
    def _compiler_supports(self, flag: str) -> bool:
        with tempfile.TemporaryDirectory() as tmp:
            src = os.path.join(tmp, "t.cpp")
            with open(src, "w") as f:
                f.write("#include <omp.h>\nint main(){return omp_get_max_threads() > 0 ? 0 : 1;}\n")
            try:
                self.compiler.compile([src], output_dir=tmp, extra_postargs=[flag])
                return True
            except Exception:
                return False

    def _write_info(self):
        targets = [os.path.join(self.build_lib, "cbda")]
        if self.inplace:
            targets = [os.path.join(HERE, "cbda")]
        for d in targets:
            os.makedirs(d, exist_ok=True)
            with open(os.path.join(d, "_build_info.json"), "w") as f:
                json.dump(self.info, f, indent=2, sort_keys=True)

    def build_extension(self, ext):
        name = ext.name.split(".")[-1]
        required = getattr(ext, "cbda_required", False)
        try:
            if name == "_cuda":
                record = self._build_cuda(ext)
            else:
                record = self._build_cpu(ext)
            record["built"] = True
        except Exception as err:  # never break the install for an optional module
            if required:
                raise
            _log(f"WARNING: module {ext.name} not built: {err}")
            record = {"built": False, "reason": f"{type(err).__name__}: {err}"}
        self.info["modules"][name] = record

    def _build_cpu(self, ext):
        flags = ["-O3", "-std=c++17", "-fvisibility=hidden"]
        openmp = False
        if _env_flag("CBDA_NO_OPENMP", "0") not in ("1", "true", "yes") and self._compiler_supports("-fopenmp"):
            openmp = True
            flags.append("-fopenmp")
            ext.extra_link_args = list(ext.extra_link_args or []) + ["-fopenmp"]
        ext.extra_compile_args = list(ext.extra_compile_args or []) + flags
        _log(f"building {ext.name} (OpenMP: {openmp})")
        super().build_extension(ext)
        cc = getattr(self.compiler, "compiler_so", ["?"])
        return {"compiler": " ".join(cc[:1]), "flags": flags, "openmp": openmp}

    def _build_cuda(self, ext):
        nvcc = find_nvcc()
        if nvcc is None:
            raise RuntimeError("nvcc not found (set CUDA_HOME or NVCC)")
        archs = cuda_arch_list()
        cu_sources = [s for s in ext.sources if s.endswith(".cu")]
        cpp_sources = [s for s in ext.sources if not s.endswith(".cu")]
        build_dir = os.path.join(self.build_temp, "cuda")
        os.makedirs(build_dir, exist_ok=True)
        gencode = []
        for i, a in enumerate(archs):
            # machine code for each arch, plus PTX of the newest so later GPUs can JIT it
            code = f"[sm_{a},compute_{a}]" if i == len(archs) - 1 else f"sm_{a}"
            gencode += [f"-gencode=arch=compute_{a},code={code}"]
        nvcc_flags = ["-O3", "-std=c++17", "--expt-relaxed-constexpr", "-Xcompiler", "-fPIC", "-lineinfo"] + gencode
        cuda_home = os.path.dirname(os.path.dirname(os.path.realpath(nvcc)))

        def compile_one(src):
            obj = os.path.join(build_dir, os.path.basename(src) + ".o")
            cmd = [nvcc, "-c", src, "-o", obj, "-I", os.path.join(HERE, "csrc")] + nvcc_flags
            proc = subprocess.run(cmd, capture_output=True, text=True)
            if proc.returncode != 0:
                raise RuntimeError(f"nvcc failed on {src}:\n{proc.stderr[-4000:]}")
            return obj

        jobs = int(os.environ.get("CBDA_BUILD_JOBS", os.cpu_count() or 1))
        _log(f"building {ext.name} with {nvcc} for sm_{', sm_'.join(archs)} ({len(cu_sources)} .cu files)")
        with ThreadPoolExecutor(max_workers=max(1, jobs)) as pool:
            objects = list(pool.map(compile_one, cu_sources))
        ext.sources = cpp_sources
        ext.extra_objects = list(ext.extra_objects or []) + objects
        lib_dirs = [os.path.join(cuda_home, d) for d in ("lib64", "lib", "lib64/stubs", "targets/x86_64-linux/lib")]
        ext.library_dirs = list(ext.library_dirs or []) + [d for d in lib_dirs if os.path.isdir(d)]
        # static cudart: the module then needs only the driver, never a matching runtime .so
        ext.libraries = list(ext.libraries or []) + ["cudart_static", "rt", "pthread", "dl"]
        ext.extra_compile_args = list(ext.extra_compile_args or []) + ["-O3", "-std=c++17", "-fvisibility=hidden"]
        ext.include_dirs = list(ext.include_dirs or []) + [os.path.join(cuda_home, "include")]
        super().build_extension(ext)
        version = subprocess.run([nvcc, "--version"], capture_output=True, text=True).stdout.strip().splitlines()
        return {"nvcc": nvcc, "nvcc_version": version[-1] if version else "?", "arch_list": archs}


def extensions() -> list[Extension]:
    exts = []
    inc = [pybind11_include(), os.path.join("csrc")]
    if _env_flag("CBDA_BUILD_CPU", "1") not in ("0", "false", "no"):
        exts.append(
            Extension("cbda._cpu", sorted(glob.glob("csrc/cpu/*.cpp")), include_dirs=inc, language="c++")
        )
    cuda_mode = _env_flag("CBDA_BUILD_CUDA", "auto")
    cu = sorted(glob.glob("csrc/cuda/*.cu"))
    if cuda_mode not in ("0", "false", "no") and cu:
        if cuda_mode == "auto" and find_nvcc() is None:
            _log("CUDA module skipped: nvcc not found (CBDA_BUILD_CUDA=1 to require it)")
        else:
            ext = Extension("cbda._cuda", cu + sorted(glob.glob("csrc/cuda/*.cpp")), include_dirs=inc, language="c++")
            ext.cbda_required = cuda_mode in ("1", "true", "yes")
            exts.append(ext)
    return exts


setup(ext_modules=extensions(), cmdclass={"build_ext": BuildExt})
