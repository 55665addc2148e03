"""`cbda train|eval|report` (also `python -m cbda.train`).

  cbda train --config demo --work-dir runs/demo [key=value ...] [--resume [CKPT]]
  cbda eval  --work-dir runs/demo [--checkpoint CKPT] [key=value ...]
  cbda report runs/ra runs/cbda [--out DIR] [--baseline ra]
  cbda compare --work-dir runs/compare [--strategies ra,da,cbra,cbda] [--seeds 0,1,2]
               [--budgets 0.05,0.1] [--resume] [key=value ...]
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path


def _parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(prog="cbda", description="CBDA training driver")
    sub = ap.add_subparsers(dest="command", required=True)
    t = sub.add_parser("train", help="train a run (or resume one)")
    t.add_argument("--config", help="shipped config name (see `cbda configs`) or a YAML path; "
                                    "default when resuming: <work-dir>/config.yaml")
    t.add_argument("--work-dir", required=True, help="output folder of the run")
    t.add_argument("--resume", nargs="?", const=True, default=False,
                   help="continue from the latest checkpoint in the work dir (or the given file)")
    t.add_argument("--no-progress", action="store_true", help="no progress bar")
    t.add_argument("overrides", nargs="*", help="dotted config overrides, e.g. train.iters=100")
    e = sub.add_parser("eval", help="evaluate a checkpoint on the target val split")
    e.add_argument("--work-dir", required=True)
    e.add_argument("--config", help="default: <work-dir>/config.yaml")
    e.add_argument("--checkpoint", help="default: the latest in <work-dir>/checkpoints")
    e.add_argument("overrides", nargs="*")
    r = sub.add_parser("report", help="table and plots across runs")
    r.add_argument("runs", nargs="+", help="work dirs (or metrics.json files)")
    r.add_argument("--out", help="folder for report.md and the PNG plots")
    r.add_argument("--baseline", help="run (folder name) the IoU gains are measured against")
    sub.add_parser("configs", help="list the shipped configs")
    _add_compare(sub)
    return ap


def _add_compare(sub) -> None:
    c = sub.add_parser("compare", help="every strategy x budget x seed, plus the bounds: tables and plots")
    c.add_argument("--config", default="compare", help="shipped config name or YAML path (default: compare)")
    c.add_argument("--work-dir", required=True, help="new or empty folder for the runs and the results")
    c.add_argument("--strategies", default="ra,da,cbra,cbda")
    c.add_argument("--seeds", default="0,1,2")
    c.add_argument("--budgets", default="0.05,0.1")
    c.add_argument("--no-bounds", action="store_true", help="skip the source-only and supervised runs")
    c.add_argument("--threads", type=int, default=2,
                   help="torch threads (default 2; the numbers depend on it)")
    c.add_argument("--resume", action="store_true", help="continue a sweep, skipping finished runs")
    c.add_argument("--report-only", action="store_true",
                   help="train nothing: write the results of the runs finished so far")
    c.add_argument("--no-progress", action="store_true", help="no progress bar")
    c.add_argument("overrides", nargs="*", help="dotted config overrides, e.g. train.iters=100")


def _compare(args) -> int:
    from .compare import CompareError, sweep
    from .config import ConfigError
    from .data.base import DatasetNotFoundError
    try:
        s = sweep(args.config, args.strategies, args.seeds, args.budgets, args.work_dir,
                  overrides=args.overrides, bounds=not args.no_bounds, threads=args.threads,
                  resume=args.resume, progress=not args.no_progress, report_only=args.report_only)
    except (CompareError, ConfigError, DatasetNotFoundError) as e:
        print(f"cbda compare: error: {e}", file=sys.stderr)
        return 2
    print((Path(args.work_dir) / "compare.md").read_text(), end="")
    return 0


def _config(args, work_dir: Path, resuming: bool) -> dict:
    from .config import load_config
    name = args.config
    if name is None:
        saved = work_dir / "config.yaml"
        if not (resuming and saved.is_file()):
            raise SystemExit("cbda: --config is required" + ("" if resuming else " (or --resume with a saved config)"))
        name = saved
    return load_config(name, args.overrides)


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    if args.command == "configs":
        from .config import available_configs
        print("\n".join(available_configs()))
        return 0
    if args.command == "compare":
        return _compare(args)
    if args.command == "report":
        from .report import report
        print(report(args.runs, args.out, args.baseline))
        return 0
    from .config import ConfigError
    from .data.base import DatasetNotFoundError
    try:
        if args.command == "train":
            from .trainer import train
            work = Path(args.work_dir)
            cfg = _config(args, work, bool(args.resume))
            train(cfg, work, resume=args.resume, progress=not args.no_progress)
        elif args.command == "eval":
            from .trainer import evaluate_checkpoint
            work = Path(args.work_dir)
            cfg = _config(args, work, True)
            evaluate_checkpoint(cfg, work, args.checkpoint)
    except (ConfigError, DatasetNotFoundError, FileNotFoundError) as e:
        print(f"cbda {args.command}: error: {e}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
