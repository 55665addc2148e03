"""`cbda compare`: every (strategy, budget, seed) run on one dataset, plus the bounds, in one sweep.

Layout of the work dir (everything in it is created by the sweep):

    sweep.json                      the resolved config and thread count (checked by --resume)
    data/                           the built-in dataset, generated once for every run
    seed<S>/trunk/                  training up to the first acquisition round, shared by the forks
    seed<S>/<strategy>_<budget>/    one active-learning run, resumed from the trunk's checkpoint
    seed<S>/source_only/, seed<S>/supervised/     the bounds (paper Table 1)
    compare.json, compare.md, *.png                the results (compare_report.py)

Why the fork is exact: before round 1 nothing is labelled, so the training batches, losses and
weights do not depend on the strategy or the budget; the trunk checkpoint holds the model,
optimiser, RNG and sampler positions, and the trainer's resume continues exactly. A run is
finished when its metrics.json holds a final evaluation; `--resume` skips those, continues an
interrupted run from its own latest checkpoint (else from the trunk), and checks that the config
and thread count are the ones the finished runs used.
"""
from __future__ import annotations

import contextlib
import json
import os
import platform
import shutil
import sys
import time
from pathlib import Path

import torch

from . import checkpoint as ckpt
from .config import ConfigError, load_config
from .errors import RunError, TrainError
from .metrics_io import read_metrics, write_json

STRATEGIES = ("image", "ra", "da", "cbra", "cbda")
BOUNDS = ("source_only", "supervised")
SWEEP_FILE = "sweep.json"


class CompareError(TrainError, ValueError):
    """Bad arguments of a sweep, or a work dir the sweep may not write into."""


# ---------------------------------------------------------------- arguments
def parse_strategies(text: str) -> list[str]:
    """"ra,cbda" -> ["ra", "cbda"]; unknown or repeated names raise CompareError."""
    names = [s.strip() for s in str(text).split(",") if s.strip()]
    bad = [s for s in names if s not in STRATEGIES]
    if not names or bad:
        raise CompareError(f"--strategies: got {text!r}; expected a comma-separated list of "
                           f"{', '.join(STRATEGIES)}")
    if len(set(names)) != len(names):
        raise CompareError(f"--strategies: {text!r} names a strategy twice")
    return names


def parse_seeds(text: str) -> list[int]:
    """"0,1,2" -> [0, 1, 2] (non-negative integers, no repeats)."""
    try:
        seeds = [int(s) for s in str(text).split(",") if s.strip()]
    except ValueError:
        seeds = []
    if not seeds or any(s < 0 for s in seeds) or len(set(seeds)) != len(seeds):
        raise CompareError(f"--seeds: got {text!r}; expected distinct non-negative integers, e.g. 0,1,2")
    return seeds


def parse_budgets(text: str) -> list[float]:
    """"0.05,0.1" -> [0.05, 0.1]: shares of target pixels in (0, 1], no repeats."""
    try:
        budgets = [float(s) for s in str(text).split(",") if s.strip()]
    except ValueError:
        budgets = []
    if not budgets or any(not 0 < b <= 1 for b in budgets) or len(set(budgets)) != len(budgets):
        raise CompareError(f"--budgets: got {text!r}; expected distinct shares in (0, 1], e.g. 0.05,0.1")
    return budgets


def run_name(strategy: str, budget: float) -> str:
    """Folder name of an active-learning run, e.g. cbda_0.05."""
    return f"{strategy}_{budget:g}"


def _check_config(cfg: dict) -> tuple[int, list[int]]:
    """(iterations, schedule) of a config the sweep can fork; raises CompareError otherwise.
    `cfg` comes from load_config, whose schema has checked schedule, rounds and iterations."""
    if cfg["mode"] != "adapt":
        raise CompareError(f"config: mode must be adapt (the sweep adds the bounds itself), got {cfg['mode']!r}")
    return int(cfg["train"]["iters"]), [int(s) for s in cfg["active"]["schedule"]]


# ---------------------------------------------------------------- work dir
def _prepare_work_dir(work: Path, cfg: dict, threads: int, resume: bool) -> None:
    """Create the work dir (or accept it for --resume); never write into a folder the sweep did
    not create."""
    marker = work / SWEEP_FILE
    record = {"version": 1, "threads": threads, "config": cfg}
    if marker.is_file():
        if not resume:
            raise CompareError(f"--work-dir {work} already holds a sweep: pass --resume to continue "
                               f"it, or choose another folder")
        saved = json.loads(marker.read_text())
        if saved.get("threads") != threads:
            raise CompareError(f"--resume: the sweep in {work} ran with --threads {saved.get('threads')}, "
                               f"got {threads} (thread count changes the numbers)")
        if not _same_config(saved.get("config"), cfg):
            raise CompareError(f"--resume: the config differs from the one in {marker}; "
                               f"use the same --config and overrides, or another --work-dir")
        return
    if resume:
        raise CompareError(f"--resume: {work} holds no sweep ({SWEEP_FILE} not found)")
    if work.exists() and (not work.is_dir() or any(work.iterdir())):
        raise CompareError(f"--work-dir {work} exists and is not an empty folder; the sweep only "
                           f"writes into a new or empty folder")
    work.mkdir(parents=True, exist_ok=True)
    write_json(marker, record)


def _same_config(saved, cfg: dict) -> bool:
    """Whether the config saved in sweep.json is the one given now. The saved one is checked
    with today's schema first, so keys the schema has gained since (with their defaults) do not
    make an unchanged sweep look different."""
    from .schema import validate
    try:
        saved = validate(saved)
    except ConfigError:
        return False
    canon = lambda c: json.dumps(json.loads(json.dumps(c)), sort_keys=True)  # noqa: E731 (lists vs tuples)
    return canon(saved) == canon(cfg)


def _finished(run_dir: Path) -> dict | None:
    """The run's metrics.json if the run finished (it holds a final evaluation), else None."""
    try:
        m = read_metrics(run_dir)
    except RunError:
        return None
    return m if m.get("final") and "seconds" in m else None


def machine_info() -> dict:
    """CPU model, logical CPU count, torch version, threads: the facts results are quoted with."""
    model = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    info = {"cpu": model, "cpus": os.cpu_count(), "torch": torch.__version__,
            "threads": torch.get_num_threads(), "python": platform.python_version()}
    with contextlib.suppress(OSError, AttributeError):
        # other work on the machine inflates the seconds: record how busy it was
        info["loadavg"] = round(os.getloadavg()[0], 2)
    if torch.cuda.is_available():
        info["gpu"] = torch.cuda.get_device_name(0)
    return info


# ---------------------------------------------------------------- one run
class _Bar:
    """One progress bar over every training iteration of the sweep."""

    def __init__(self, total: int, enabled: bool):
        self.bar = None
        if enabled:
            from tqdm.auto import tqdm
            self.bar = tqdm(total=total, desc="compare", unit="it", dynamic_ncols=True,
                            file=sys.stderr, mininterval=1.0)

    def run(self, label: str) -> None:
        if self.bar is not None:
            self.bar.set_postfix_str(label)

    def update(self, n: int = 1) -> None:
        if self.bar is not None:
            self.bar.update(n)

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()


def _train(cfg: dict, run_dir: Path, bar: _Bar, resume_from: Path | None = None,
           rename: dict | None = None, counted_from: int = 0, stop_at: int | None = None) -> dict:
    """Train one run into run_dir (its log in run_dir/train.log) and return its metrics with
    `seconds`. resume_from: a checkpoint to continue from (the trunk's, or the run's own);
    rename: metrics fields to set after resuming (a fork inherits the trunk's name);
    counted_from: the iteration this run's share of the progress bar starts at."""
    from .trainer import RUN_MARKER, Trainer
    run_dir.mkdir(parents=True, exist_ok=True)
    (run_dir / RUN_MARKER).touch()  # the sweep made this folder: the trainer may write its log beside it
    t0 = time.time()
    with open(run_dir / "train.log", "a") as log, contextlib.redirect_stdout(log):
        trainer = Trainer(cfg, run_dir, resume=resume_from or False, progress=False)
        if rename:
            trainer.metrics.update(rename)
        bar.update(max(0, trainer.iteration - counted_from))  # done before an interruption
        step = trainer.train_step

        def counted_step(*args, **kwargs):
            out = step(*args, **kwargs)
            bar.update(1)
            return out

        trainer.train_step = counted_step  # the sweep's bar counts every iteration of every run
        metrics = trainer.run(stop_at=stop_at)
    metrics["seconds"] = round(time.time() - t0, 1)
    metrics["resumed_from"] = str(resume_from) if resume_from else None
    write_json(run_dir / "metrics.json", metrics)
    return metrics


def _latest_own(run_dir: Path) -> Path | None:
    return ckpt.latest(run_dir / "checkpoints")


# ---------------------------------------------------------------- the sweep
def sweep(config: str | Path, strategies, seeds, budgets, work_dir: str | Path,
          overrides: list[str] | tuple = (), bounds: bool = True, threads: int = 2,
          resume: bool = False, progress: bool = True, report_only: bool = False) -> dict:
    """Run the comparison and write compare.json, compare.md and the plots into work_dir.

    strategies: names from STRATEGIES; seeds: ints; budgets: shares in (0, 1]. Every
    (seed, strategy, budget) run and, with `bounds`, a source-only and a fully supervised run per
    seed, all with the config's iterations and model. torch runs with `threads` threads (the
    numbers depend on it: the same seed and thread count give the same numbers). report_only:
    train nothing, only render the results of the runs finished so far in an existing sweep
    (safe while that sweep is still running). Returns the compare.json object."""
    from .compare_report import build_summary, write_outputs
    if isinstance(strategies, str):
        strategies = parse_strategies(strategies)
    if isinstance(seeds, str):
        seeds = parse_seeds(seeds)
    if isinstance(budgets, str):
        budgets = parse_budgets(budgets)
    strategies, seeds, budgets = list(strategies), [int(s) for s in seeds], [float(b) for b in budgets]
    if int(threads) < 1:
        raise CompareError(f"--threads: got {threads}; expected a positive integer")
    threads = int(threads)
    work = Path(work_dir)
    base = load_config(config, list(overrides))
    iters, schedule = _check_config(base)
    first = schedule[0]
    torch.set_num_threads(threads)
    # sweep.json holds the config as given (no paths inside the work dir: it can be moved)
    _prepare_work_dir(work, base, threads, resume or report_only)
    base = json.loads(json.dumps(base))
    gen = base["data"].get("generate")
    if gen:
        # one dataset for every run and seed, generated into the sweep's own folder
        base["data"]["source_root"] = base["data"].get("source_root") or str(
            work / "data" / (base["data"].get("source") or "gtav"))
        base["data"]["target_root"] = base["data"].get("target_root") or str(work / "data" / "cityscapes")
    t_sweep = time.time()

    plan = []  # (seed, kind, strategy, budget, run_dir)
    for seed in seeds:
        for budget in budgets:
            for strategy in strategies:
                plan.append((seed, "adapt", strategy, budget, work / f"seed{seed}" / run_name(strategy, budget)))
        if bounds:
            for kind in BOUNDS:
                plan.append((seed, kind, None, None, work / f"seed{seed}" / kind))
    todo = [p for p in plan if _finished(p[4]) is None] if not report_only else []
    trunk_seeds = {p[0] for p in todo if p[1] == "adapt" and _latest_own(p[4]) is None} if first > 0 else set()
    total = sum(iters - (first if p[1] == "adapt" else 0) for p in todo)
    total += sum(first for s in trunk_seeds if not _trunk_ready(work, s, first))
    bar = _Bar(total, progress and bool(todo))
    try:
        if gen and todo:
            from .data.generated import ensure_generated
            bar.run("generating the dataset")
            ensure_generated(gen, base["data"]["source_root"], base["data"]["target_root"],
                             base["data"].get("source") or "gtav", log=lambda *_: None)
        trunks = {}
        for seed, kind, strategy, budget, run_dir in todo:
            cfg = json.loads(json.dumps(base))  # a deep copy per run
            cfg["seed"] = seed
            if kind != "adapt":
                cfg["mode"] = kind
                cfg["name"] = f"{kind}_seed{seed}"
                bar.run(f"seed {seed} {kind}")
                _train(cfg, run_dir, bar, _latest_own(run_dir))
                continue
            cfg["active"]["strategy"], cfg["active"]["budget"] = strategy, budget
            cfg["name"] = f"{run_name(strategy, budget)}_seed{seed}"
            resume_from = _latest_own(run_dir)
            if resume_from is None and first > 0:
                if seed not in trunks:
                    bar.run(f"seed {seed} trunk")
                    trunks[seed] = _trunk(cfg, work, seed, first, bar)
                resume_from = trunks[seed]
                _share_cache(work / f"seed{seed}" / "trunk", run_dir)
            bar.run(f"seed {seed} {run_name(strategy, budget)}")
            _train(cfg, run_dir, bar, resume_from, counted_from=first,
                   rename={"name": cfg["name"], "strategy": strategy, "budget": budget})
    finally:
        bar.close()
    records = []
    for seed, kind, strategy, budget, run_dir in plan:
        m = _finished(run_dir)
        records.append({"seed": seed, "kind": kind, "strategy": strategy, "budget": budget,
                        "dir": str(run_dir.relative_to(work)), "metrics": m})
    trunk_info = {}
    for seed in seeds:
        m = _finished(work / f"seed{seed}" / "trunk")
        if m is not None:
            trunk_info[str(seed)] = {"iteration": m["final"].get("iteration"), "miou": m["final"]["miou"],
                                     "min_iou": m["final"]["min_iou"], "seconds": m["seconds"]}
    machine = machine_info()
    summary = build_summary(records, base, machine,
                            {"strategies": strategies, "seeds": seeds, "budgets": budgets,
                             "bounds": bounds, "threads": threads, "config": str(config),
                             "overrides": list(overrides)},
                            trunk_info, seconds=round(time.time() - t_sweep, 1))
    write_outputs(summary, work)
    return summary


def _trunk_ready(work: Path, seed: int, first: int) -> bool:
    return (work / f"seed{seed}" / "trunk" / "checkpoints" / f"iter_{first:07d}.pt").is_file()


def _trunk(cfg: dict, work: Path, seed: int, first: int, bar: _Bar) -> Path:
    """The checkpoint at the first acquisition iteration of `seed` (trained unless present)."""
    trunk_dir = work / f"seed{seed}" / "trunk"
    path = trunk_dir / "checkpoints" / f"iter_{first:07d}.pt"
    if path.is_file():
        return path
    tcfg = json.loads(json.dumps(cfg))
    tcfg["name"] = f"trunk_seed{seed}"
    tcfg["train"]["checkpoint_every"] = 0
    tcfg["train"]["keep_checkpoints"] = 1
    own = _latest_own(trunk_dir)
    _train(tcfg, trunk_dir, bar, own, stop_at=first)   # stops (and checkpoints) just before round 1
    if not path.is_file():
        raise RuntimeError(f"the trunk of seed {seed} left no checkpoint at {path}")
    return path


def _share_cache(src_run: Path, dst_run: Path) -> None:
    # the source class-presence index is keyed by the file list, so a copy is always valid
    # (and saves reading every source label again per run)
    src = src_run / "cache"
    if src.is_dir() and not (dst_run / "cache").exists():
        shutil.copytree(src, dst_run / "cache")
