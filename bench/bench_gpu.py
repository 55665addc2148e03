"""GPU benchmark: reference, triton and cuda side by side (docs/architecture.md, "Performance targets"), plus a CPU-tiny mode.

    python bench/bench_gpu.py                 # on a GPU: the full run (bench/gpu_check.sh calls it)
    python bench/bench_gpu.py --tiny --out D  # on CPU, seconds: the same code paths at a tiny size

Per backend, in its own subprocess (a crashing kernel cannot take the others down, and peak
memory is its own):

1. correctness first: one batch of scores and one round of picks against the reference on
   the same device (max |score - reference|, labels and picks equal); a backend that
   disagrees is reported and not timed;
2. latency per image and peak extra device memory (``torch.cuda.max_memory_allocated`` over
   what the logits already hold) of a ``cbda.select`` round (cbda, ripu, r = 1) at 512×1024
   and 1024×2048 outputs from stride-4 logits, C = 19, float32 and bfloat16; median of
   ``--repeat`` runs timed with CUDA events after a warm-up; GB/s over the logits read;
3. one whole round of ``--round-images`` images (2975: Cityscapes) at 1024×2048 streamed
   through ``cbda.AcquisitionRound`` from logits generated on the device batch by batch
   (never stored), for the fused backends; skipped when the estimate from step 2 exceeds
   ``--round-budget`` seconds.

Writes bench/results/gpu-<device>.json and .md (``--out`` to write elsewhere). In ``--tiny``
mode everything runs on the CPU at toy sizes with the backends available there (reference,
cpu, and triton when TRITON_INTERPRET=1), so CI runs this file and it cannot rot unseen.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import subprocess
import sys
import time

HERE = os.path.dirname(os.path.abspath(__file__))
FULL_SHAPES = [((128, 256), (512, 1024)), ((256, 512), (1024, 2048))]
TINY_SHAPES = [((4, 6), (16, 24)), ((6, 8), (24, 32))]


def _cfg(args) -> dict:
    tiny = args.tiny
    return {
        "device": "cpu" if tiny else "cuda",
        "classes": 5 if tiny else 19,
        "shapes": TINY_SHAPES if tiny else FULL_SHAPES,
        "dtypes": ["float32", "bfloat16"],
        "batch": 2 if tiny else 4,
        "repeat": 2 if tiny else args.repeat,
        "round_images": 6 if tiny else args.round_images,
        "round_size": (24, 32) if tiny else (1024, 2048),
        "round_low": (6, 8) if tiny else (256, 512),
        "round_batch": 3 if tiny else 8,
        "round_pool": 4 if tiny else 64,
        "round_strategies": ["cbda", "ra"],
        "budget": 0.05, "rounds": 5, "radius": 1,
    }


# ---------------------------------------------------------------------------------------------
# worker: one backend, in its own process
# ---------------------------------------------------------------------------------------------

def _sync(dev):
    import torch

    if dev.type == "cuda":
        torch.cuda.synchronize(dev)


def _timer(dev):
    """start() / stop() -> seconds, with CUDA events on a GPU (the host does not wait per batch)."""
    import torch

    if dev.type == "cuda":
        class T:
            def start(self):
                self.a, self.b = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
                self.a.record()

            def stop(self):
                self.b.record()
                self.b.synchronize()
                return self.a.elapsed_time(self.b) / 1e3
        return T()

    class C:
        def start(self):
            self.t = time.perf_counter()

        def stop(self):
            return time.perf_counter() - self.t
    return C()


def _peak_reset(dev):
    import torch

    if dev.type == "cuda":
        torch.cuda.synchronize(dev)
        torch.cuda.reset_peak_memory_stats(dev)
        return torch.cuda.memory_allocated(dev)
    return 0


def _peak_extra(dev, base):
    import torch

    return (torch.cuda.max_memory_allocated(dev) - base) if dev.type == "cuda" else None


def _logits(n, c, low, dtype, dev, seed):
    import torch

    g = torch.Generator(device=dev).manual_seed(seed)
    return torch.randn((n, c, *low), generator=g, device=dev).mul_(3.0).to(getattr(torch, dtype))


def _select(backend, x, cfg, size, ids=None):
    import cbda

    n = x.shape[0]
    return cbda.select(x, budget=cfg["budget"], rounds=cfg["rounds"], strategy="cbda", heuristic="ripu",
                       radius=cfg["radius"], out_size=size, num_images=n, image_ids=ids, backend=backend)


def worker(backend: str, cfg: dict) -> dict:
    import torch

    import cbda

    os.environ["CBDA_SELF_CHECK"] = "0"  # the backend is named; the check below is the bench's own
    dev = torch.device(cfg["device"])
    out = {"backend": backend, "device": str(dev), "check": {}, "latency": [], "round": None}
    c = cfg["classes"]
    # 1. correctness first, on the smaller shape
    low, size = cfg["shapes"][0]
    x = _logits(2, c, low, "float32", dev, seed=1)
    s, lab = cbda.score(x, radius=cfg["radius"], out_size=size, backend=backend)
    rs, rl = cbda.score(x, radius=cfg["radius"], out_size=size, backend="reference")
    a, r = _select(backend, x, cfg, size), _select("reference", x, cfg, size)
    picks_equal = all(torch.equal(getattr(a, f).cpu(), getattr(r, f).cpu()) for f in ("image_ids", "ys", "xs"))
    err = float((s.double() - rs.double()).abs().max())
    rel = float(((s.double() - rs.double()).abs() / rs.double().abs().clamp_min(1e-30)).max())
    out["check"] = {"max_abs_score_error": err, "max_rel_score_error": rel, "labels_equal": bool(torch.equal(lab, rl)),
                    "picks_equal": picks_equal, "ok": bool(picks_equal and torch.equal(lab, rl) and err <= 1e-5)}
    del x, s, lab, rs, rl
    if not out["check"]["ok"]:
        return out
    # 2. latency and peak extra memory per image
    for low, size in cfg["shapes"]:
        for dtype in cfg["dtypes"]:
            b = cfg["batch"] if not (backend == "reference" and size[0] >= 1024) else 1
            x = _logits(b, c, low, dtype, dev, seed=2)
            try:
                _select(backend, x, cfg, size)  # warm-up: compiles, allocator, caches
                times, peaks = [], []
                for _ in range(cfg["repeat"]):
                    base = _peak_reset(dev)
                    t = _timer(dev)
                    t.start()
                    _select(backend, x, cfg, size)
                    times.append(t.stop())
                    peaks.append(_peak_extra(dev, base))
                times.sort()
                med = times[len(times) // 2]
                row = {"low": list(low), "size": list(size), "dtype": dtype, "batch": b,
                       "ms_per_image": 1e3 * med / b, "gb_per_s": x.numel() * x.element_size() / med / 1e9,
                       "peak_extra_mib_per_image": (max(peaks) / b / 2**20) if peaks[0] is not None else None}
            except (RuntimeError, MemoryError) as e:  # the reference may not fit: report it
                row = {"low": list(low), "size": list(size), "dtype": dtype, "batch": b, "error": f"{type(e).__name__}: {e}"[:300]}
            out["latency"].append(row)
            del x
            if dev.type == "cuda":
                torch.cuda.empty_cache()
    # 3. whole rounds streamed through AcquisitionRound (fused backends only: the reference
    #    stores every map), with the driver's counters next to the time
    if backend != "reference":
        n = cfg["round_images"]
        big = [r for r in out["latency"] if r["size"] == list(cfg["round_size"]) and r["dtype"] == "bfloat16" and "ms_per_image" in r]
        est = big[0]["ms_per_image"] * n / 1e3 if big else None
        if est is not None and est > cfg["round_budget"]:
            out["round"] = {"skipped": f"estimated {est:.0f} s > --round-budget {cfg['round_budget']} s", "images": n}
        else:
            out["rounds"] = [_round(backend, cfg, strategy, dev) for strategy in cfg["round_strategies"]]
    return out


def _round(backend: str, cfg: dict, strategy: str, dev) -> dict:
    """One whole round of ``round_images`` images from a pool of pre-generated bf16 logits (the
    pool is cycled under distinct image ids, so generating data is not timed), in the caller's
    batches of ``round_batch`` re-batched by cbda from free memory. Counters: the backend's
    RoundCounters, and on a GPU the synchronising torch calls torch's sync debug mode saw."""
    import warnings

    import torch

    import cbda

    n, bs, c = cfg["round_images"], cfg["round_batch"], cfg["classes"]
    pool = _logits(min(n, cfg["round_pool"]), c, cfg["round_low"], "bfloat16", dev, seed=7)
    rnd = cbda.AcquisitionRound(budget=cfg["budget"], rounds=cfg["rounds"], strategy=strategy, heuristic="ripu",
                                radius=cfg["radius"], out_size=tuple(cfg["round_size"]), num_images=n,
                                backend=backend)
    base = _peak_reset(dev)
    t = _timer(dev)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        if dev.type == "cuda":
            torch.cuda.set_sync_debug_mode("warn")
        try:
            t.start()
            for s0 in range(0, n, bs):
                ids = list(range(s0, min(n, s0 + bs)))
                rows = [i % pool.shape[0] for i in ids]
                rnd.add(ids, pool[rows[0]:rows[0] + len(rows)] if rows == list(range(rows[0], rows[0] + len(rows)))
                        else pool[rows])
            sel = rnd.finish(commit=False)
            sec = t.stop()
        finally:
            if dev.type == "cuda":
                torch.cuda.set_sync_debug_mode(0)
    syncs = sum(1 for w in caught if "synchroniz" in str(w.message).lower()) if dev.type == "cuda" else None
    counters = rnd.counters
    row = {"strategy": strategy, "images": n, "seconds": sec, "picks": int(sel.image_ids.numel()),
           "peak_extra_mib": (_peak_extra(dev, base) or 0) / 2**20 if dev.type == "cuda" else None,
           "torch_syncs_seen": syncs, "caller_batch": bs, "pool": int(pool.shape[0])}
    if counters is not None:
        from dataclasses import asdict

        row["counters"] = asdict(counters)
    return row


# ---------------------------------------------------------------------------------------------
# driver
# ---------------------------------------------------------------------------------------------

def device_name(tiny: bool) -> str:
    import platform

    import torch

    if not tiny and torch.cuda.is_available():
        return torch.cuda.get_device_name(0)
    return f"cpu-{platform.machine()}"


def slug(name: str) -> str:
    return re.sub(r"[^a-z0-9]+", "-", name.lower()).strip("-")


def available_backends(tiny: bool) -> list[str]:
    import torch

    from cbda.api import dispatch

    dev = torch.device("cpu" if tiny else "cuda")
    names = ["reference", "triton", "cuda"] + (["cpu"] if tiny else [])
    return [n for n in names if not dispatch.reasons(n, dev, torch.float32)]


def render(data: dict) -> str:
    lines = [f"# GPU benchmark: {data['device_name']}", "",
             f"torch {data['torch']}, triton {data['triton']}, cbda {data['cbda']}; {'TINY CPU MODE' if data['tiny'] else 'full'}; "
             f"{data['seconds']:.0f} s", "",
             "| backend | check: max abs score error | labels | picks | ok |", "|---|---:|---|---|---|"]
    for r in data["results"]:
        if "error" in r:
            lines.append(f"| {r['backend']} | crashed: {r['error'][:120]} | | | no |")
            continue
        c = r["check"]
        lines.append(f"| {r['backend']} | {c.get('max_abs_score_error', float('nan')):.2e} | "
                     f"{'equal' if c.get('labels_equal') else 'DIFFER'} | {'equal' if c.get('picks_equal') else 'DIFFER'} | "
                     f"{'yes' if c.get('ok') else 'NO'} |")
    lines += ["", "| backend | logits | output | dtype | ms / image | GB/s (logits) | peak extra MiB / image |",
              "|---|---|---|---|---:|---:|---:|"]
    for r in data["results"]:
        for row in r.get("latency", []):
            shape = f"{row['low'][0]}x{row['low'][1]}", f"{row['size'][0]}x{row['size'][1]}"
            if "error" in row:
                lines.append(f"| {r['backend']} | {shape[0]} | {shape[1]} | {row['dtype']} | {row['error'][:60]} | | |")
                continue
            pk = row["peak_extra_mib_per_image"]
            lines.append(f"| {r['backend']} | {shape[0]} | {shape[1]} | {row['dtype']} | {row['ms_per_image']:.3f} | "
                         f"{row['gb_per_s']:.1f} | {'-' if pk is None else f'{pk:.1f}'} |")
    lines += ["", f"Whole rounds at {data['round_size']} (bf16 logits; counters: backend batches, candidates the "
              "scoring appended, candidates through the greedy / the bound on them, the backend's host reads, "
              "synchronising torch calls seen by torch's sync debug mode):", "",
              "| backend | strategy | images | seconds | picks | peak extra MiB | batches | candidates | greedy in / bound "
              "| host reads | torch syncs |", "|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|"]
    for r in data["results"]:
        if r.get("round") and "skipped" in r["round"]:
            lines.append(f"| {r['backend']} | skipped: {r['round']['skipped']} | {r['round']['images']} | | | | | | | | |")
        for rd in r.get("rounds") or []:
            pk = rd.get("peak_extra_mib")
            k = rd.get("counters") or {}
            gi = f"{k['greedy_in']} / {k['greedy_bound']}" if k else "-"
            lines.append(f"| {r['backend']} | {rd['strategy']} | {rd['images']} | {rd['seconds']:.3f} | {rd['picks']} | "
                         f"{'-' if pk is None else f'{pk:.0f}'} | {k.get('batches', '-')} | {k.get('candidates', '-')} | "
                         f"{gi} | {k.get('host_reads', '-')} | {'-' if rd['torch_syncs_seen'] is None else rd['torch_syncs_seen']} |")
    if data.get("steps"):
        lines += ["", "## gpu_check.sh steps before the benchmark", "", "```", data["steps"].rstrip(), "```"]
    return "\n".join(lines) + "\n"


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--tiny", action="store_true", help="CPU, toy sizes (CI)")
    ap.add_argument("--out", default=os.path.join(HERE, "results"), help="directory for gpu-<device>.json/.md")
    ap.add_argument("--backends", help="comma-separated subset (default: every available one)")
    ap.add_argument("--repeat", type=int, default=9)
    ap.add_argument("--round-images", type=int, default=2975)
    ap.add_argument("--round-budget", type=float, default=120.0, help="skip a whole round estimated to take longer (s)")
    ap.add_argument("--timeout", type=float, default=900.0, help="per-backend subprocess limit (s)")
    ap.add_argument("--notes", help="a text file (gpu_check.sh's step log) to embed in the results")
    ap.add_argument("--worker", help=argparse.SUPPRESS)
    ap.add_argument("--cfg", help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    if args.worker:
        res = worker(args.worker, json.loads(args.cfg))
        print("RESULT " + json.dumps(res))
        return 0
    import torch

    import cbda

    if not args.tiny and not torch.cuda.is_available():
        print("bench_gpu: no CUDA device seen by torch (use --tiny for the CPU mode)", file=sys.stderr)
        return 2
    cfg = _cfg(args)
    cfg["round_budget"] = args.round_budget
    names = args.backends.split(",") if args.backends else available_backends(args.tiny)
    t0 = time.time()
    results = []
    for name in names:
        cmd = [sys.executable, os.path.abspath(__file__), "--worker", name, "--cfg", json.dumps(cfg)]
        try:
            proc = subprocess.run(cmd, capture_output=True, text=True, timeout=args.timeout)
            line = next((ln for ln in proc.stdout.splitlines() if ln.startswith("RESULT ")), None)
            if line is None:
                results.append({"backend": name, "error": f"exit {proc.returncode}: {proc.stderr.strip()[-800:]}"})
            else:
                results.append(json.loads(line[len("RESULT "):]))
        except subprocess.TimeoutExpired:
            results.append({"backend": name, "error": f"timed out after {args.timeout} s"})
        print(f"bench_gpu: {name} done ({time.time() - t0:.0f} s)", file=sys.stderr)
    try:
        import triton

        tv = triton.__version__
    except ImportError:
        tv = None
    name = device_name(args.tiny)
    data = {"device_name": name, "tiny": args.tiny, "torch": torch.__version__, "triton": tv, "cbda": cbda.__version__,
            "config": cfg, "round_size": "x".join(map(str, cfg["round_size"])), "results": results,
            "seconds": time.time() - t0}
    if args.notes and os.path.exists(args.notes):
        with open(args.notes) as f:
            data["steps"] = f.read()
    os.makedirs(args.out, exist_ok=True)
    base = os.path.join(args.out, f"gpu-{slug(name)}")
    with open(base + ".json", "w") as f:
        json.dump(data, f, indent=1)
    md = render(data)
    with open(base + ".md", "w") as f:
        f.write(md)
    print(md)
    bad = [r["backend"] for r in results if "error" in r or not r["check"].get("ok")]
    if bad:
        print(f"bench_gpu: FAILED for {', '.join(bad)}", file=sys.stderr)
    return 1 if bad else 0


if __name__ == "__main__":
    raise SystemExit(main())
