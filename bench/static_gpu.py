"""Static SASS report of the GPU kernels, no GPU needed: registers, spills, shared memory,
occupancy on sm_90, and executed instructions per output pixel of the score kernels in the
Cityscapes configuration (C = 19, r = 1, logits 256x512 upsampled to 1024x2048, class
weights, blocked map, cut-off; bf16 and fp32 logits).

    python bench/static_gpu.py --out bench/results/static-gpu-before [--archs 90,80] [--only A,B] [--set C=19]

(the default --archs is 90,80; --archs 90 halves the compile time).

Writes <out>.json and <out>.md; exit 1 when a kernel spills or cannot be counted, 2 on a bad
argument, 3 when nvcc or Triton is missing.

What is compiled. CUDA: nvcc --cubin -arch=sm_XX -O3 -lineinfo of the csrc/cuda files
(cbda.compile_report's nvcc finder and flags), cached by source hash under the temp folder.
Triton: cbda.compile_report's ahead-of-time path (``triton.compile`` for a GPUTarget, the
specialisation the backend launches), whose cubin keeps Triton's line info. Both are
disassembled with nvdisasm -c -gi from Triton's bin folder; registers, stack and local
memory come from ``cuobjdump -res-usage`` of the same cubin; spill bytes and static
shared memory from ``ptxas -v`` (nvcc's for CUDA; cbda.compile_report's ptxas run on
Triton's PTX, which can differ from Triton's own by a few registers); STL/LDL instructions
in the SASS are counted too. Each counted kernel's CFG is checked against nvdisasm's own
(``-bbcfg``): the report says whether every block's successors agree.

How executed instructions are counted (bench/sass_cfg.py has the rules in full):
1. Basic blocks and the CFG from the SASS (branch targets, BRX targets from nvdisasm's
   BRANCH_TARGETS notes; CALL costs its callee's count).
2. Guards fixed by the configuration are resolved: kernel parameters that the table marks as
   known (C = 19 for the CUDA kernel's unrolled 32-class loops, the heuristic code) are
   propagated from their ``c[0x0][...]`` loads (or operands) through moves to ISETP
   compares, along every path (a value survives a join only if all predecessors agree); a
   branch whose guard is then known keeps one edge.
3. Loops: natural loops from dominators (irreducible flow is an error). Each loop is mapped
   to its source line via the line info of its back-edge branch (then of its header), every
   inline frame, innermost first; its trip count T (executions of the header per entry)
   comes from the kernel's table below, an expression with a one-line reason. A loop with no
   table entry is an error, never counted once. Counts are SIMT (per warp): a loop that
   threads stride through (``for (i = tid; i < N; i += threads)``) has T = its
   warp-iterations / warps, which can be a fraction (then cost = T x the exit path).
4. Cost per thread: innermost loops first; a loop = (T - 1) x (longest path header -> latch)
   + (longest path header -> exit), inner loops collapsed to their cost; the kernel = the
   longest path entry -> exit. At every other branch the longer side counts: an upper bound.
   Blocks are excluded only by a named cold rule (IEEE divide slow-path calls; switch cases
   of other heuristics), listed in the report.
5. Every instruction on the path counts one, predicated or not (it is issued).
6. Per pixel: the per-thread count divided by the output pixels one thread produces in the
   counted unit (the table's ``outputs``; before issue 15: CUDA one 16x32 tile, 2 pixels a
   thread; Triton its persistent loop, tiles per program x interior pixels / threads).
   Per-thread instructions are SIMT counts: warp-instructions per pixel = the same / 32.

Occupancy on sm_90 (and sm_80): 64K registers per SM allocated per warp in units of 256,
228 KB (sm_80: 164 KB) shared memory per SM with 1 KB reserved per block, at most 64 warps
and 32 blocks per SM; resident warps = blocks x warps per block.

Kernels, trip tables and cold rules are in KERNELS below: edit them there when the kernels
change (a renamed specialisation or a new loop fails loudly).
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
if HERE not in sys.path:
    sys.path.insert(0, HERE)

from sass_cfg import ColdRule, CountError, TripRule, cfg_mismatches, count_function, parse_sass  # noqa: E402

# -- the configuration and the kernel table (edit here) ---------------------------------------------

#: the Cityscapes round of issue 15; B is the batch (the shipped default), SMS an H100/H200
CITYSCAPES = dict(C=19, R=1, H=1024, W=2048, h=256, w=512, B=2, SMS=132)


@dataclass(frozen=True)
class KernelSpec:
    """One kernel specialisation to report.

    backend "cuda": ``source`` a file under csrc/cuda, ``symbol`` a regex on the mangled
    name (exactly one match). backend "triton": ``source`` "module.kernel" under cbda/triton
    and ``constexprs``/``dtype``/``num_warps`` the launch specialisation.
    ``count``: compute instructions per pixel (then ``outputs``, ``trips`` are required).
    ``env``: (name, expression) pairs evaluated in order over CITYSCAPES.
    ``known``: (offset from the first kernel parameter, expression, reason) of 32-bit
    parameter words fixed by the configuration (the parameters sit in constant bank 0 from
    PARAM_BASE[arch]). Locations in trips/cold: "file:LINE" or "file:/regex/" (every line of the
    repository's file that matches), ranges "file:A-B" with A, B lines or /regex/."""

    name: str
    backend: str
    source: str
    symbol: str = ""
    dtype: str = "fp32"
    constexprs: tuple = ()
    types: str = ""  # triton: which argument table (compile_report's)
    num_warps: int = 4
    threads: int = 0  # CUDA: threads per block of the launch
    smem_dynamic: str = "0"  # CUDA: dynamic shared memory of the launch (bytes), an expression
    count: bool = False
    env: tuple = ()
    outputs: str = ""
    trips: tuple = ()
    cold: tuple = ()
    known: tuple = ()
    note: str = ""


_DIV_SLOW = ColdRule(
    "IEEE divide/reciprocal slow path: FCHK sends only operands near the exponent limits there "
    "(denormal, inf, NaN, quotients that over/underflow); the scores' divisions see normal "
    "operands except a softmax class > 87 nats below the maximum", call=r"slowpath")

_TILE_ENV = (("TH", "16"), ("TW", "32"), ("THREADS", "256"), ("NT", "(TH + 2 * R) * (TW + 2 * R)"),
             ("WARPS", "THREADS // 32"))
_TILE_TRIPS = (
    TripRule("scores.cu:/for \\(int i = tid; i < C; i \\+= kThreads\\)/", "cdiv(C, 32) / WARPS",
             "shared histogram zeroing and flush: only tid < C runs one iteration; warp-average over 8 warps"),
    TripRule("scores.cu:/for \\(int i = tid; i < NT; i \\+= kThreads\\)/", "cdiv(NT, 32) / WARPS",
             "phase 1 over the (TH+2R)x(TW+2R) halo tile, 256 threads striding: warp-iterations / warps"),
    TripRule("scores.cu:/for \\(int k = 0; k < kTH \\* kTW / kThreads; \\+\\+k\\)/", "TH * TW // THREADS",
             "phase 2: 512 output pixels / 256 threads (unroll 1)"),
)
_TILE_KNOWN = (
    (0x18, "C", "LogitsView.C (TileParams starts with the LogitsView: data, dtype, B, C as int64): the unrolled "
                "CMAX=32 class loops' guards c < C"),
    (0x1C, "0", "high word of C"),
    (0x40, "0", "TileParams.heur = kRipu"),
)
_TILE_COLD = (
    _DIV_SLOW,
    ColdRule("heur = kRipu: the other heuristics' switch cases never run",
             lines="scores.cu:/case kEntropyRaw: v = st.ent/-/default: v = random_score/"),
)

# HB, WB, NW: the launch's tile (cbda.triton.score.tile_config(R), filled in at compile time)
_FUSED_ENV = (("THREADS", "32 * NUM_WARPS"), ("TH", "HB - 2 * R"), ("TW", "WB - 2 * R"),
              ("TILES", "B * cdiv(H, TH) * cdiv(W, TW) / (8 * SMS)"))
_FUSED_TRIPS = (
    TripRule("score.py:/for t in range\\(pid, ntiles, nprog\\)/", "TILES",
             "persistent grid of 8 programs per SM: B x tiles / (8 x 132) tiles per program (average)"),
    TripRule("score.py:/for c in range\\(C\\)/", "C", "one iteration per class (pass 1, pass 2, window impurity)"),
)
_FUSED_CX = dict(HEUR=0, R=1, HB="tile_config", WB="tile_config", NW="tile_config", C_BINS=32, UPSAMPLE=True,
                 HAS_W=True, HAS_BLOCKED=True, WRITE_MAPS=False, EMIT=True, HIST=True)


def _fused(dtype: str) -> KernelSpec:
    return KernelSpec(
        f"triton fused_score_kernel ripu r=1 {dtype} round", "triton", "score.fused_score_kernel", dtype=dtype,
        constexprs=tuple(_FUSED_CX.items()), types="fused", num_warps=4, count=True, env=_FUSED_ENV,
        outputs="TILES * TH * TW / THREADS", trips=_FUSED_TRIPS, cold=(_DIV_SLOW,),
        note="HEUR ripu, R=1, C_BINS=32, UPSAMPLE, HAS_W, HAS_BLOCKED, EMIT, HIST (the round's launch)")


def _generic(dtype: str, mangled: str) -> KernelSpec:
    """The pre-issue-15 tile kernel, kept as the fallback (C > 32, or a staged tile past the
    shared-memory limit: little or no upsampling)."""
    return KernelSpec(
        f"cuda tile_kernel_generic<{dtype}, CMAX=32, R=1> candidates (fallback)", "cuda", "scores.cu",
        symbol=rf"tile_kernel_genericI{mangled}Li32ELi1EE", dtype=dtype, threads=256, count=True, env=_TILE_ENV,
        outputs="TH * TW / THREADS", trips=_TILE_TRIPS, cold=_TILE_COLD, known=_TILE_KNOWN,
        note="the fused_candidates launch: heur kRipu, select, class weights, blocked map, cut-off")


# the staged-tile kernel (csrc/cuda/tile_math.h): 32x32 outputs, 128 threads, 8 pixels each; at
# Cityscapes' 4x upsampling a tile stages NL x NLX = 10 x 10 low-res pixels; CP = CK padded to 4
_STAGED_ENV = (("TH", "32"), ("TW", "32"), ("THREADS", "128"), ("WARPS", "THREADS // 32"), ("WT", "TW + 2 * R"),
               ("NT", "(TH + 2 * R) * WT"), ("NL", "10"), ("NLX", "10"), ("CP", "4 * cdiv(CK, 4)"),
               ("DYN", "4 * ((NL + 1) * WT * CP + max(NL * NLX * CP, 2 * NT))"))
_STAGED_TRIPS = (
    TripRule("tile_math.h:/for \\(int i = tid; i < row_floats; i \\+= kThreads\\)/", "cdiv(CK * WT, 32) / WARPS",
             "phase A: the zero row (C x WT floats), 128 threads striding: warp-iterations / warps"),
    TripRule("tile_math.h:/for \\(int it = tid; it < g.nl \\* g.nlx; it \\+= kThreads\\)/", "cdiv(NL * NLX, 32) / WARPS",
             "phase B: NL x NLX low-res pixels of the tile (10 x 10 at 4x), all classes per iteration"),
    TripRule("tile_math.h:/for \\(int it = tid; it < g.nl \\* WT; it \\+= kThreads\\)/", "cdiv(NL * WT, 32) / WARPS",
             "phase C: NL staged rows x WT halo columns, all classes per iteration"),
    TripRule("tile_math.h:/for \\(int i = tid; i < NT; i \\+= kThreads\\)/", "cdiv(NT, 32) / WARPS",
             "phase D: the (TH+2R) x (TW+2R) halo tile, 128 threads striding"),
)


def _staged(c: int, select: bool) -> KernelSpec:
    return KernelSpec(
        f"cuda tile_kernel<C={c}, R=1> {'select' if select else 'maps'} (longest dtype path)", "cuda", "scores.cu",
        symbol=rf"tile_kernelILi{c}ELi1ELb0ELb{1 if select else 0}EE", threads=128, count=True,
        env=(("CK", str(c)),) + _STAGED_ENV,  # CK: the C the kernel is instantiated for (not the --set C)
        outputs="TH * TW / THREADS", trips=_STAGED_TRIPS, smem_dynamic="DYN",
        note=("the fused_candidates launch: ripu r=1, class weights, blocked map, cut-off" if select
              else "the score_maps launch") + "; one kernel for every dtype: the longest of the staging paths")


# Adding or renaming a kernel: add a KernelSpec to KERNELS. For a counted one, run
#   python bench/static_gpu.py --archs 90 --only "<part of its name>"
# with trips=() first: every loop it finds is reported unmapped with its source lines
# (innermost inline frame first); give each a TripRule on that line (a /regex/ on the line's
# text survives edits) with the trip count per entry and why. A runtime switch on a value the
# configuration fixes (the dtype, the heuristic) is resolved by ``known`` parameter words
# when it compiles to compares, or by a ColdRule on the other cases' source lines.
_GTYPES = "greedy"
KERNELS: list = [
    _staged(19, True),
    _staged(19, False),
    _staged(16, True),
    _generic("bf16", "13__nv_bfloat16"),
    _fused("bf16"),
    _fused("fp32"),
    KernelSpec("cuda greedy_kernel", "cuda", "greedy.cu", symbol=r"greedy_kernel", threads=32),
    KernelSpec("cuda compact_scores_kernel", "cuda", "greedy.cu", symbol=r"compact_scores_kernel", threads=256),
    KernelSpec("cuda mark_prior_kernel", "cuda", "greedy.cu", symbol=r"mark_prior_kernel", threads=256),
    # the radix select that prunes to the greedy bound (select.cu; named "pruning": "select" picks the score
    # kernels in the tests), one row per instantiation
    KernelSpec("cuda pruning hist_kernel (per image)", "cuda", "select.cu", symbol=r"hist_kernelINS0_6select10SlotSource", threads=256),
    KernelSpec("cuda pruning hist_kernel (batch)", "cuda", "select.cu", symbol=r"hist_kernelINS0_6select11BatchSource", threads=256),
    KernelSpec("cuda pruning hist_kernel (trim)", "cuda", "select.cu", symbol=r"hist_kernelINS0_6select10PickSource", threads=256),
    KernelSpec("cuda pruning scan_kernel", "cuda", "select.cu", symbol=r"scan_kernel", threads=256),
    KernelSpec("cuda pruning keep_keys_kernel (per image)", "cuda", "select.cu", symbol=r"keep_keys_kernelINS0_6select10SlotSource",
               threads=256),
    KernelSpec("cuda pruning keep_keys_kernel (batch)", "cuda", "select.cu", symbol=r"keep_keys_kernelINS0_6select11BatchSource",
               threads=256),
    KernelSpec("cuda pruning keep_picks_kernel", "cuda", "select.cu", symbol=r"keep_picks_kernel", threads=256),
    KernelSpec("triton greedy_scan_kernel r=1 global", "triton", "greedy.greedy_scan_kernel", types=_GTYPES,
               constexprs=(("R2", 2), ("CH", 32), ("DXB", 8), ("SEG_OUT", True)), num_warps=1),
    KernelSpec("triton greedy_scan_kernel r=1 per-image", "triton", "greedy.greedy_scan_kernel", types=_GTYPES,
               constexprs=(("R2", 2), ("CH", 32), ("DXB", 8), ("SEG_OUT", False)), num_warps=1),
]

# -- occupancy ----------------------------------------------------------------------------------------

ARCH_LIMITS = {
    90: dict(regs=65536, reg_unit=256, smem=228 * 1024, smem_block=227 * 1024, reserved=1024, smem_unit=128,
             warps=64, blocks=32, max_regs=255),
    80: dict(regs=65536, reg_unit=256, smem=164 * 1024, smem_block=163 * 1024, reserved=1024, smem_unit=128,
             warps=64, blocks=32, max_regs=255),
}


#: where the kernel parameters start in constant bank 0 (``c[0x0][...]``)
PARAM_BASE = {90: 0x210, 80: 0x160}


def occupancy(arch: int, regs: int, smem_block: int, threads: int) -> dict:
    """Resident blocks and warps per SM. ``smem_block``: static + dynamic shared memory of
    one block, without the 1 KB the driver reserves per block (added here)."""
    lim = ARCH_LIMITS[arch]
    warps_b = -(-threads // 32)
    per_warp = -(-max(regs, 1) * 32 // lim["reg_unit"]) * lim["reg_unit"]
    by = {"threads": lim["warps"] // warps_b, "blocks": lim["blocks"],
          "registers": (lim["regs"] // per_warp) // warps_b}
    need = -(-(smem_block + lim["reserved"]) // lim["smem_unit"]) * lim["smem_unit"]
    by["shared memory"] = lim["smem"] // need if smem_block <= lim["smem_block"] else 0
    blocks = min(by.values())
    limiter = "+".join(k for k in by if by[k] == blocks)
    return {"blocks": blocks, "warps": blocks * warps_b, "occupancy": round(blocks * warps_b / lim["warps"], 3),
            "limiter": limiter}


# -- tools ----------------------------------------------------------------------------------------------


def triton_bin() -> str | None:
    """Triton's CUDA tool folder (nvdisasm, cuobjdump, ptxas) or None. Found without
    importing triton: the test suite's first import of triton must be its own (the
    interpreter tests need TRITON_INTERPRET=1 set then)."""
    import importlib.util

    spec = importlib.util.find_spec("triton")
    if spec is None or not spec.submodule_search_locations:
        return None
    d = os.path.join(list(spec.submodule_search_locations)[0], "backends", "nvidia", "bin")
    return d if os.path.exists(os.path.join(d, "nvdisasm")) else None


def _tool(name: str) -> str:
    d = triton_bin()
    p = os.path.join(d, name) if d else shutil.which(name)
    if not p or not os.path.exists(p):
        raise FileNotFoundError(f"{name}: not found (install triton, or put the CUDA tools on PATH)")
    return p


def cache_dir() -> str:
    d = os.environ.get("CBDA_STATIC_GPU_CACHE") or os.path.join(tempfile.gettempdir(), "cbda-static-gpu")
    os.makedirs(d, exist_ok=True)
    return d


def disassemble(cubin: str) -> str:
    """``nvdisasm -c -gi`` of a cubin (cached next to it)."""
    out = cubin + ".sass"
    if not os.path.exists(out) or os.path.getmtime(out) < os.path.getmtime(cubin):
        proc = subprocess.run([_tool("nvdisasm"), "-c", "-gi", cubin], capture_output=True, text=True)
        if proc.returncode != 0:
            raise RuntimeError(f"nvdisasm failed on {cubin}: {proc.stderr[-1500:]}")
        tmp = out + f".{os.getpid()}"
        with open(tmp, "w") as f:
            f.write(proc.stdout)
        os.replace(tmp, out)
    with open(out) as f:
        return f.read()


def nvdisasm_edges(cubin: str) -> dict:
    """nvdisasm's own basic-block CFG (``-bbcfg -poff``, cached next to the cubin):
    {function: {last address of a block: {first addresses of its successors}}}; {} when
    nvdisasm cannot draw it (it fails on some sm_80 listings)."""
    out = cubin + ".bbcfg"
    if not os.path.exists(out) or os.path.getmtime(out) < os.path.getmtime(cubin):
        proc = subprocess.run([_tool("nvdisasm"), "-bbcfg", "-poff", cubin], capture_output=True, text=True)
        with open(out + f".{os.getpid()}", "w") as f:
            f.write(proc.stdout if proc.returncode == 0 else "")
        os.replace(out + f".{os.getpid()}", out)
    with open(out) as f:
        text = f.read()
    funcs: dict = {}
    cluster, node, nodes, edges = None, None, {}, []
    for line in text.splitlines():
        m = re.match(r'subgraph "cluster_(.+)" \{', line)
        if m:
            cluster, nodes, edges = m.group(1), {}, []
            funcs[cluster] = (nodes, edges)
            continue
        m = re.match(r'^"([^"]+)"$', line)
        if m:
            node = m.group(1)
            continue
        m = re.match(r'\[label="\{(.*)\}"\]$', line)
        if m and node is not None and cluster is not None:
            nodes[node] = [int(a, 16) for a in re.findall(r'(?:^|\\l|\|<exit\d+>|<entry>)([0-9a-f]{4,}):\\ ', m.group(1))]
            continue
        m = re.match(r'^"([^"]+)":\w+:\w -> "([^"]+)":entry:n', line)
        if m and cluster is not None:
            edges.append((m.group(1), m.group(2)))
    result = {}
    for name, (nodes, edges) in funcs.items():
        succ: dict = {}
        for a, b in edges:
            if nodes.get(a) and nodes.get(b):
                succ.setdefault(nodes[a][-1], set()).add(nodes[b][0])
        result[name] = succ
    return result


_PARSED: dict = {}


def parsed(text: str) -> dict:
    """parse_sass of a listing, remembered for the last few listings (a cubin of many
    kernels is parsed once per run, not once per question)."""
    key = hashlib.sha1(text.encode()).hexdigest()
    if key not in _PARSED:
        if len(_PARSED) >= 4:
            _PARSED.pop(next(iter(_PARSED)))
        _PARSED[key] = parse_sass(text)
    return _PARSED[key]


_RES = re.compile(r"Function ([^\s:]+):\s*\n\s*REG:(\d+) STACK:(\d+) SHARED:(\d+) LOCAL:(\d+)")


def res_usage(cubin: str) -> dict:
    """{function: {regs, stack, shared, local}} from ``cuobjdump -res-usage`` (``shared``
    includes the 1 KB reserved per block on sm_80+, as cuobjdump prints it)."""
    proc = subprocess.run([_tool("cuobjdump"), "-res-usage", cubin], capture_output=True, text=True)
    if proc.returncode != 0:
        raise RuntimeError(f"cuobjdump failed on {cubin}: {proc.stderr[-1500:]}")
    return {m.group(1): {"regs": int(m.group(2)), "stack": int(m.group(3)), "shared": int(m.group(4)),
                         "local": int(m.group(5))} for m in _RES.finditer(proc.stdout)}


# -- compiling ------------------------------------------------------------------------------------------


def _cuda_files() -> list:
    out = []
    for sub in ("csrc/cuda", "csrc/common"):
        d = os.path.join(ROOT, sub)
        if os.path.isdir(d):
            out += sorted(os.path.join(d, f) for f in os.listdir(d) if f.endswith((".cu", ".cuh", ".h")))
    return out


def compile_cuda(source: str, arch: int) -> tuple[str, dict]:
    """(cubin path, ptxas -v rows by mangled name) of csrc/cuda/<source> for sm_<arch> with
    line info; cached by the hash of every csrc/cuda and csrc/common file, nvcc and flags."""
    from cbda.compile_report import compile_cuda_source, find_nvcc, parse_ptxas

    nvcc = find_nvcc()
    if nvcc is None:
        raise FileNotFoundError("nvcc: not found (set CUDA_HOME or NVCC)")
    h = hashlib.sha256(f"{nvcc}|{arch}|-lineinfo|v1".encode())
    for p in _cuda_files():
        with open(p, "rb") as f:
            h.update(p.encode() + b"\0" + f.read())
    d = os.path.join(cache_dir(), f"cuda-{h.hexdigest()[:16]}")
    src = os.path.join(ROOT, "csrc", "cuda", source)
    cubin = os.path.join(d, f"{source}.sm_{arch}.cubin")
    log = cubin + ".ptxas"
    if not os.path.exists(cubin) or not os.path.exists(log):
        os.makedirs(d, exist_ok=True)
        with tempfile.TemporaryDirectory(dir=d) as tmp:
            rc, err, _ = compile_cuda_source(nvcc, src, os.path.join(ROOT, "csrc"), tmp, arch, False, ("-lineinfo",))
            if rc != 0:
                raise RuntimeError(f"nvcc failed on {source} for sm_{arch}: {err[-2000:]}")
            with open(log, "w") as f:
                f.write(err)
            os.replace(os.path.join(tmp, f"{source}.sm_{arch}.cubin"), cubin)
    with open(log) as f:
        return cubin, parse_ptxas(f.read())


def launch_constexprs(spec: KernelSpec) -> dict:
    """The spec's constexprs with "tile_config" values replaced by the backend's own choice
    (cbda.triton.score.tile_config(R): HB, WB, NW), so the report follows the launch."""
    cx = dict(spec.constexprs)
    if "tile_config" in cx.values():
        from cbda.triton.score import tile_config

        hb, wb, nw = tile_config(int(cx["R"]))
        cx.update({k: v for k, v in (("HB", hb), ("WB", wb), ("NW", nw)) if cx.get(k) == "tile_config"})
    return cx


def _triton_variant(spec: KernelSpec, config: dict = CITYSCAPES):
    from cbda.compile_report import Variant, _fused_types

    if spec.types == "fused":
        types = _fused_types(spec.dtype)
    elif spec.types == "greedy":
        types = (("cand_li", "*i64"), ("seg", "*i64"), ("out_pos", "*i64"), ("out_count", "*i64"),
                 ("bitmap", "*u8"), ("H", "i32"), ("W", "i32"), ("HW", "i32"), ("quota", "i32"))
    else:
        raise ValueError(f"{spec.name}: unknown argument table {spec.types!r}")
    # follow the kernel's signature: an argument that is constexpr there takes its value from
    # the spec or the configuration (C may be either, depending on the kernel's version)
    import importlib

    mod, fn_name = spec.source.rsplit(".", 1)
    fn = getattr(importlib.import_module(f"cbda.triton.{mod}"), fn_name)
    cx_names = {p.name for p in fn.params if p.is_constexpr}
    cx = launch_constexprs(spec)
    for name in cx_names - set(cx):
        if name in config:
            cx[name] = config[name]
    types = tuple((n, t) for n, t in types if n not in cx_names)
    maxnreg = None
    if spec.types == "fused" and int(cx.get("R", 0)) > 0:  # the launch's register ceiling (run_fused)
        maxnreg = getattr(importlib.import_module("cbda.triton.score"), "FUSED_MAXNREG", None)
    return Variant(spec.source, spec.name, types, tuple(cx.items()), spec.num_warps, maxnreg=maxnreg)


def compile_triton(spec: KernelSpec, arch: int, config: dict = CITYSCAPES) -> tuple[str, dict, int, str]:
    """(cubin path, ptxas -v row, dynamic shared bytes, kernel name) of a Triton spec.
    Needs a process where triton was not put in interpreter mode (the CLI sees to it)."""
    if os.environ.get("TRITON_INTERPRET") == "1":
        raise RuntimeError("TRITON_INTERPRET=1: the interpreter cannot compile for a GPU; run bench/static_gpu.py "
                           "in a process without it")
    from cbda.compile_report import compile_triton as report_row, compile_triton_kernel

    v = _triton_variant(spec, config)
    k = compile_triton_kernel(v, arch)
    blob = k.asm["cubin"]
    d = os.path.join(cache_dir(), "triton")
    os.makedirs(d, exist_ok=True)
    cubin = os.path.join(d, hashlib.sha256(blob).hexdigest()[:20] + ".cubin")
    if not os.path.exists(cubin):
        with open(cubin + f".{os.getpid()}", "wb") as f:
            f.write(blob)
        os.replace(cubin + f".{os.getpid()}", cubin)
    row_file = cubin + ".row.json"
    if os.path.exists(row_file):
        with open(row_file) as f:
            row = json.load(f)
    else:
        row = report_row(v, arch)
        with open(row_file, "w") as f:
            json.dump(row, f)
    return cubin, row, int(getattr(k.metadata, "shared", 0) or 0), k.metadata.name


# -- source locations of the tables -----------------------------------------------------------------------

_SRC_DIRS = ("csrc/cuda", "csrc/common", "cbda/triton")


def _source_lines(base: str) -> list:
    for d in _SRC_DIRS:
        p = os.path.join(ROOT, d, base)
        if os.path.exists(p):
            with open(p) as f:
                return f.read().splitlines()
    raise CountError(f"table location {base}: no such file under {', '.join(_SRC_DIRS)}")


def _lines_of(base: str, pat: str) -> list:
    if pat.startswith("/") and pat.endswith("/") and len(pat) > 1:
        rx = re.compile(pat[1:-1])
        hits = [i + 1 for i, s in enumerate(_source_lines(base)) if rx.search(s)]
        if not hits:
            raise CountError(f"table location {base}:{pat}: no line of {base} matches")
        return hits
    return [int(pat)]


def _source_text(key: str) -> str:
    """The text of "file:line" in the repository ('' when unknown)."""
    base, _, ln = key.rpartition(":")
    try:
        return _source_lines(base)[int(ln) - 1].strip()[:90]
    except (CountError, ValueError, IndexError):
        return ""


def resolve_trips(trips) -> list:
    """TripRules with "file:/regex/" turned into one rule per matching line."""
    out = []
    for r in trips:
        base, pat = r.loc.split(":", 1)
        out += [TripRule(f"{base}:{ln}", r.expr, r.reason) for ln in _lines_of(base, pat)]
    return out


def resolve_cold(cold) -> list:
    out = []
    for c in cold:
        if not c.lines:
            out.append(c)
            continue
        base, rng = c.lines.split(":", 1)
        m = re.match(r"^(/.*?/|\d+)(?:-(/.*/|\d+))?$", rng)
        if not m:
            raise CountError(f"cold rule lines {c.lines!r}: expected file:A-B")
        lo = _lines_of(base, m.group(1))[0]
        hi = _lines_of(base, m.group(2))[0] if m.group(2) else lo
        out.append(ColdRule(c.reason, c.call, f"{base}:{lo}-{hi}"))
    return out


# -- analysis ----------------------------------------------------------------------------------------------


def spec_env(spec: KernelSpec, config: dict) -> dict:
    """The names the tables' expressions use: the configuration, the launch's constexprs
    (Triton), NUM_WARPS, then ``spec.env`` in order."""
    env = dict(config)
    if spec.backend == "triton":
        env.update({k: v for k, v in launch_constexprs(spec).items() if k not in config})
        env["NUM_WARPS"] = spec.num_warps
    for name, expr in spec.env:
        env[name] = eval(expr, {"__builtins__": {}, "cdiv": lambda a, b: -(-a // b), "min": min, "max": max}, env)  # noqa: S307
    return env


def count_sass(text: str, func: str, spec: KernelSpec, config: dict, arch: int = 90) -> dict:
    """The instruction count of one function of a listing under ``spec``'s tables."""
    env = spec_env(spec, config)
    funcs = parsed(text)
    known = {PARAM_BASE[arch] + off: int(eval(expr, {"__builtins__": {}}, env)) & 0xFFFFFFFF  # noqa: S307
             for off, expr, _ in spec.known}
    known = {k: (v - (1 << 32) if v >= 1 << 31 else v) for k, v in known.items()}
    cnt = count_function(funcs, func, resolve_trips(spec.trips), env, resolve_cold(spec.cold), known)
    if spec.known and cnt.resolved_branches == 0:
        raise CountError(f"{spec.name}: its known parameters resolved no branch guard (stale offsets in KERNELS, "
                         f"or the kernel no longer branches on them: drop them)")
    outputs = float(eval(spec.outputs, {"__builtins__": {}, "cdiv": lambda a, b: -(-a // b)}, env))  # noqa: S307
    mult = {}
    loops = []
    for lp in reversed(cnt.loops):  # outermost first: the enclosing trips
        mult[id(lp)] = (mult[id(lp.parent)] * lp.parent.trips) if lp.parent is not None else 1.0
    for lp in cnt.loops:
        loops.append({"line": lp.key, "depth": lp.depth, "trips": round(lp.trips, 4), "reason": lp.reason,
                      "iteration": lp.iter_cost, "per_entry": round(lp.cost, 1),
                      "enclosing_trips": round(mult[id(lp)], 4)})
    def top(d: dict, n: int = 15) -> list:
        rows = sorted(d.items(), key=lambda kv: -kv[1])[:n]
        return [{"line": k, "per_pixel": round(v / outputs, 1), "source": _source_text(k)} for k, v in rows]

    return {"instructions_per_thread": round(cnt.total, 1), "outputs_per_thread": round(outputs, 4),
            "by_line": top(cnt.by_line), "by_kernel_line": top(cnt.by_source),
            "instructions_per_pixel": round(cnt.total / outputs, 1),
            "warp_instructions_per_pixel": round(cnt.total / outputs / 32, 2),
            "loops": loops, "cold": [{"reason": r, "blocks": b, "instructions": n} for r, b, n in cnt.cold],
            "resolved_guards": cnt.resolved_branches, "static_instructions": cnt.instructions,
            "blocks": cnt.blocks, "env": {k: (round(v, 4) if isinstance(v, float) else v) for k, v in env.items()}}


def _spill_instrs(text: str, func: str) -> tuple[int, int]:
    f = parsed(text).get(func)
    if f is None:
        return 0, 0
    return (sum(1 for x in f.instrs if x.base == "STL"), sum(1 for x in f.instrs if x.base == "LDL"))


def analyse(spec: KernelSpec, arch: int, config: dict = CITYSCAPES) -> dict:
    """One report row: resources, occupancy and (``spec.count``) the instruction count."""
    row = {"kernel": spec.name, "backend": spec.backend, "arch": f"sm_{arch}", "note": spec.note}
    if spec.backend == "cuda":
        cubin, ptx_rows = compile_cuda(spec.source, arch)
        res = res_usage(cubin)
        names = [n for n in res if re.search(spec.symbol, n)]
        if len(names) != 1:
            raise CountError(f"{spec.name}: symbol /{spec.symbol}/ matches {len(names)} kernels of {spec.source} "
                             f"({', '.join(names) or 'none'}); its kernels: {', '.join(sorted(res))}. "
                             f"Update KERNELS in bench/static_gpu.py")
        func = names[0]
        pr = ptx_rows.get(func)
        if pr is None:
            raise CountError(f"{spec.name}: no ptxas -v report for {func}")
        threads = spec.threads
        dynamic = int(eval(spec.smem_dynamic, {"__builtins__": {}, "cdiv": lambda a, b: -(-a // b)},  # noqa: S307
                           spec_env(spec, config)))
        static = pr["smem"]
    else:
        cubin, pr, dynamic, func = compile_triton(spec, arch, config)
        res = res_usage(cubin)
        threads = spec.num_warps * 32
        static = max(0, pr["smem"] - dynamic)  # compile_report's row adds Triton's dynamic smem
    spill = (pr["spill_stores"], pr["spill_loads"])
    r = res[func]
    text = disassemble(cubin)
    stl, ldl = _spill_instrs(text, func)
    row.update({"symbol": func, "regs": r["regs"], "ptxas_regs": pr.get("regs"), "stack": r["stack"], "local": r["local"],
                "spill_stores": spill[0], "spill_loads": spill[1], "stl_instructions": stl, "ldl_instructions": ldl,
                "smem_static": static, "smem_dynamic": dynamic, "threads": threads,
                "at_register_cap": r["regs"] >= ARCH_LIMITS[arch]["max_regs"]})
    row.update(occupancy(arch, r["regs"], static + dynamic, threads))
    if spec.count:
        row["count"] = count_sass(text, func, spec, config, arch)
        edges = nvdisasm_edges(cubin).get(func)
        if edges is None:
            row["count"]["cfg_check"] = "n/a (nvdisasm -bbcfg drew no graph)"
        else:
            bad = cfg_mismatches(parsed(text)[func], edges)
            row["count"]["cfg_check"] = ("agrees with nvdisasm -bbcfg" if not bad else
                                         f"differs from nvdisasm -bbcfg at {len(bad)} blocks: "
                                         + ", ".join(hex(a) for a in bad[:5]))
    return row


# -- output ------------------------------------------------------------------------------------------------


def _how_counted() -> str:
    doc = __doc__
    a = doc.index("How executed instructions are counted")
    b = doc.index("Occupancy on sm_90")
    return doc[a:b].strip()


def render_markdown(data: dict) -> str:
    m = data["meta"]
    out = [f"# Static SASS report ({', '.join(m['archs'])}; no GPU)", "",
           f"Configuration: {json.dumps(m['config'])}. nvcc `{m['nvcc']}`, triton {m['triton']}, "
           f"nvdisasm from Triton's bin folder. Regenerate: `python bench/static_gpu.py --out <path>`.", "",
           "| kernel | arch | regs | spill st/ld B | smem static+dyn B | threads | warps/SM (limit) | "
           "instr/thread | px/thread | **instr/px** | warp-instr/px |",
           "|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|"]
    for r in data["rows"]:
        c = r.get("count")
        cells = [f"{c['instructions_per_thread']:.0f}", f"{c['outputs_per_thread']:.3g}",
                 f"**{c['instructions_per_pixel']:.0f}**", f"{c['warp_instructions_per_pixel']:.1f}"] if c else ["-"] * 4
        cap = " (cap)" if r["at_register_cap"] else ""
        out.append(f"| {r['kernel']} | {r['arch']} | {r['regs']}{cap} | {r['spill_stores']}/{r['spill_loads']} | "
                   f"{r['smem_static']}+{r['smem_dynamic']} | {r['threads']} | {r['warps']} ({r['limiter']}) | "
                   + " | ".join(cells) + " |")
    for r in data["rows"]:
        c = r.get("count")
        if not c:
            continue
        out += ["", f"## {r['kernel']} ({r['arch']})", "", f"`{r['symbol']}`. {r['note']}", "",
                f"{c['instructions_per_thread']:.0f} instructions per thread / {c['outputs_per_thread']:.4g} output "
                f"pixels per thread = **{c['instructions_per_pixel']:.0f} per pixel** "
                f"({c['static_instructions']} static instructions in {c['blocks']} reachable blocks; "
                f"{c['resolved_guards']} guards resolved from known parameters). CFG: {c['cfg_check']}.", "",
                "| loop (source line) | depth | trips T | why | longest iteration | cost per entry | x enclosing trips |",
                "|---|---:|---:|---|---:|---:|---:|"]
        for lp in c["loops"]:
            out.append(f"| {lp['line']} | {lp['depth']} | {lp['trips']:g} | {lp['reason']} | {lp['iteration']:.0f} | "
                       f"{lp['per_entry']:.0f} | {lp['enclosing_trips']:g} |")
        for cd in c["cold"]:
            out.append(f"\nCold: {cd['blocks']} blocks, {cd['instructions']} instructions excluded: {cd['reason']}.")
        for key, title in (("by_line", "innermost source line (inlined helpers by their own line)"),
                           ("by_kernel_line", "line of the kernel body (helpers charged to their call site)")):
            out += ["", f"Where the counted instructions come from, by {title}; per output pixel, largest first:", "",
                    "| line | instr/px | source |", "|---|---:|---|"]
            out += [f"| {e['line']} | {e['per_pixel']:.0f} | `{e['source']}` |" for e in c[key]]
    import sass_cfg

    rules = sass_cfg.__doc__[sass_cfg.__doc__.index("1. Basic blocks"):].strip()
    out += ["", "## How it counts", "", _how_counted(), "", "### The exact rules (bench/sass_cfg.py)", "", rules, ""]
    if data["errors"]:
        out += ["## Errors", ""] + [f"- {e}" for e in data["errors"]]
    return "\n".join(out) + "\n"


def run(specs, archs, config=CITYSCAPES) -> dict:
    import triton

    from cbda.compile_report import find_nvcc

    rows, errors = [], []
    t0 = time.time()
    for arch in archs:
        for s in specs:
            try:
                rows.append(analyse(s, arch, config))
            except (CountError, RuntimeError, FileNotFoundError, ValueError) as err:
                errors.append(f"{s.name} sm_{arch}: {type(err).__name__}: {err}")
    meta = {"archs": [f"sm_{a}" for a in archs], "config": config, "nvcc": find_nvcc(), "triton": triton.__version__,
            "seconds": round(time.time() - t0, 1)}
    return {"meta": meta, "rows": rows, "errors": errors, "how_counted": _how_counted()}


def main(argv=None) -> int:
    import argparse

    # before anything imports triton: compiled mode, and the launch's FP-fusion default
    os.environ.pop("TRITON_INTERPRET", None)
    os.environ.setdefault("TRITON_DEFAULT_FP_FUSION", "1")

    ap = argparse.ArgumentParser(prog="python bench/static_gpu.py", description=__doc__.splitlines()[0])
    ap.add_argument("--out", help="write <out>.json and <out>.md")
    ap.add_argument("--archs", default="90,80", help="comma-separated, e.g. 90 (default 90,80)")
    ap.add_argument("--only", default="", help="keep kernels whose name contains one of these comma-separated parts")
    ap.add_argument("--set", action="append", default=[], metavar="NAME=INT",
                    help=f"override a configuration value (repeatable), of {', '.join(CITYSCAPES)}")
    args = ap.parse_args(argv)
    config = dict(CITYSCAPES)
    for item in args.set:
        name, _, value = item.partition("=")
        if name not in CITYSCAPES or not value.strip().lstrip("-").isdigit():
            print(f"--set: expected NAME=INT with NAME one of {', '.join(CITYSCAPES)}, got {item!r}", file=sys.stderr)
            return 2
        config[name] = int(value)
    try:
        archs = [int(a) for a in args.archs.split(",") if a.strip()]
    except ValueError:
        archs = []
    if not archs or any(a not in ARCH_LIMITS for a in archs):
        print(f"--archs: expected a comma-separated list of {sorted(ARCH_LIMITS)}, got {args.archs!r}", file=sys.stderr)
        return 2
    parts = [p for p in args.only.split(",") if p] or [""]
    specs = [s for s in KERNELS if any(p in s.name for p in parts)]
    if not specs:
        print(f"--only: no kernel name contains {args.only!r}", file=sys.stderr)
        return 2
    from cbda.compile_report import find_nvcc

    if triton_bin() is None or find_nvcc() is None:
        print("skipped: needs triton (its nvdisasm/cuobjdump) and nvcc", file=sys.stderr)
        return 3
    data = run(specs, archs, config)
    for r in data["rows"]:
        c = r.get("count")
        extra = f"  {c['instructions_per_pixel']:7.0f} instr/px" if c else ""
        print(f"{r['arch']} regs {r['regs']:3d} spill {r['spill_stores']}/{r['spill_loads']} smem "
              f"{r['smem_static'] + r['smem_dynamic']:6d} warps/SM {r['warps']:2d}{extra}  {r['kernel']}")
    for e in data["errors"]:
        print("ERROR", e, file=sys.stderr)
    if args.out:
        os.makedirs(os.path.dirname(os.path.abspath(args.out)), exist_ok=True)
        with open(args.out + ".json", "w") as f:
            json.dump(data, f, indent=1)
        with open(args.out + ".md", "w") as f:
            f.write(render_markdown(data))
    bad = data["errors"] or [r for r in data["rows"] if r["spill_stores"] or r["spill_loads"]]
    return 1 if bad else 0


if __name__ == "__main__":
    raise SystemExit(main())
