"""`cbda train|eval|report|configs` (also `python -m cbda.train`).

  cbda train --config demo --work-dir runs/demo [key=value ...] [--dry-run]
  cbda train --work-dir runs/demo --resume [key=value ...]          # newest readable checkpoint
  cbda train --work-dir runs/demo --resume-from FILE [key=value ...]
  cbda eval  --work-dir runs/demo [--checkpoint FILE] [key=value ...]
  cbda report runs/ra runs/cbda [--out DIR] [--baseline ra]
  cbda export --work-dir runs/demo [--round N] --format labelstudio|cvat|png|json|preview [...]
  cbda import --work-dir runs/demo FILE [--round N] [--replace]
  cbda compare --work-dir runs/compare [--strategies ra,da,cbra,cbda] [--seeds 0,1,2]
               [--budgets 0.05,0.1] [--resume] [key=value ...]

A user's mistake (a bad config, key, value or path, a missing dataset or checkpoint, a folder
cbda may not write into) is one line on stderr and exit status 2, never a traceback.
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

COMMANDS = ("train", "eval", "report", "configs", "export", "import", "compare")


class UsageError(Exception):
    """A command-line mistake (argparse's, reported as one line)."""


class _Parser(argparse.ArgumentParser):
    def error(self, message):  # argparse prints usage and exits; we want one line and status 2
        raise UsageError(message)


def _parsers() -> dict[str, argparse.ArgumentParser]:
    t = _Parser(prog="cbda train", description="train a run, or resume one")
    t.add_argument("--config", help="shipped config name (see `cbda configs`) or a YAML path; "
                                    "default when resuming: <work-dir>/config.yaml")
    t.add_argument("--work-dir", required=True, help="output folder of the run (new, empty, or a cbda work dir)")
    res = t.add_mutually_exclusive_group()
    res.add_argument("--resume", action="store_true",
                     help="continue from the newest readable checkpoint in <work-dir>/checkpoints")
    res.add_argument("--resume-from", metavar="FILE", help="continue from this checkpoint file")
    t.add_argument("--dry-run", action="store_true",
                   help="check the config, dataset folders and checkpoint, print the resolved config, "
                        "and exit (0: valid, 2: not); writes nothing")
    t.add_argument("--no-progress", action="store_true", help="no progress bar")
    t.add_argument("overrides", nargs="*", help="dotted config overrides, e.g. train.iters=100")
    e = _Parser(prog="cbda eval", description="evaluate a checkpoint on the target val split")
    e.add_argument("--work-dir", required=True)
    e.add_argument("--config", help="default: <work-dir>/config.yaml")
    e.add_argument("--checkpoint", help="default: the newest readable one in <work-dir>/checkpoints")
    e.add_argument("overrides", nargs="*")
    r = _Parser(prog="cbda report", description="table and plots across runs")
    r.add_argument("runs", nargs="+", help="work dirs (or metrics.json files)")
    r.add_argument("--out", help="folder for report.md and the PNG plots")
    r.add_argument("--baseline", help="run (folder name) the IoU gains are measured against")
    c = _Parser(prog="cbda configs", description="list the shipped configs")
    parsers = {"train": t, "eval": e, "report": r, "configs": c}
    parsers.update(_annotation_parsers())
    parsers["compare"] = _compare_parser()
    return parsers


def _usage() -> str:
    return f"usage: cbda {{{','.join(COMMANDS)}}} ...  (cbda COMMAND --help for its options)"


def _annotation_parsers() -> dict[str, argparse.ArgumentParser]:
    from ..annotate.roundtrip import FORMATS
    x = _Parser(prog="cbda export", description="write a round's picks for annotation tools (human labels)")
    x.add_argument("--work-dir", required=True)
    x.add_argument("--round", type=int, help="default: the round waiting for labels (else the last)")
    x.add_argument("--format", nargs="+", choices=FORMATS, default=["labelstudio"], metavar="FORMAT",
                   help=f"one or more of {', '.join(FORMATS)}")
    x.add_argument("--out", help="default: <work-dir>/annotate/round_NNNN")
    x.add_argument("--image-url", help="Label Studio tasks point at IMAGE_URL/<name> (default: local file serving)")
    x.add_argument("--local-root", help="LABEL_STUDIO_LOCAL_FILES_DOCUMENT_ROOT the local paths are relative to")
    x.add_argument("--config", help="default: <work-dir>/config.yaml")
    i = _Parser(prog="cbda import", description="record a Label Studio JSON or CVAT XML export as a round's labels")
    i.add_argument("--work-dir", required=True)
    i.add_argument("file", help="the tool's export (Label Studio: JSON; CVAT: CVAT for images 1.1 XML)")
    i.add_argument("--round", type=int, help="default: read from the file (Label Studio) or the pending round")
    i.add_argument("--replace", action="store_true", help="overwrite labels the round already has")
    i.add_argument("--config", help="default: <work-dir>/config.yaml")
    return {"export": x, "import": i}


def _work_dir_of_a_run(args) -> Path:
    from .errors import RunError
    work = Path(args.work_dir)
    args.overrides = []
    if args.config is None and not (work / "config.yaml").is_file():
        raise RunError(f"--work-dir: {work} holds no config.yaml; point it at the work dir of a "
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


def _compare_parser() -> argparse.ArgumentParser:
    c = _Parser(prog="cbda compare", description="every strategy x budget x seed, plus the bounds: tables and plots")
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
    return c


def _compare(args) -> int:
    from .compare import sweep
    sweep(args.config, args.strategies, args.seeds, args.budgets, args.work_dir,
          overrides=args.overrides, bounds=not args.no_bounds, threads=args.threads,
          resume=args.resume, progress=not args.no_progress, report_only=args.report_only)
    print((Path(args.work_dir) / "compare.md").read_text(), end="")
    return 0


def _config(args, work_dir: Path, resuming: bool) -> dict:
    from .config import load_config
    from .errors import ConfigError
    name = args.config
    if name is None:
        saved = work_dir / "config.yaml"
        if not resuming:
            raise ConfigError("--config: required for a new run (a shipped name or a YAML path)")
        if not saved.is_file():
            raise ConfigError(f"--config: required, since {saved} does not exist")
        name = saved
    return load_config(name, args.overrides)


def _run(command: str, args) -> int:
    if command == "configs":
        from .config import available_configs
        print("\n".join(available_configs()))
        return 0
    if command == "compare":
        return _compare(args)
    if command == "report":
        from .report import report
        print(report(args.runs, args.out, args.baseline))
        return 0
    if command == "export":
        _export(args)
        return 0
    if command == "import":
        _import(args)
        return 0
    work = Path(args.work_dir)
    if command == "train":
        resume = Path(args.resume_from) if args.resume_from else bool(args.resume)
        cfg = _config(args, work, bool(resume))
        if args.dry_run:
            import yaml
            from .trainer import preflight
            preflight(cfg, work, resume)
            print(yaml.safe_dump(cfg, sort_keys=False, default_flow_style=None), end="")
            return 0
        from .trainer import train
        train(cfg, work, resume=resume, progress=not args.no_progress)
        return 0
    from .trainer import evaluate_checkpoint
    cfg = _config(args, work, True)
    evaluate_checkpoint(cfg, work, args.checkpoint)
    return 0


def main(argv: list[str] | None = None) -> int:
    """The `cbda` command; returns the exit status (0, or 2 for a user's mistake)."""
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or argv[0] in ("-h", "--help"):
        print(_usage() + "\n\n" + __doc__.split("\n\n")[1], file=sys.stdout if argv else sys.stderr)
        return 0 if argv else 2
    command = argv[0]
    if command not in COMMANDS:
        print(f"cbda: error: unknown command {command!r} (expected one of {', '.join(COMMANDS)})",
              file=sys.stderr)
        return 2
    import cbda
    from .errors import TrainError
    try:
        # options and key=value overrides may come in any order
        args = _parsers()[command].parse_intermixed_args(argv[1:])
        return _run(command, args)
    except (UsageError, TrainError, cbda.CbdaError) as e:
        _error(command, e)
        return 2
    except OSError as e:  # a path the user gave that cannot be read or written
        _error(command, f"{e.strerror or e}" + (f": {e.filename}" if e.filename else ""))
        return 2
    except KeyboardInterrupt:
        print(f"cbda {command}: interrupted", file=sys.stderr)
        return 130


def _error(command: str, message) -> None:
    text = " ".join(str(message).split())  # one line, whatever the message held
    print(f"cbda {command}: error: {text}", file=sys.stderr)


if __name__ == "__main__":
    sys.exit(main())
