"""CPU benchmark: the fused ``cpu`` backend against the ``reference`` at a realistic shape.

    python bench/bench_cpu.py [--images 16] [--classes 19] [--low 128 256] [--size 512 1024]
                              [--radius 1] [--budget 0.05] [--rounds 5] [--batch 4] [--repeat 3]

One acquisition round (round 1 of ``--rounds``, strategy cbda, heuristic ripu) streamed in
batches. Each backend runs in a fresh subprocess so peak memory is its own: the child builds
the logits (in place, no temporaries), records its RSS, then runs the round while a thread
samples /proc/self/statm every millisecond; "peak extra" is the sampled peak RSS minus the
RSS before the round (ru_maxrss minus that baseline is reported too, as a cross-check; torch
allocations are invisible to tracemalloc, so it is not used). The children also write their
picks, and the parent checks they are identical before reporting any time.

Writes bench/results/cpu-<machine>.json and .md (machine = CPU model and core count).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import re
import resource
import subprocess
import sys
import tempfile
import threading
import time

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)


def cpu_model() -> str:
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def machine_slug() -> str:
    slug = re.sub(r"[^a-z0-9]+", "-", cpu_model().lower()).strip("-")
    return f"{slug}-{os.cpu_count()}c"


def _rss() -> int:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


class PeakSampler:
    """Samples this process's RSS every ``period`` seconds until stopped; keeps the maximum."""

    def __init__(self, period=0.001):
        self.period, self.peak, self._stop = period, _rss(), threading.Event()
        self._t = threading.Thread(target=self._run, daemon=True)

    def _run(self):
        while not self._stop.is_set():
            self.peak = max(self.peak, _rss())
            time.sleep(self.period)

    def __enter__(self):
        self._t.start()
        return self

    def __exit__(self, *exc):
        self._stop.set()
        self._t.join()
        self.peak = max(self.peak, _rss())


def child(args) -> None:
    """Run one backend; print a JSON record on the last line of stdout."""
    sys.path.insert(0, ROOT)
    import torch

    import cbda

    n, c = args.images, args.classes
    h, w = args.low
    g = torch.Generator().manual_seed(0)
    logits = torch.empty((n, c, h, w), dtype=torch.float32)
    logits.normal_(generator=g).mul_(3.0)  # in place: no temporary copies before the baseline
    batches = [(list(range(i, min(n, i + args.batch))), logits[i:i + args.batch]) for i in range(0, n, args.batch)]
    kw = dict(budget=args.budget, rounds=args.rounds, strategy="cbda", heuristic="ripu", radius=args.radius,
              out_size=tuple(args.size), num_images=n, backend=args.backend)
    # load the native module before the baseline (its code pages are not round memory); no
    # warm-up round, whose freed scratch could hide in the baseline
    from cbda import _native

    _native.load("_cpu")
    times = []
    base = _rss()
    base_maxrss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    with PeakSampler() as ps:
        for _ in range(args.repeat):
            t0 = time.perf_counter()
            sel = cbda.select(iter(batches), **kw)
            times.append(time.perf_counter() - t0)
    maxrss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    torch.save({"image_ids": sel.image_ids, "ys": sel.ys, "xs": sel.xs, "scores": sel.scores}, args.picks)
    rec = {
        "backend": args.backend,
        "times_s": times,
        "median_s": sorted(times)[len(times) // 2],
        "peak_extra_bytes": ps.peak - base,
        "maxrss_extra_bytes": max(0, maxrss - max(base, base_maxrss)) if maxrss > base_maxrss else maxrss - base,
        "picks": len(sel),
        "threads": torch.get_num_threads(),
    }
    print(json.dumps(rec))


def run_backend(args, backend: str, repeat: int, picks_path: str) -> dict:
    cmd = [sys.executable, os.path.abspath(__file__), "--child", "--backend", backend, "--picks", picks_path,
           "--images", str(args.images), "--classes", str(args.classes), "--low", *map(str, args.low),
           "--size", *map(str, args.size), "--radius", str(args.radius), "--budget", str(args.budget),
           "--rounds", str(args.rounds), "--batch", str(args.batch), "--repeat", str(repeat)]
    out = subprocess.run(cmd, capture_output=True, text=True, cwd=ROOT)
    if out.returncode != 0:
        raise RuntimeError(f"{backend} run failed:\n{out.stderr[-3000:]}")
    return json.loads(out.stdout.strip().splitlines()[-1])


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--images", type=int, default=16)
    p.add_argument("--classes", type=int, default=19)
    p.add_argument("--low", type=int, nargs=2, default=[128, 256])
    p.add_argument("--size", type=int, nargs=2, default=[512, 1024])
    p.add_argument("--radius", type=int, default=1)
    p.add_argument("--budget", type=float, default=0.05)
    p.add_argument("--rounds", type=int, default=5)
    p.add_argument("--batch", type=int, default=4)
    p.add_argument("--repeat", type=int, default=3)
    p.add_argument("--out", default=os.path.join(HERE, "results"))
    p.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    p.add_argument("--backend", default="cpu", help=argparse.SUPPRESS)
    p.add_argument("--picks", default="", help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.child:
        return child(args)

    import torch

    with tempfile.TemporaryDirectory() as tmp:
        recs = {}
        for backend, rep in (("reference", 1), ("cpu", args.repeat)):
            print(f"running {backend} ...", flush=True)
            recs[backend] = run_backend(args, backend, rep, os.path.join(tmp, f"{backend}.pt"))
        a, b = (torch.load(os.path.join(tmp, f"{k}.pt")) for k in ("cpu", "reference"))
    # the picked set must be identical; their order follows the scores, where ulp-level
    # differences of exp/log (see csrc/cpu/score_math.h) may swap two picks of equal value
    # to float precision, so the order is reported, not required
    same_order = all(torch.equal(a[k], b[k]) for k in ("image_ids", "ys", "xs"))
    key = lambda d: sorted(zip(d["image_ids"].tolist(), d["ys"].tolist(), d["xs"].tolist()))  # noqa: E731
    same = key(a) == key(b)
    sa, sb = torch.sort(a["scores"]).values, torch.sort(b["scores"]).values
    score_err = float((sa - sb).abs().max()) if len(sa) == len(sb) and len(sa) else 0.0
    if not same:
        raise SystemExit("picks differ between cpu and reference: not timing a wrong answer")
    n = args.images
    h, w = args.low
    logits_bytes = n * args.classes * h * w * 4
    rows = []
    for k, r in recs.items():
        rows.append({
            "backend": k,
            "time_per_image_ms": 1e3 * r["median_s"] / n,
            "time_per_round_s": r["median_s"],
            "peak_extra_mib": r["peak_extra_bytes"] / 2**20,
            "maxrss_extra_mib": r["maxrss_extra_bytes"] / 2**20,
            "logits_gb_per_s": logits_bytes / r["median_s"] / 1e9,
            "repeats": len(r["times_s"]),
            "threads": r["threads"],
        })
    ref, cpu = rows[0], rows[1]
    result = {
        "machine": {"cpu": cpu_model(), "cores": os.cpu_count(), "hostname": platform.node(),
                    "torch": torch.__version__, "python": platform.python_version()},
        "config": {"images": n, "classes": args.classes, "logits": [h, w], "size": args.size, "radius": args.radius,
                   "budget": args.budget, "rounds": args.rounds, "round_index": 1, "strategy": "cbda",
                   "heuristic": "ripu", "batch": args.batch, "dtype": "float32"},
        "picks_identical": same,
        "pick_order_identical": same_order,
        "picks": recs["cpu"]["picks"],
        "max_abs_score_difference": score_err,
        "rows": rows,
        "speedup": ref["time_per_round_s"] / cpu["time_per_round_s"],
        "memory_ratio": ref["peak_extra_mib"] / max(cpu["peak_extra_mib"], 1e-9),
    }
    os.makedirs(args.out, exist_ok=True)
    stem = os.path.join(args.out, f"cpu-{machine_slug()}")
    with open(stem + ".json", "w") as f:
        json.dump(result, f, indent=2)
    m = result["machine"]
    lines = [
        f"# CPU backend vs reference — {m['cpu']}, {m['cores']} cores, torch {m['torch']}",
        "",
        f"{n} images, {args.classes} classes, logits {h}×{w} upsampled to {args.size[0]}×{args.size[1]}, r = {args.radius}, "
        f"budget {args.budget:g} over {args.rounds} rounds (round 1), strategy cbda (ripu), batches of {args.batch}, float32. "
        f"Picks identical: {same} ({result['picks']} picks; same order: {same_order}; "
        f"max |score difference| {score_err:.2e}).",
        "",
        "| backend | time / image (ms) | time / round (s) | peak extra memory (MiB) | logits GB/s |",
        "|---|---:|---:|---:|---:|",
    ]
    for r in rows:
        lines.append(f"| {r['backend']} | {r['time_per_image_ms']:.1f} | {r['time_per_round_s']:.2f} | "
                     f"{r['peak_extra_mib']:.1f} | {r['logits_gb_per_s']:.3f} |")
    lines += ["", f"cpu is **{result['speedup']:.1f}× faster** and uses **{result['memory_ratio']:.1f}× less peak extra memory**.", ""]
    with open(stem + ".md", "w") as f:
        f.write("\n".join(lines))
    print("\n".join(lines))
    print(f"wrote {stem}.json and {stem}.md")


if __name__ == "__main__":
    main()
