"""``python -m cbda.info``: build facts and the runtime's view (STYLE 4).

Prints which native modules were built (or why not), the compiler, nvcc and arch list,
OpenMP, Triton, the GPU torch sees, and which backend ``auto`` picks here and why.
``--check`` also runs every available backend against the reference (exit 1 on a mismatch).
"""

from __future__ import annotations

import importlib.util
import json
import platform

import torch

from . import __version__, _native
from .api import dispatch


def collect() -> dict:
    """Everything ``python -m cbda.info`` prints, as a dict."""
    info = _native.build_info()
    modules = {}
    for name in ("_cpu", "_cuda"):
        mod = _native.load(name)
        rec = dict(info.get("modules", {}).get(name, {}))
        rec["loaded"] = mod is not None
        if mod is None:
            rec["why_not"] = _native.load_error(name)
        modules[name] = rec
    cpu_mod = _native.load("_cpu")
    triton_spec = importlib.util.find_spec("triton")
    triton_version = None
    if triton_spec is not None:
        try:
            import triton

            triton_version = triton.__version__
        except Exception as err:  # a broken triton install must not break info
            triton_version = f"import failed: {err}"
    gpu = None
    if torch.cuda.is_available():
        props = torch.cuda.get_device_properties(0)
        gpu = {"name": props.name, "capability": f"{props.major}.{props.minor}", "memory_gib": round(props.total_memory / 2**30, 1)}
    devices = [torch.device("cpu")] + ([torch.device("cuda")] if gpu else [])
    auto = {}
    for dev in devices:
        rows = dispatch.explain(dev)
        chosen = next((n for n, why in rows if not why and n in dispatch.auto_order(dev)), None)
        auto[dev.type] = {"auto_picks": chosen, "backends": {n: (why or "available") for n, why in rows}}
    return {
        "cbda": __version__,
        "python": platform.python_version(),
        "torch": torch.__version__,
        "torch_cuda": torch.version.cuda,
        "build": {k: v for k, v in info.items() if k != "modules"},
        "modules": modules,
        "openmp": bool(cpu_mod.has_openmp()) if cpu_mod is not None else None,
        "openmp_threads": int(cpu_mod.max_threads()) if cpu_mod is not None else None,
        "triton": triton_version,
        "gpu": gpu,
        "dispatch": auto,
        "missing_native": missing_native(),
    }


def missing_native() -> dict:
    """Native modules that should be here but are not: name -> {"cause", "fix"} (issue 12)."""
    out = {}
    for name in ("_cpu", "_cuda"):
        found = _native.missing_cause(name)
        if found is not None:
            out[name] = {"cause": found[0], "fix": found[1]}
    return out


def render_missing(data: dict) -> list[str]:
    """The lines that flag an expected native module as missing (none when all is well)."""
    return [f"  WARNING: cbda.{name} is expected but missing: {rec['cause']}.\n    Fix: {rec['fix']}."
            for name, rec in data.get("missing_native", {}).items()]


def render(data: dict) -> str:
    lines = [f"cbda {data['cbda']}  python {data['python']}  torch {data['torch']} (CUDA {data['torch_cuda']})"]
    lines.append("native modules:")
    for name, rec in data["modules"].items():
        state = "loaded" if rec.get("loaded") else f"missing: {rec.get('why_not')}"
        detail = {k: v for k, v in rec.items() if k not in ("loaded", "why_not", "built", "reason")}
        lines.append(f"  {name}: {state}" + (f"  {json.dumps(detail, sort_keys=True)}" if detail else ""))
    lines += render_missing(data)
    lines.append(f"OpenMP: {data['openmp']} (threads: {data['openmp_threads']})")
    lines.append(f"Triton: {data['triton'] or 'not installed'}")
    lines.append(f"GPU: {data['gpu']['name'] + ' sm_' + data['gpu']['capability'].replace('.', '') if data['gpu'] else 'none seen by torch'}")
    for dev, rec in data["dispatch"].items():
        lines.append(f"backend='auto' on {dev} tensors picks: {rec['auto_picks']}")
        for name, why in rec["backends"].items():
            lines.append(f"  {name:9s} {why if isinstance(why, str) else '; '.join(why)}")
    return "\n".join(lines)


def check_backends(devices: list[torch.device] | None = None) -> list:
    """``--check``: every backend that can run here (the reference excepted: it is the
    yardstick), on every device torch sees, against the reference (cbda.api.selfcheck's
    full grid: ties, -inf, float32/bfloat16/float16, r = 0/1/2/3). Returns CheckResults."""
    from .api.selfcheck import check_backend

    if devices is None:
        devices = [torch.device("cpu")] + ([torch.device("cuda")] if torch.cuda.is_available() else [])
    results = []
    for dev in devices:
        for name, why in dispatch.explain(dev):
            if name == "reference" or why:
                continue
            results.append(check_backend(name, dev))
    return results


def render_checks(results: list) -> str:
    if not results:
        return "check: no backend other than the reference can run here"
    lines = ["check against the reference (ties, -inf, all dtypes, r = 0/1/2/3):"]
    lines += ["  " + r.line() for r in results]
    bad = [r.backend for r in results if not r.ok]
    lines.append("check: " + ("MISMATCH in " + ", ".join(bad) if bad else "all backends agree with the reference"))
    return "\n".join(lines)


def main(argv=None) -> int:
    import argparse

    parser = argparse.ArgumentParser(prog="python -m cbda.info", description=__doc__.splitlines()[0])
    parser.add_argument("--json", action="store_true", help="print JSON instead of text")
    parser.add_argument("--check", action="store_true",
                        help="also run every available backend against the reference on small random inputs; "
                             "exit 1 on any mismatch")
    args = parser.parse_args(argv)
    data = collect()
    results = check_backends() if args.check else None
    if args.json:
        if results is not None:
            data["check"] = [dict(vars(r), ok=r.ok) for r in results]
        print(json.dumps(data, indent=2, default=str))
    else:
        print(render(data))
        if results is not None:
            print(render_checks(results))
    return 1 if results is not None and not all(r.ok for r in results) else 0


if __name__ == "__main__":
    raise SystemExit(main())
