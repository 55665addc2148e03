"""`cbda train|eval|report` (also `python -m cbda.train`).

  cbda train --config demo --work-dir runs/demo [key=value ...] [--resume [CKPT]]
  cbda eval  --work-dir runs/demo [--checkpoint CKPT] [key=value ...]
  cbda report runs/ra runs/cbda [--out DIR] [--baseline ra]
  cbda export --work-dir runs/demo [--round N] --format labelstudio|cvat|png|json|preview [...]
  cbda import --work-dir runs/demo FILE [--round N] [--replace]
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
    _add_annotation_commands(sub)
    return ap


def _add_annotation_commands(sub) -> None:
    from ..annotate.roundtrip import FORMATS
    x = sub.add_parser("export", help="write a round's picks for annotation tools (human labels)")
    x.add_argument("--work-dir", required=True)
    x.add_argument("--round", type=int, help="default: the round waiting for labels (else the last)")
    x.add_argument("--format", nargs="+", choices=FORMATS, default=["labelstudio"], metavar="FORMAT",
                   help=f"one or more of {', '.join(FORMATS)}")
    x.add_argument("--out", help="default: <work-dir>/annotate/round_NNNN")
    x.add_argument("--image-url", help="Label Studio tasks point at IMAGE_URL/<name> (default: local file serving)")
    x.add_argument("--local-root", help="LABEL_STUDIO_LOCAL_FILES_DOCUMENT_ROOT the local paths are relative to")
    x.add_argument("--config", help="default: <work-dir>/config.yaml")
    i = sub.add_parser("import", help="record a Label Studio JSON or CVAT XML export as a round's labels")
    i.add_argument("--work-dir", required=True)
    i.add_argument("file", help="the tool's export (Label Studio: JSON; CVAT: CVAT for images 1.1 XML)")
    i.add_argument("--round", type=int, help="default: read from the file (Label Studio) or the pending round")
    i.add_argument("--replace", action="store_true", help="overwrite labels the round already has")
    i.add_argument("--config", help="default: <work-dir>/config.yaml")


def _work_dir_of_a_run(args) -> Path:
    work = Path(args.work_dir)
    args.overrides = []
    if args.config is None and not (work / "config.yaml").is_file():
        raise FileNotFoundError(f"--work-dir: {work} holds no config.yaml; point it at the work dir of a "
                                "`cbda train` run (or pass --config)")
    return work


def _export(args) -> None:
    from .human import export_from_work_dir
    work = _work_dir_of_a_run(args)
    files = export_from_work_dir(_config(args, work, True), work, args.round, args.format, args.out,
                                 args.image_url, args.local_root)
    for fmt, paths in files.items():
        print(f"{fmt}: {len(paths)} file(s), e.g. {paths[0]}" if paths else f"{fmt}: nothing to write")


def _import(args) -> None:
    from .human import import_into_work_dir
    work = _work_dir_of_a_run(args)
    report = import_into_work_dir(_config(args, work, True), work, args.file, args.round, args.replace)
    print(report.summary())
    print(f"recorded; continue with: cbda train --work-dir {work} --resume")


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
    if args.command == "report":
        from .report import report
        print(report(args.runs, args.out, args.baseline))
        return 0
    from ..errors import InputError, StateError
    from .config import ConfigError
    from .data.base import DatasetNotFoundError
    from .human import LabelsPendingError
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
        elif args.command == "export":
            _export(args)
        elif args.command == "import":
            _import(args)
    except (ConfigError, DatasetNotFoundError, FileNotFoundError, InputError, StateError, LabelsPendingError) as e:
        print(f"cbda {args.command}: error: {e}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
