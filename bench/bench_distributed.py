"""Bytes each rank sends per acquisition round when the target set is sharded over processes.

Spawns P gloo ranks on this machine; each scores its shard of a generated long-tailed target
set (examples/acquisition_round.py) and runs R rounds of ``cbda.select(..., shard=True)``
with its replica of the labelling state. The bytes come from the collectives' payloads as
``cbda.distributed`` issued them (``comm_stats``: each collective's input buffer on the
rank, padding included, and what it received), not from a formula. Before anything is
reported every rank's picks are checked against a single-process run on all the images.

Two modes per P: ``plain`` gathers every rank's local top-K; ``threshold`` first finds the
global K-th score with four 256-bin histogram all_reduces and gathers only the picks at or
above it (cbda's default once a rank holds >= 2048 local picks).

    python bench/bench_distributed.py [--worlds 2 3 4] [--images 16] [--rounds 5]

Writes bench/results/distributed-<machine>.json.
"""

from __future__ import annotations

import argparse
import hashlib
import importlib.util
import json
import os
import platform
import re
import sys
import tempfile
import time

import torch
import torch.distributed as dist
import torch.multiprocessing as mp

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

import cbda  # noqa: E402
import cbda.distributed as cdist  # noqa: E402


def _target_set(args):
    spec = importlib.util.spec_from_file_location("acq_example", os.path.join(ROOT, "examples", "acquisition_round.py"))
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    gt, logits = mod.make_target_set(args.images, args.classes, *args.size, seed=args.seed)
    if tuple(logits.shape[2:]) != tuple(args.logits):
        logits = torch.nn.functional.interpolate(logits, size=tuple(args.logits), mode="bilinear", align_corners=True)
    return gt, logits.contiguous()


def _digest(sel) -> str:
    h = hashlib.sha256()
    for t in (sel.image_ids, sel.ys, sel.xs, sel.scores, sel.classes):
        h.update(t.numpy().tobytes())
    return h.hexdigest()[:16]


def _rounds(args, gt, logits, ids, shard: bool):
    """Run every round on ``ids``; per round: picks digest, K, time, this rank's comm stats."""
    n = logits.shape[0]
    state = cbda.ActiveLabelState(tuple(args.size), args.classes, num_images=n)
    out = []
    for _ in range(args.rounds):
        batches = [(ids[i:i + args.batch], logits[ids[i:i + args.batch]]) for i in range(0, len(ids), args.batch)]
        cdist.reset_comm_stats()
        t0 = time.perf_counter()
        sel = cbda.select(iter(batches), budget=args.budget, rounds=args.rounds, strategy=args.strategy,
                          radius=1, out_size=tuple(args.size), state=state, backend=args.backend,
                          num_images=n, shard=shard)
        dt = time.perf_counter() - t0
        state.label_from_ground_truth(lambda i: gt[i])
        stats = cdist.comm_stats().to_dict() if shard else None
        out.append({"digest": _digest(sel), "picks": len(sel), "seconds": dt, "comm": stats})
    return out


def _worker(rank, world, init_file, out_dir, args, mode):
    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=world)
    cdist.THRESHOLD_MIN_PICKS = 0 if mode == "threshold" else None
    gt, logits = _target_set(args)
    ids = list(range(rank, logits.shape[0], world))  # round-robin shards
    res = _rounds(args, gt, logits, ids, True)
    torch.save(res, os.path.join(out_dir, f"{rank}.pt"))
    dist.barrier()
    os._exit(0)  # gloo's teardown can abort after the work is done; the results are saved


def _machine() -> str:
    model = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    model = line.split(":", 1)[1].strip()
                    break
    except OSError:
        pass
    return model


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--worlds", type=int, nargs="+", default=[2, 3, 4])
    p.add_argument("--modes", nargs="+", default=["plain", "threshold"], choices=["plain", "threshold"])
    p.add_argument("--images", type=int, default=16)
    p.add_argument("--classes", type=int, default=19)
    p.add_argument("--logits", type=int, nargs=2, default=(64, 128), metavar=("h", "w"))
    p.add_argument("--size", type=int, nargs=2, default=(256, 512), metavar=("H", "W"))
    p.add_argument("--budget", type=float, default=0.05)
    p.add_argument("--rounds", type=int, default=5)
    p.add_argument("--strategy", default="cbda")
    p.add_argument("--backend", default="auto")
    p.add_argument("--batch", type=int, default=2)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--machine", default=None, help="name in the results file (default: the host name)")
    p.add_argument("--out", default=os.path.join(ROOT, "bench", "results"))
    args = p.parse_args(argv)

    gt, logits = _target_set(args)
    n = logits.shape[0]
    torch.set_num_threads(1)
    single = _rounds(args, gt, logits, list(range(n)), False)
    print(f"target set: {n} images, {args.classes} classes, logits {tuple(args.logits)} -> {tuple(args.size)}, "
          f"{args.strategy}, budget {args.budget:.0%} over {args.rounds} rounds; K per round {single[0]['picks']}")
    print(f"single process: {sum(r['seconds'] for r in single) / len(single) * 1000:.0f} ms per round")

    runs = []
    for world in args.worlds:
        for mode in args.modes:
            with tempfile.TemporaryDirectory() as tmp:
                mp.spawn(_worker, args=(world, os.path.join(tmp, "init"), tmp, args, mode), nprocs=world, join=True)
                per_rank = [torch.load(os.path.join(tmp, f"{r}.pt"), weights_only=False) for r in range(world)]
            # correctness before numbers: every rank, every round, equal to one process
            for r, res in enumerate(per_rank):
                for i, (got, want) in enumerate(zip(res, single)):
                    if got["digest"] != want["digest"]:
                        raise SystemExit(f"world {world} {mode}: rank {r} round {i + 1} differs from the single-process picks")
            rounds = []
            for i in range(args.rounds):
                rounds.append({
                    "round": i + 1,
                    "K": single[i]["picks"],
                    "sent_bytes": [res[i]["comm"]["sent"] for res in per_rank],
                    "received_bytes": [res[i]["comm"]["received"] for res in per_rank],
                    "seconds": [res[i]["seconds"] for res in per_rank],
                    "calls_rank0": per_rank[0][i]["comm"]["calls"],
                })
            sent = [b for rd in rounds for b in rd["sent_bytes"]]
            k = rounds[0]["K"]
            row = {
                "world": world, "mode": mode, "rounds": rounds,
                "mean_sent_bytes_per_rank_round": sum(sent) / len(sent),
                "max_sent_bytes_per_rank_round": max(sent),
                "mean_received_bytes_per_rank_round": sum(b for rd in rounds for b in rd["received_bytes"]) / len(sent),
                "picks_bytes_K": 16 * k,
                "ring_transmitted_bytes_per_rank_round_estimate": None,
            }
            # what a ring algorithm puts on the wire per rank: (P-1)·chunk for all_gather,
            # 2(P-1)/P·buffer for all_reduce; from the measured payloads
            wire = []
            for rd in rounds:
                for res in per_rank:
                    calls = res[rd["round"] - 1]["comm"]["calls"]
                    wire.append(sum(c["sent"] * (world - 1) if c["op"].startswith("all_gather")
                                    else c["sent"] * 2 * (world - 1) / world for c in calls))
            row["ring_transmitted_bytes_per_rank_round_estimate"] = sum(wire) / len(wire)
            runs.append(row)
            print(f"P={world} {mode:9s}: sent per rank per round mean {row['mean_sent_bytes_per_rank_round'] / 1024:7.1f} KiB "
                  f"(max {row['max_sent_bytes_per_rank_round'] / 1024:.1f} KiB; K·16 B = {16 * k / 1024:.1f} KiB), "
                  f"received {row['mean_received_bytes_per_rank_round'] / 1024:.1f} KiB, "
                  f"ring wire est. {row['ring_transmitted_bytes_per_rank_round_estimate'] / 1024:.1f} KiB, "
                  f"select {1000 * sum(sum(rd['seconds']) for rd in rounds) / len(sent):.0f} ms/round/rank")

    machine = args.machine or re.sub(r"[^A-Za-z0-9_.-]+", "-", platform.node()) or "unknown"
    result = {
        "benchmark": "distributed",
        "machine": machine,
        "cpu": _machine(),
        "cores": os.cpu_count(),
        "torch": torch.__version__,
        "cbda": cbda.__version__,
        "process_group_backend": "gloo",
        "config": {k: (list(v) if isinstance(v, tuple) else v) for k, v in vars(args).items() if k not in ("out", "machine")},
        "single_process_seconds_per_round": [r["seconds"] for r in single],
        "runs": runs,
        "note": "sent = the input buffers this rank gave to collectives (padding included), measured from "
                "cbda.distributed.comm_stats; a pick costs 16 bytes (global index, score bits | class).",
    }
    os.makedirs(args.out, exist_ok=True)
    path = os.path.join(args.out, f"distributed-{machine}.json")
    with open(path, "w") as f:
        json.dump(result, f, indent=1)
    print(f"wrote {path}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
