"""Ahead-of-time compile checks of the GPU kernels, no GPU needed.

Triton compiles a kernel for a named target (``GPUTarget("cuda", 90, 32)``) without a
device; the PTX it produces is assembled again here with ``ptxas -v`` (the ptxas Triton
ships) to read the registers, spills, stack frame and shared memory per kernel. The CUDA
sources are compiled with ``nvcc -Xptxas -v`` for the same targets. Used by
tests/test_compile_resources.py (a representative subset, every CI run) and
bench/compile_table.py (the full grid, committed under bench/results/).

A report row: {"kernel", "variant", "arch", "regs", "spill_stores", "spill_loads",
"stack", "smem"} (bytes; ``smem`` is static plus Triton's dynamic shared memory).
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
import tempfile
from dataclasses import dataclass

__all__ = ["parse_ptxas", "triton_variants", "compile_triton", "compile_triton_kernel", "compile_cuda_source", "find_nvcc",
           "triton_ptxas", "ARCHS", "Variant"]

ARCHS = (80, 90)

_FUNC = re.compile(r"(?:Compiling entry function|Function properties for) '?([\w$.]+)'?")
_PROPS = re.compile(r"(\d+) bytes stack frame, (\d+) bytes spill stores, (\d+) bytes spill loads")
_USED = re.compile(r"Used (\d+) registers(?:.*?(\d+) bytes smem)?")


def parse_ptxas(text: str) -> dict[str, dict]:
    """Per-kernel resources from ``ptxas -v`` output (stderr). Kernels without a line of a
    kind keep 0 for it. Names are the (mangled) entry names."""
    out: dict[str, dict] = {}
    current = None
    for line in text.splitlines():
        m = _FUNC.search(line)
        if m:
            current = m.group(1)
            out.setdefault(current, {"regs": 0, "spill_stores": 0, "spill_loads": 0, "stack": 0, "smem": 0})
            continue
        if current is None:
            continue
        m = _PROPS.search(line)
        if m:
            rec = out[current]
            rec["stack"], rec["spill_stores"], rec["spill_loads"] = (int(g) for g in m.groups())
            continue
        m = _USED.search(line)
        if m:
            out[current]["regs"] = int(m.group(1))
            out[current]["smem"] = int(m.group(2) or 0)
    return out


# -- Triton ---------------------------------------------------------------------------------

@dataclass(frozen=True)
class Variant:
    """One specialisation of a Triton kernel as the backend launches it."""

    kernel: str  # "score.fused_score_kernel", ...
    label: str
    types: tuple  # ((arg, type string), ...) of the runtime arguments
    constexprs: tuple  # ((name, value), ...)
    num_warps: int
    maxnreg: int | None = None  # the launch's register ceiling, when it sets one

    def describe(self) -> str:
        return f"{self.kernel.split('.')[-1]}[{self.label}]"


_DT = {"fp32": "*fp32", "bf16": "*bf16", "fp16": "*fp16"}


def _fused_types(dtype: str) -> tuple:
    t = dict(
        logits=_DT[dtype], s_b="i32", s_c="i32", s_h="i32", s_w="i32", h="i32", w="i32", H="i32", W="i32",
        scale_h="fp32", scale_w="fp32", ln_c="fp32", image_ids="*i64", seed_mix="i64", weights="*fp32",
        blocked="*u8", cut_s="*fp32", cut_g="*i64", score_out="*fp32", label_out="*i64", cand_score="*fp32",
        cand_li="*i64", cand_label="*i32", cand_count="*i64", hist="*i64", bad_flag="*i64", scratch_e="*fp32",
        scratch_l="*i32", imp_table="*fp32", ntiles="i32", tiles_w="i32", tiles_per_img="i32", nprog="i32",
    )
    return tuple(t.items())


def triton_variants(full: bool) -> list[Variant]:
    """The specialisations the triton backend launches: C = 19 (C_BINS 32) and a small C
    (C = 5, C_BINS 8); window radius r = 0, 1, 2, 3, 8 (r > 2: the window kernel) and the
    65×65 window of ripu_pixel; float32/bfloat16/float16 logits; round (candidates,
    weights, blocked mask, histogram) and map (scores + labels) modes.

    ``full=False`` gives a representative subset that covers every kernel and every radius
    with the heaviest flags (what CI compiles on every run).
    """
    from .triton.greedy import STAMP_WIDTH
    from .triton.score import FUSED_MAXNREG, HEUR_CODES, PIXEL_STATS, tile_config
    from .triton.window import COL_TILE, ROW_STRIP

    out: list[Variant] = []
    dtypes = ("fp32", "bf16", "fp16") if full else ("fp32", "bf16")
    for dtype in dtypes:
        for cbins in (32, 8):
            if not full and (dtype, cbins) not in (("fp32", 32), ("bf16", 8)):
                continue
            cases = [("ripu", r) for r in (0, 1, 2)]
            if full:
                cases += [(h, 0) for h in ("entropy", "margin", "least_confidence", "random")]
            for heur, r in cases:
                hb, wb, nw = tile_config(r)
                for mode in (("round", "maps") if full else ("round",)):
                    rnd = mode == "round"
                    cx = dict(C=19 if cbins == 32 else 5, HEUR=HEUR_CODES[heur], R=r, HB=hb, WB=wb, NW=nw, C_BINS=cbins, UPSAMPLE=True,
                              HAS_W=rnd, HAS_BLOCKED=rnd, WRITE_MAPS=not rnd, EMIT=rnd, HIST=True)
                    out.append(Variant("score.fused_score_kernel", f"{heur} r={r} {dtype} C_BINS={cbins} {mode}",
                                       _fused_types(dtype), tuple(cx.items()), 4, FUSED_MAXNREG if r > 0 else None))
            # the per-pixel maps of the wide windows: normalised entropy (ripu r > 2), raw (ripu_pixel)
            for heur, code in (("entropy-maps", HEUR_CODES["entropy"]), ("pixel-stats", PIXEL_STATS)):
                if not full and heur == "pixel-stats":
                    continue
                hb, wb, nw = tile_config(0)
                cx = dict(C=19 if cbins == 32 else 5, HEUR=code, R=0, HB=hb, WB=wb, NW=nw, C_BINS=cbins, UPSAMPLE=True, HAS_W=False,
                          HAS_BLOCKED=False, WRITE_MAPS=True, EMIT=False, HIST=True)
                out.append(Variant("score.fused_score_kernel", f"{heur} {dtype} C_BINS={cbins}", _fused_types(dtype),
                                   tuple(cx.items()), 4))
    wtypes = (("ent", "*fp32"), ("lab", "*i32"), ("out", "*fp32"), ("H", "i32"), ("W", "i32"), ("ln_c", "fp32"),
              ("tiles_w", "i32"), ("strips", "i32"))
    for cbins in ((32, 8) if full else (32,)):
        for r, mean_u in ((3, True), (8, True), (32, False)):
            cx = dict(R=r, TW=COL_TILE, RS=ROW_STRIP, C_BINS=cbins, MEAN_U=mean_u)
            out.append(Variant("window.window_score_kernel", f"r={r} {'ripu' if mean_u else 'ripu_pixel'} C_BINS={cbins}",
                               wtypes, tuple(cx.items()), 4))
    gtypes = (("cand_li", "*i64"), ("seg", "*i64"), ("out_pos", "*i64"), ("out_count", "*i64"), ("bitmap", "*u8"),
              ("H", "i32"), ("W", "i32"), ("HW", "i32"), ("quota", "i32"))
    for r in (0, 1, 2, 3, 8):
        for seg_out in ((True, False) if full else (True,)):
            r2 = 2 * r
            dxb = min(STAMP_WIDTH, 1 << (2 * r2).bit_length())
            cx = dict(R2=r2, CH=32, DXB=dxb, SEG_OUT=seg_out)
            out.append(Variant("greedy.greedy_scan_kernel", f"r={r} {'global' if seg_out else 'per-image'}",
                               gtypes, tuple(cx.items()), 1))
    etypes = (("scores", "*fp32"), ("labels", "*i64"), ("n_total", "i64"), ("HW", "i32"), ("image_ids", "*i64"),
              ("weights", "*fp32"), ("blocked", "*u8"), ("cut_s", "*fp32"), ("cut_g", "*i64"), ("cand_score", "*fp32"),
              ("cand_li", "*i64"), ("cand_label", "*i32"), ("cand_count", "*i64"))
    cx = dict(BLOCK=1024, HAS_LABELS=True, HAS_W=True, HAS_BLOCKED=True)
    out.append(Variant("score.emit_kernel", "labels weights blocked", etypes, tuple(cx.items()), 4))
    out += _select_variants(full)
    return out


def _select_variants(full: bool) -> list[Variant]:
    """The radix-select pruning kernels (``cbda.triton.select``): the histogram pass over each
    key word, per image and per batch, the per-segment scan and the compaction."""
    from .triton.select import DIGIT_BITS

    nb = 1 << DIGIT_BITS
    # n and H·W arrive as i32 below 2^31 (the JIT's specialisation; the indices are int64 loads)
    keys = (("score", "*fp32"), ("li", "*i64"), ("rank", "*i64"), ("n", "i32"), ("HW", "i32"), ("state", "*i64"))
    htypes = keys + (("hist", "*i64"), ("ndone", "*i64"), ("nseg", "i32"), ("shift", "i32"))
    ktypes = keys[:2] + (("label", "*i32"),) + keys[2:] + (("out_s", "*fp32"), ("out_li", "*i64"),
                                                          ("out_lab", "*i32"), ("out_count", "*i64"))
    stypes = (("state", "*i64"), ("hist", "*i64"), ("ndone", "*i64"), ("shift", "i32"))
    out = []
    for glob in (True, False):
        scope = "batch" if glob else "per-image"
        for word in (0, 1):
            cx = dict(WORD=word, GLOBAL=glob, BLOCK=1024, NB=nb)
            out.append(Variant("select.radix_hist_kernel", f"{scope} word={word}", htypes, tuple(cx.items()), 4))
        out.append(Variant("select.radix_keep_kernel", scope, ktypes, (("GLOBAL", glob), ("BLOCK", 1024)), 4))
    for word in (0, 1):
        for first in ((True, False) if full else (word == 0,)):
            cx = dict(WORD=word, FIRST=first, NB=nb)
            out.append(Variant("select.radix_scan_kernel", f"word={word} first={first}", stypes, tuple(cx.items()), 1))
    return out


def triton_ptxas() -> str | None:
    """The ptxas Triton ships (the newest of its two), or None."""
    try:
        import triton
    except ImportError:
        return None
    d = os.path.join(os.path.dirname(triton.__file__), "backends", "nvidia", "bin")
    for name in ("ptxas-blackwell", "ptxas"):
        p = os.path.join(d, name)
        if os.path.exists(p) and os.access(p, os.X_OK):
            return p
    return shutil.which("ptxas")


def compile_triton_kernel(v: Variant, arch: int):
    """Triton's compiled kernel of one variant for sm_<arch> (``.asm["ptx"]``,
    ``.asm["cubin"]`` with Triton's line info, ``.metadata``); raises on a compile error.
    Also used by bench/static_gpu.py, which disassembles the cubin."""
    import importlib

    import triton
    from triton.backends.compiler import GPUTarget
    from triton.compiler import ASTSource

    mod_name, fn_name = v.kernel.rsplit(".", 1)
    fn = getattr(importlib.import_module(f"cbda.triton.{mod_name}"), fn_name)
    types = dict(v.types)
    consts = dict(v.constexprs)
    sig = {n: (types[n] if n in types else "constexpr") for n in fn.arg_names}
    missing = [n for n in fn.arg_names if n not in types and n not in consts]
    if missing:
        raise ValueError(f"{v.describe()}: no type or value for {missing}")
    # pointers 16-byte aligned, as torch allocations are (what the JIT specialises on)
    attrs = {(i,): [["tt.divisibility", 16]] for i, n in enumerate(fn.arg_names) if sig[n].startswith("*")}
    return triton.compile(ASTSource(fn, sig, consts, attrs), target=GPUTarget("cuda", arch, 32),
                          options={"num_warps": v.num_warps, **({"maxnreg": v.maxnreg} if v.maxnreg else {})})


def compile_triton(v: Variant, arch: int) -> dict:
    """Compile one variant for sm_<arch> and return its report row (raises on a compile
    error; ``RuntimeError`` when ptxas cannot assemble the PTX)."""
    k = compile_triton_kernel(v, arch)
    ptx = k.asm["ptx"]
    target = re.search(r"^\.target\s+(sm_\w+)", ptx, re.M).group(1)
    ptxas = triton_ptxas()
    with tempfile.TemporaryDirectory() as tmp:
        src = os.path.join(tmp, "k.ptx")
        with open(src, "w") as f:
            f.write(ptx)
        proc = subprocess.run([ptxas, "-v", "--gpu-name", target, src, "-o", os.path.join(tmp, "k.cubin")],
                              capture_output=True, text=True)
    if proc.returncode != 0:
        raise RuntimeError(f"ptxas failed on {v.describe()} for {target}: {proc.stderr[-2000:]}")
    rep = parse_ptxas(proc.stderr)
    if len(rep) != 1:
        raise RuntimeError(f"{v.describe()}: expected one kernel in the ptxas report, got {list(rep)}")
    row = next(iter(rep.values()))
    row["smem"] += int(getattr(k.metadata, "shared", 0) or 0)
    return {"kernel": v.kernel, "variant": v.label, "arch": target, "num_warps": v.num_warps, **row}


# -- CUDA -----------------------------------------------------------------------------------

def find_nvcc() -> str | None:
    if os.environ.get("NVCC"):
        return shutil.which(os.environ["NVCC"])
    for home in (os.environ.get("CUDA_HOME"), os.environ.get("CUDA_PATH"), "/usr/local/cuda"):
        if home and os.path.exists(os.path.join(home, "bin", "nvcc")):
            return os.path.join(home, "bin", "nvcc")
    return shutil.which("nvcc")


def compile_cuda_source(nvcc: str, src: str, include: str, out_dir: str, arch: int, host: bool,
                        extra: tuple = ()) -> tuple[int, str, list[dict]]:
    """nvcc with -Xptxas -v for sm_<arch>: (return code, stderr, report rows).

    ``host=True`` compiles the whole translation unit (host and device code, ``-c``) as the
    build does; ``host=False`` only the device code (``--cubin``), which is what the resource
    report needs and takes a fraction of the time for files with heavy host templates (CUB).
    ``extra``: more nvcc flags (bench/static_gpu.py adds ``-lineinfo``).
    """
    base = os.path.join(out_dir, f"{os.path.basename(src)}.sm_{arch}")
    common = ["-I", include, "-std=c++17", "-O3", "--expt-relaxed-constexpr", "-Xptxas", "-v"]
    if host:
        cmd = [nvcc, "-c", src, "-o", base + ".o", "-Xcompiler", "-fPIC", f"-gencode=arch=compute_{arch},code=sm_{arch}"]
    else:
        cmd = [nvcc, "--cubin", src, "-o", base + ".cubin", f"-arch=sm_{arch}"]
    proc = subprocess.run(cmd + common + list(extra), capture_output=True, text=True)
    rows = [{"kernel": name, "variant": os.path.basename(src), "arch": f"sm_{arch}", **rec}
            for name, rec in parse_ptxas(proc.stderr).items()]
    return proc.returncode, proc.stderr, rows


# -- command line -----------------------------------------------------------------------------

def _triton_job(args):
    v, arch = args
    try:
        return compile_triton(v, arch), None
    except Exception as err:  # reported per variant; the caller fails on any
        return {"kernel": v.kernel, "variant": v.label, "arch": f"sm_{arch}"}, f"{type(err).__name__}: {err}"


def triton_report(full: bool, archs=ARCHS, jobs: int = 1) -> tuple[list[dict], list[str]]:
    """(rows, errors) of every Triton variant for every arch."""
    tasks = [(v, a) for a in archs for v in triton_variants(full)]
    if jobs > 1:
        import multiprocessing as mp
        from concurrent.futures import ProcessPoolExecutor

        with ProcessPoolExecutor(max_workers=jobs, mp_context=mp.get_context("spawn")) as pool:
            results = list(pool.map(_triton_job, tasks))
    else:
        results = [_triton_job(t) for t in tasks]
    rows = [r for r, e in results if e is None]
    errors = [f"{r['kernel']}[{r['variant']}] {r['arch']}: {e}" for r, e in results if e is not None]
    return rows, errors


def cuda_report(archs=ARCHS, jobs: int = 1) -> tuple[list[dict], list[str]]:
    """(rows, errors) of every csrc/cuda/*.cu for every arch (device code only)."""
    import glob
    from concurrent.futures import ThreadPoolExecutor

    nvcc = find_nvcc()
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    sources = sorted(glob.glob(os.path.join(root, "csrc", "cuda", "*.cu")))
    if nvcc is None or not sources:
        return [], [f"skipped: {'nvcc not found' if nvcc is None else 'no csrc/cuda sources next to the package'}"]
    with tempfile.TemporaryDirectory() as tmp, ThreadPoolExecutor(max_workers=max(1, jobs)) as pool:
        futs = [(s, a, pool.submit(compile_cuda_source, nvcc, s, os.path.join(root, "csrc"), tmp, a, False))
                for s in sources for a in archs]
        rows, errors = [], []
        for s, a, f in futs:
            rc, err, rs = f.result()
            rows += rs
            if rc != 0:
                errors.append(f"{os.path.basename(s)} sm_{a}: nvcc failed: {err[-1500:]}")
    return rows, errors


def render_markdown(rows: list[dict], title: str) -> str:
    lines = [f"## {title}", "", "| kernel | variant | arch | regs | smem B | stack B | spill st/ld B |", "|---|---|---|---:|---:|---:|---:|"]
    for r in sorted(rows, key=lambda r: (r["kernel"], r["variant"], r["arch"])):
        name = r["kernel"] if len(r["kernel"]) < 60 else r["kernel"][:57] + "..."
        lines.append(f"| {name} | {r['variant']} | {r['arch']} | {r['regs']} | {r['smem']} | {r['stack']} | "
                     f"{r['spill_stores']}/{r['spill_loads']} |")
    return "\n".join(lines)


def main(argv=None) -> int:
    import argparse
    import json
    import platform
    import time

    ap = argparse.ArgumentParser(prog="python -m cbda.compile_report", description=__doc__.splitlines()[0])
    ap.add_argument("--full", action="store_true", help="every shipped specialisation (default: the CI subset)")
    ap.add_argument("--archs", default=",".join(str(a) for a in ARCHS), help="comma-separated, e.g. 80,90")
    ap.add_argument("--jobs", type=int, default=1)
    ap.add_argument("--no-cuda", action="store_true", help="Triton kernels only")
    ap.add_argument("--json", help="write the rows here")
    ap.add_argument("--md", help="write a markdown table here")
    args = ap.parse_args(argv)
    try:
        archs = tuple(int(a) for a in args.archs.split(",") if a.strip())
    except ValueError:
        print(f"--archs: expected comma-separated integers like 80,90, got {args.archs!r}", file=sys.stderr)
        return 2
    if triton_ptxas() is None:
        print("skipped: triton (and its ptxas) not installed", file=sys.stderr)
        return 3
    t0 = time.time()
    trows, terr = triton_report(args.full, archs, args.jobs)
    crows, cerr = ([], []) if args.no_cuda else cuda_report(archs, args.jobs)
    import triton

    meta = {"triton": triton.__version__, "ptxas": triton_ptxas(), "nvcc": find_nvcc(), "host": platform.node(),
            "full": args.full, "archs": list(archs), "seconds": round(time.time() - t0, 1)}
    data = {"meta": meta, "triton": trows, "cuda": crows, "errors": terr + cerr,
            "variants": [{"kernel": v.kernel, "variant": v.label} for v in triton_variants(args.full)]}
    if args.json:
        with open(args.json, "w") as f:
            json.dump(data, f, indent=1)
    if args.md:
        with open(args.md, "w") as f:
            f.write(f"# Compile resources (no GPU: AOT for {', '.join(f'sm_{a}' for a in archs)})\n\n")
            f.write(f"triton {meta['triton']}, ptxas {os.path.basename(meta['ptxas'] or '-')}, nvcc {meta['nvcc']}; "
                    f"{'full grid' if args.full else 'CI subset'}; regenerate: `python bench/compile_table.py`\n\n")
            f.write(render_markdown(trows, "Triton kernels") + "\n\n" + render_markdown(crows, "CUDA kernels") + "\n")
    spills = [r for r in trows + crows if r["spill_stores"] or r["spill_loads"]]
    for r in trows + crows:
        print(f"{r['arch']:7s} regs {r['regs']:3d} smem {r['smem']:6d} stack {r['stack']:4d} "
              f"spill {r['spill_stores']}/{r['spill_loads']}  {r['kernel'].split('.')[-1][:60]} [{r['variant']}]")
    for e in terr + cerr:
        print("ERROR", e, file=sys.stderr)
    print(f"{len(trows)} triton + {len(crows)} cuda kernel reports, {len(spills)} with spills, "
          f"{len(terr + cerr)} errors, {meta['seconds']} s")
    return 1 if spills or terr or [e for e in cerr if not e.startswith("skipped")] else 0


if __name__ == "__main__":
    raise SystemExit(main())
