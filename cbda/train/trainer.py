"""The training driver: RIPU's domain-adaptive active learning loop around cbda.select.

Each iteration draws 2 source images (class-balanced) and 2 target images, and minimises
CE(source) + CE(target, actively labelled pixels) + 0.1 local consistency (source) + 1.0 negative
learning (target), with SGD and poly decay. At the schedule's iterations it runs an acquisition
round (acquisition.run_round) and records the labelled-class histogram and imbalance score.
Checkpoints hold everything needed for `--resume` to continue exactly: the same batches, the
same picks, the same weights.
"""
from __future__ import annotations

import contextlib
import random
import sys
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
import yaml
from torch.utils.data import DataLoader

import cbda

from . import checkpoint as ckpt
from . import distributed as dist_utils
from . import human as human_loop
from .acquisition import run_round, round_summary
from .data import GTAV, Cityscapes, Synthia
from .data.imageio import resize_nearest
from .data.labels import class_names
from .data.sampler import BatchStream, ClassBalancedSampler, ShuffledStream, class_presence
from .data.generated import check_generation, ensure_generated
from .errors import CheckpointError, ConfigError, DataFolderError, RunError
from . import schema
from .schema import check_radius
from .evaluate import evaluate, summarize
from .losses import cross_entropy, local_consistency, negative_learning
from .metrics_io import ScalarLog, read_metrics, write_json
from .model import build_model
from .report import format_results

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
MODES = schema.MODES


RUN_MARKER = ".cbda_run"  # written into every work dir cbda trains in


def resolve_roots(cfg: dict, work_dir: Path) -> tuple[Path | None, Path]:
    """(source_root, target_root); source_root is None in mode supervised. With `data.generate`
    set, missing roots default to <generate.dir or work_dir/data>/<layout>."""
    data = cfg["data"]
    gen = data.get("generate")
    src_layout = data.get("source") or "gtav"
    src, tgt = data.get("source_root"), data.get("target_root")
    if gen:
        base = Path(gen.get("dir") or work_dir / "data")
        src = Path(src) if src else base / src_layout
        tgt = Path(tgt) if tgt else base / "cityscapes"
    if tgt is None:
        raise ConfigError("data.target_root: not set; point it at the Cityscapes folder")
    if cfg.get("mode", "adapt") == "supervised":
        return None, Path(tgt)
    if src is None:
        raise ConfigError(f"data.source_root: not set; point it at the {src_layout} folder")
    return Path(src), Path(tgt)


def check_work_dir(work_dir: Path) -> None:
    """Refuse a --work-dir that is a file or a non-empty folder cbda did not train in (its
    outputs would overwrite the user's files). Reads only."""
    if not work_dir.exists():
        return
    if not work_dir.is_dir():
        raise DataFolderError(f"--work-dir: {work_dir} is a file, not a folder")
    names = sorted(p.name for p in work_dir.iterdir())
    # runs of earlier versions carry no marker, but always a config.yaml beside their outputs
    legacy = "config.yaml" in names and bool({"metrics.json", "checkpoints"} & set(names))
    if names and RUN_MARKER not in names and not legacy:
        raise DataFolderError(f"--work-dir: {work_dir} is a non-empty folder that is not a cbda work "
                              f"dir (it holds e.g. {names[0]}); choose a new or empty folder")


def check_compatible(cfg: dict, payload: dict, path: Path | str) -> None:
    """Raise CheckpointError when a checkpoint was written with another model or class count
    than `cfg` (its weights would not fit, or would mean other classes)."""
    saved = payload.get("config") or {}
    model = saved.get("model") or {}
    # compare the keys the checkpoint knows (runs of earlier versions filled fewer defaults);
    # the pretrained file only seeds a new run
    diff = [k for k in model if k in cfg["model"] and model[k] != cfg["model"][k] and k != "pretrained"]
    if diff:
        raise CheckpointError(f"checkpoint {path} was written with model.{diff[0]}={model[diff[0]]!r}, "
                              f"the config has {cfg['model'][diff[0]]!r}")
    c = (saved.get("data") or {}).get("num_classes")
    if c is not None and c != cfg["data"]["num_classes"]:
        raise CheckpointError(f"checkpoint {path} was written with data.num_classes={c!r}, "
                              f"the config has {cfg['data']['num_classes']!r}")


def _open_target(cfg: dict, root: Path, split: str = "train", with_labels: bool = True):
    return Cityscapes(root, split, None, int(cfg["data"]["num_classes"]), with_labels=with_labels)


def preflight(cfg: dict, work_dir: str | Path, resume: bool | str | Path = False) -> None:
    """Every check of a run that writes nothing and reads no image: the work dir, the
    pretrained file, the dataset roots (or, with data.generate, that cbda may write there), the
    radius against the label size, and the checkpoint to resume from. Raises a TrainError
    subclass (ConfigError, DataFolderError, DatasetNotFoundError, CheckpointError)."""
    work_dir = Path(work_dir)
    check_work_dir(work_dir)
    pre = cfg["model"].get("pretrained")
    if pre and not Path(pre).is_file():
        raise ConfigError(f"model.pretrained: no such file {pre} (a local torchvision resnet file, or null)")
    src, tgt = resolve_roots(cfg, work_dir)
    gen = cfg["data"].get("generate")
    if gen:
        check_generation(gen, src, tgt, cfg["data"].get("source") or "gtav")
    else:
        target = _open_target(cfg, tgt)
        _open_target(cfg, tgt, "val")
        if src is not None:
            build_source(cfg, src, None)
        if not cfg["data"].get("label_size") and cfg["mode"] == "adapt":
            check_radius(int(cfg["active"]["radius"]), target.native_label_size())
    if resume is True:
        if ckpt.latest(work_dir / "checkpoints") is None:
            raise CheckpointError(f"--resume: no checkpoint in {work_dir / 'checkpoints'}")
    elif resume:
        if not Path(resume).is_file():
            raise CheckpointError(f"--resume-from: no such file {resume}")


def build_source(cfg: dict, root: Path, size, label_size="image"):
    kind, C = cfg["data"]["source"], int(cfg["data"]["num_classes"])
    if kind == "gtav":
        return GTAV(root, size, C, label_size=label_size)
    if kind == "synthia":
        return Synthia(root, size, C, label_size=label_size)
    raise ConfigError(f"data.source: expected gtav or synthia, got {kind!r}")


def _log(msg: str) -> None:
    if dist_utils.rank() == 0:
        print(msg, flush=True)


def seed_everything(seed: int, deterministic: bool = False) -> None:
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)
    if deterministic:
        torch.use_deterministic_algorithms(True, warn_only=True)


def poly_lr(base: float, it: int, horizon: int, power: float) -> float:
    return base * (1 - min(it, horizon - 1) / horizon) ** power


class Trainer:
    """Build everything from a config; `run()` trains (or resumes) and returns metrics.json."""

    def __init__(self, cfg: dict, work_dir: str | Path, resume: bool | str | Path = False,
                 progress: bool = True, _evaluating: bool = False):
        # a validated config is returned unchanged; a hand-made dict gets the same checks and
        # defaults as one loaded from YAML
        self.cfg = cfg = schema.validate(cfg)
        self.work_dir = Path(work_dir)
        self.mode = cfg["mode"]
        dev = cfg["device"]
        if dev == "auto":
            dev = "cuda" if torch.cuda.is_available() else "cpu"
        self.rank, self.world, local = dist_utils.init(torch.device(dev).type)
        self.device = torch.device(f"cuda:{local}" if dev == "cuda" else dev)
        preflight(cfg, self.work_dir, resume)
        if not resume and not _evaluating and ckpt.latest(self.work_dir / "checkpoints") is not None:
            raise CheckpointError(
                f"--work-dir: {self.work_dir} holds checkpoints of an earlier run (latest "
                f"{ckpt.latest(self.work_dir / 'checkpoints').name}); pass --resume to continue it, "
                f"or choose another work dir")
        # read the checkpoint now: an unreadable one fails the run before any data is touched
        found = self._find_checkpoint(resume) if resume else None
        if found is not None:
            check_compatible(cfg, found[1], found[0])
        dist_utils.barrier()  # every rank has checked before rank 0 writes
        if self.device.type == "cuda":
            torch.cuda.set_device(self.device)
        if self.rank == 0:
            self.work_dir.mkdir(parents=True, exist_ok=True)
            (self.work_dir / RUN_MARKER).touch()
            for folder in (self.work_dir, self.work_dir / "checkpoints", self.work_dir / "cache"):
                for p in ckpt.remove_stale_temporaries(folder):
                    _log(f"removed {p}, left by an interrupted save")
        dist_utils.barrier()
        self.progress = progress and self.rank == 0
        tr = cfg["train"]
        seed_everything(int(cfg["seed"]) + self.rank, bool(tr["deterministic"]))
        self.C = int(cfg["data"]["num_classes"])
        self.classes = class_names(self.C)
        self._build_data()
        self.model = build_model(cfg["model"], self.C).to(self.device)
        self.channels_last = bool(tr["channels_last"])
        if self.channels_last:
            self.model = self.model.to(memory_format=torch.channels_last)
        bb, head = self.model.param_groups()
        self.base_lrs = [float(tr["lr"]), float(tr["lr"]) * float(tr["head_lr_mult"])]
        self.optimizer = torch.optim.SGD(
            [{"params": bb, "lr": self.base_lrs[0]}, {"params": head, "lr": self.base_lrs[1]}],
            lr=self.base_lrs[0], momentum=float(tr["momentum"]), weight_decay=float(tr["weight_decay"]))
        self.net = self.model
        if self.world > 1:
            self.net = torch.nn.parallel.DistributedDataParallel(
                self.model, device_ids=[self.device.index] if self.device.type == "cuda" else None)
        self.iteration = 0
        self.metrics = {"name": cfg.get("name"), "mode": self.mode,
                        "strategy": cfg["active"].get("strategy"), "budget": cfg["active"].get("budget"),
                        "classes": list(self.classes), "rounds": [], "evals": [],
                        "environment": self.environment()}
        self.state = cbda.ActiveLabelState(image_size=tuple(self.label_size), num_classes=self.C,
                                           num_images=len(self.tgt_train))
        self._label_cache: dict[int, torch.Tensor] = {}
        if found is not None:
            path, payload = found
            env = self.environment()
            self.restore(payload, path)
            before = self.metrics.get("environment")
            if before is not None and before != env:
                changed = ", ".join(f"{k} {before.get(k)} -> {env[k]}" for k in env if before.get(k) != env[k])
                _log(f"warning: resumed with {changed}; the numbers may differ in the last bits from "
                     f"an uninterrupted run")
            _log(f"resumed from {path} at iteration {self.iteration} ({self.state.num_rounds} rounds done)")

    def environment(self) -> dict:
        """What, besides the config and the seed, decides a run's numbers bit for bit: float
        sums depend on the thread count, the torch build and the selection backend."""
        try:
            from cbda.api import dispatch
            backend = dispatch.resolve(self.cfg["active"]["backend"], self.device).NAME
        except Exception as e:  # noqa: BLE001 - a missing backend is reported by the round itself
            backend = f"unavailable ({type(e).__name__})"
        return {"torch": torch.__version__, "threads": torch.get_num_threads(),
                "device": str(self.device), "selection_backend": backend, "world_size": self.world}

    # ---------------------------------------------------------------- data
    def _build_data(self) -> None:
        cfg, data = self.cfg, self.cfg["data"]
        src_root, tgt_root = resolve_roots(cfg, self.work_dir)
        if data.get("generate"):
            if self.rank == 0:
                ensure_generated(data["generate"], src_root, tgt_root, data.get("source") or "gtav", log=_log)
            dist_utils.barrier()
        tsize = tuple(data["target_size"])
        supervised = self.mode == "supervised"
        # target images only: their training labels come from the labelling state
        self.tgt_train = Cityscapes(tgt_root, "train", tsize, self.C, with_labels=supervised)
        self.tgt_gt = Cityscapes(tgt_root, "train", None, self.C, with_labels=True)
        self.tgt_val = Cityscapes(tgt_root, "val", tuple(data["eval_size"]), self.C, label_size=None)
        self.label_size = tuple(data.get("label_size") or self.tgt_gt.native_label_size())
        self.src = None
        seed = int(cfg.get("seed", 0)) * 1000 + self.rank
        if self.mode != "supervised":
            self.src = build_source(cfg, src_root, tuple(data["source_size"]))
            if data.get("class_balanced", True):
                presence = class_presence(
                    len(self.src), self.src.read_gt, self.C,
                    cache=self.work_dir / "cache" / "source_class_presence.json",
                    key=[str(src_root.resolve())] + self.src.file_stamps())
                self.src_stream = ClassBalancedSampler(presence, self.C, seed)
            else:
                self.src_stream = ShuffledStream(len(self.src), seed)
        self.tgt_stream = ShuffledStream(len(self.tgt_train), seed + 1)
        self.consumed = {"source": 0, "target": 0}

    def _loader(self, dataset, stream, batch_size):
        workers = int(self.cfg["data"].get("num_workers", 0))
        # a private generator: creating loader iterators must not consume the global torch RNG
        return iter(DataLoader(dataset, batch_sampler=BatchStream(stream, batch_size),
                               num_workers=workers, pin_memory=self.device.type == "cuda",
                               persistent_workers=workers > 0,
                               generator=torch.Generator().manual_seed(0)))

    def _eval_loader(self, dataset, batch_size):
        indices = list(range(len(dataset)))[self.rank::self.world]
        return DataLoader(torch.utils.data.Subset(dataset, indices), batch_size=batch_size,
                          num_workers=int(self.cfg["data"].get("num_workers", 0)),
                          generator=torch.Generator().manual_seed(0))

    def prepare(self, images: torch.Tensor) -> torch.Tensor:
        """uint8 (B, 3, H, W) -> normalised float on the device (channels_last if configured)."""
        x = images.to(self.device, non_blocking=True).float().div_(255)
        mean = torch.tensor(IMAGENET_MEAN, device=self.device).view(1, 3, 1, 1)
        std = torch.tensor(IMAGENET_STD, device=self.device).view(1, 3, 1, 1)
        x = (x - mean) / std
        return x.contiguous(memory_format=torch.channels_last) if self.channels_last else x

    def autocast(self):
        if self.cfg["train"].get("bf16", False):
            return torch.autocast(self.device.type, dtype=torch.bfloat16)
        return contextlib.nullcontext()

    def target_gt(self, image_id: int) -> np.ndarray:
        """(H, W) uint8 train ids of target image `image_id` at the label size (the annotator)."""
        gt = self.tgt_gt.read_gt(int(image_id))
        return resize_nearest(gt, self.label_size).astype(np.uint8)

    def active_labels(self, indices) -> torch.Tensor:
        """(B, h, w) int64 training labels of target images from the labelling state: train ids
        where actively labelled, 255 elsewhere, nearest-resized to the target training size."""
        out = []
        for i in indices:
            i = int(i)
            if i not in self._label_cache:
                lab = resize_nearest(np.asarray(self.state.label_map(i)), tuple(self.cfg["data"]["target_size"]))
                self._label_cache[i] = torch.from_numpy(lab.astype(np.int64))
            out.append(self._label_cache[i])
        return torch.stack(out)

    # ---------------------------------------------------------------- checkpoints
    def _payload(self) -> dict:
        return {"iteration": self.iteration, "model": self.model.state_dict(),
                "optimizer": self.optimizer.state_dict(), "rng": ckpt.rng_states(),
                "consumed": dict(self.consumed), "state": dist_utils.state_to_bytes(self.state),
                "metrics": self.metrics, "config": self.cfg}

    def save_checkpoint(self) -> Path | None:
        if self.rank != 0:
            return None
        d = self.work_dir / "checkpoints"
        path = d / f"iter_{self.iteration:07d}.pt"
        ckpt.save(path, self._payload())
        ckpt.prune(d, int(self.cfg["train"].get("keep_checkpoints", 2)))
        return path

    def _find_checkpoint(self, resume) -> tuple[Path, dict]:
        """(path, payload) to resume from: `resume` True means the newest readable checkpoint
        of the work dir (unreadable newer ones are skipped with a warning naming them), a path
        means that file. Raises CheckpointError."""
        if resume is True:
            return ckpt.latest_good(self.work_dir / "checkpoints", warn=_log)
        return Path(resume), ckpt.load(resume)

    def restore(self, p: dict, path: Path | str = "checkpoint") -> None:
        """Load a checkpoint payload (ckpt.load) into the model, optimiser, state, streams and
        RNGs. Raises CheckpointError when it was written by a run with another model or class
        count."""
        check_compatible(self.cfg, p, path)
        try:
            self.model.load_state_dict(p["model"])
            self.optimizer.load_state_dict(p["optimizer"])
        except (RuntimeError, ValueError, KeyError) as e:
            first = (str(e).splitlines() or [type(e).__name__])[0]
            raise CheckpointError(f"checkpoint {path} does not fit this model ({first})") from None
        self.state = dist_utils.state_from_bytes(p["state"])
        self.iteration = int(p["iteration"])
        self.metrics = p["metrics"]
        self.consumed = dict(p["consumed"])
        if self.src is not None:
            self.src_stream.skip_to(self.consumed["source"] * int(self.cfg["train"]["batch_source"]))
        self.tgt_stream.skip_to(self.consumed["target"] * int(self.cfg["train"]["batch_target"]))
        if self.rank == 0:
            ckpt.set_rng_states(p["rng"])

    # ---------------------------------------------------------------- steps
    def _upsample(self, logits, size):
        return F.interpolate(logits.float(), size=size, mode="bilinear", align_corners=True)

    def train_step(self, src_batch, tgt_batch) -> dict:
        tr = self.cfg["train"]
        losses = {}
        total = 0.0
        if src_batch is not None:
            x, y = self.prepare(src_batch["image"]), src_batch["label"].to(self.device)
            with self.autocast():
                logits = self._upsample(self.net(x), tuple(y.shape[-2:]))
            ce = cross_entropy(logits, y)
            lc = local_consistency(logits, y)
            total = total + (ce if ce is not None else 0.0) + float(tr.get("lambda_lc", 0.1)) * lc
            losses["loss_source"] = float(ce.detach()) if ce is not None else None
            losses["loss_lc"] = float(lc.detach())
        if tgt_batch is not None:
            x = self.prepare(tgt_batch["image"])
            if self.mode == "supervised":
                y = tgt_batch["label"].to(self.device)
            else:
                y = self.active_labels(tgt_batch["index"]).to(self.device)
            with self.autocast():
                logits = self._upsample(self.net(x), tuple(y.shape[-2:]))
            ce = cross_entropy(logits, y)
            if ce is not None:
                total = total + ce
            losses["loss_target"] = float(ce.detach()) if ce is not None else None
            if self.mode == "adapt" and float(tr.get("lambda_nl", 1.0)) > 0:
                nl = negative_learning(logits, float(tr.get("nl_threshold", 0.05)))
                total = total + float(tr.get("lambda_nl", 1.0)) * nl
                losses["loss_nl"] = float(nl.detach())
        self.optimizer.zero_grad(set_to_none=True)
        if torch.is_tensor(total):
            total.backward()
            self.optimizer.step()
        losses["loss"] = float(total.detach()) if torch.is_tensor(total) else float(total)
        return losses

    def acquire(self, k: int) -> None:
        active = self.cfg["active"]
        entry_extra = {}
        if self.cfg.get("eval", {}).get("before_rounds", False):
            res = self.evaluate()
            entry_extra["miou_before"] = res["miou"]
            entry_extra["min_iou_before"] = res["min_iou"]
        human = self.human_labels
        t0 = time.time()
        # Every rank scores its own shard of the target set; cbda.select(shard=True) merges the
        # ranks' candidates with collectives into the exact global selection, recorded in every
        # rank's replica of the state (single process: the whole set, no collectives).
        shard = list(range(len(self.tgt_train)))[self.rank::self.world]
        loader = DataLoader(torch.utils.data.Subset(self.tgt_train, shard),
                            batch_size=int(active.get("batch_size", 2)),
                            num_workers=int(self.cfg["data"].get("num_workers", 0)),
                            generator=torch.Generator().manual_seed(0))
        sel = run_round(self.model, loader, self.state, k, active, self.label_size,
                        len(self.tgt_train), None if human else self.target_gt, self.prepare,
                        self.autocast if self.cfg["train"].get("bf16") else None,
                        seed=int(self.cfg.get("seed", 0)), shard=self.world > 1)
        n_picks = len(sel)
        self._label_cache.clear()
        if human:
            # the summary needs the labels: it is written when training resumes after `cbda import`
            self.metrics["pending_round"] = dict(entry_extra, round=k, iteration=self.iteration, num_picks=n_picks,
                                                 seconds=round(time.time() - t0, 3))
            human_loop.export_pending_round(self, k)
            self.waiting_for_labels = k
            return
        entry = round_summary(self.state, self.classes, k, self.iteration, n_picks)
        entry.update(entry_extra, seconds=round(time.time() - t0, 3))
        self.metrics["rounds"].append(entry)
        imb = entry["imbalance_score"]
        _log(f"round {k}: {n_picks} picks, labelled {100 * (entry['labelled_fraction'] or 0):.2f}% "
             f"of target pixels, imbalance score {'-' if imb is None else f'{imb:.3f}'}")

    def evaluate(self) -> dict:
        """Evaluate on the target val split; the result is also appended to metrics["evals"]."""
        res = self.evaluate_split()
        self.metrics["evals"].append({"iteration": self.iteration, "miou": res["miou"],
                                      "min_iou": res["min_iou"]})
        return res

    def evaluate_split(self) -> dict:
        """The "final" object (evaluate.summarize) of the model now, on the target val split."""
        ev = self.cfg.get("eval", {})
        loader = self._eval_loader(self.tgt_val, int(ev.get("batch_size", 1)))
        conf = evaluate(self.model, loader, self.C, self.prepare, bool(ev.get("flip", True)),
                        self.autocast if self.cfg["train"].get("bf16") else None)
        conf = dist_utils.all_reduce_sum(conf.to(self.device)).cpu()
        res = summarize(conf.numpy(), self.classes)
        res["iteration"] = self.iteration
        return res

    @property
    def human_labels(self) -> bool:
        """`active.labels: human`: rounds wait for `cbda import` instead of copying ground truth."""
        src = self.cfg["active"].get("labels", "ground_truth")
        if src not in human_loop.LABEL_SOURCES:
            raise ConfigError(f"active.labels: expected one of {human_loop.LABEL_SOURCES}, got {src!r}")
        return src == "human"

    def _check_pending_labels(self) -> None:
        """Before training on: a pending round is an error with instructions; a round labelled
        by `cbda import` since the last run gets its metrics entry now."""
        pending = self.state.pending_rounds()
        if pending:
            raise human_loop.LabelsPendingError(human_loop.pending_message(self.work_dir, pending[0]))
        info = self.metrics.pop("pending_round", None)
        if info is not None:
            entry = round_summary(self.state, self.classes, info["round"], info["iteration"], info["num_picks"])
            entry.update({k: v for k, v in info.items() if k not in entry})
            self.metrics["rounds"].append(entry)
            self._label_cache.clear()
            _log(f"round {info['round']}: human labels recorded, labelled "
                 f"{100 * (entry['labelled_fraction'] or 0):.2f}% of target pixels")

    # ---------------------------------------------------------------- loop
    def run(self, stop_at: int | None = None) -> dict:
        """Train to `train.iters` (acquiring at the scheduled rounds), evaluate, write
        metrics.json; returns the metrics. stop_at: end at this iteration instead (checkpointed
        and evaluated there), as if train.iters were stop_at but with the config unchanged;
        `cbda compare` uses it for the training every strategy shares before round 1."""
        cfg, tr, active = self.cfg, self.cfg["train"], self.cfg["active"]
        iters = int(tr["iters"])
        horizon = int(tr.get("poly_iters") or iters)   # the LR schedule ignores stop_at
        if stop_at is not None:
            iters = min(iters, int(stop_at))
        # the schema has checked it: one iteration per round, increasing, before train.iters
        schedule = [int(s) for s in active["schedule"]] if self.mode == "adapt" else []
        if self.human_labels:  # validates active.labels (and the export settings) before any work
            human_loop.export_formats(active)
        self._check_pending_labels()
        self.waiting_for_labels = None
        if self.rank == 0:
            (self.work_dir / "config.yaml").write_text(yaml.safe_dump(cfg, sort_keys=False, default_flow_style=None))
        log = ScalarLog(self.work_dir, enabled=self.rank == 0, start_iteration=self.iteration)
        src_iter = self._loader(self.src, self.src_stream, int(tr["batch_source"])) if self.src is not None else None
        tgt_iter = None
        if self.mode != "source_only":
            tgt_iter = self._loader(self.tgt_train, self.tgt_stream, int(tr["batch_target"]))
        every, log_every = int(tr.get("checkpoint_every", 0)), int(tr.get("log_every", 50))
        eval_every = int(cfg.get("eval", {}).get("every", 0) or 0)
        bar = None
        if self.progress:
            from tqdm.auto import tqdm
            bar = tqdm(total=iters, initial=self.iteration, desc=cfg.get("name") or "train",
                       dynamic_ncols=True, file=sys.stderr)
        self.model.train()
        t_last = time.time()
        while self.iteration < iters:
            k = self.state.num_rounds
            if k < len(schedule) and self.iteration >= schedule[k]:
                self.acquire(k + 1)
                if self.waiting_for_labels:
                    break
                continue
            for g, base in zip(self.optimizer.param_groups, self.base_lrs):
                g["lr"] = poly_lr(base, self.iteration, horizon, float(tr.get("poly_power", 0.9)))
            src_batch = next(src_iter) if src_iter is not None else None
            tgt_batch = next(tgt_iter) if tgt_iter is not None else None
            self.consumed["source"] += src_iter is not None
            self.consumed["target"] += tgt_iter is not None
            losses = self.train_step(src_batch, tgt_batch)
            self.iteration += 1
            if bar is not None:
                bar.update(1)
                bar.set_postfix(loss=f"{losses['loss']:.3f}", rounds=self.state.num_rounds)
            if self.iteration % log_every == 0 or self.iteration == iters:
                now = time.time()
                losses.update(lr=self.optimizer.param_groups[0]["lr"],
                              sec_per_iter=(now - t_last) / log_every)
                t_last = now
                log.scalars(self.iteration, losses)
            if eval_every and self.iteration % eval_every == 0 and self.iteration < iters:
                res = self.evaluate()
                log.scalars(self.iteration, {"val/miou": res["miou"], "val/min_iou": res["min_iou"]}, csv_row=False)
            if (every and self.iteration % every == 0) or self.iteration == iters:
                self.save_checkpoint()
        if bar is not None:
            bar.close()
        if self.waiting_for_labels:
            log.close()
            self.metrics["waiting_for_labels"] = self.waiting_for_labels
            if self.rank == 0:
                write_json(self.work_dir / "metrics.json", self.metrics)
            return self.metrics
        self.metrics.pop("waiting_for_labels", None)
        final = self.evaluate()
        self.metrics["final"] = final
        log.scalars(self.iteration, {"val/miou": final["miou"], "val/min_iou": final["min_iou"]}, csv_row=False)
        for r in self.metrics["rounds"]:
            if r.get("imbalance_score") is not None:
                log.scalars(r["round"], {"rounds/imbalance_score": r["imbalance_score"]}, csv_row=False)
        log.close()
        if self.rank == 0:
            write_json(self.work_dir / "metrics.json", self.metrics)
            self.state.save(self.work_dir / "active_state.pt")
        return self.metrics


def train(cfg: dict, work_dir: str | Path, resume=False, progress: bool = True, quiet: bool = False) -> dict:
    """Train (or resume) a run; prints the results table unless quiet; returns metrics.json."""
    t0 = time.time()
    trainer = Trainer(cfg, work_dir, resume=resume, progress=progress)
    metrics = trainer.run()
    metrics["seconds"] = round(time.time() - t0, 1)
    if trainer.rank == 0:
        write_json(Path(work_dir) / "metrics.json", metrics)
        if metrics.get("waiting_for_labels"):
            k = metrics["waiting_for_labels"]
            print(human_loop.pending_message(work_dir, k, human_loop.RoundWindows(trainer.state, k)), flush=True)
        elif not quiet:
            print(format_results(metrics), flush=True)
    dist_utils.shutdown()
    return metrics


def evaluate_checkpoint(cfg: dict, work_dir: str | Path, checkpoint: str | Path | None = None,
                        quiet: bool = False) -> dict:
    """Evaluate a checkpoint (default: the newest readable one in work_dir) and print its
    results table. In metrics.json only "final" is recomputed; every other field is kept as it
    was (the checkpoint's metrics are the fallback when there is no metrics.json). Returns the
    metrics."""
    work_dir = Path(work_dir)
    if checkpoint:
        path, payload = Path(checkpoint), ckpt.load(checkpoint)
    else:
        path, payload = ckpt.latest_good(work_dir / "checkpoints", warn=_log)
    cfg = schema.validate(cfg)
    check_compatible(cfg, payload, path)  # before any data is read
    trainer = Trainer(cfg, work_dir, resume=False, progress=False, _evaluating=True)
    trainer.restore(payload, path)
    final = trainer.evaluate_split()
    metrics_path = work_dir / "metrics.json"
    metrics = dict(trainer.metrics)
    if metrics_path.is_file():
        try:
            metrics = read_metrics(metrics_path)
        except RunError:
            _log(f"warning: {metrics_path} is unreadable; rewriting it from {path}")
    metrics["final"] = final
    if trainer.rank == 0:
        write_json(metrics_path, metrics)
        if not quiet:
            print(format_results(metrics), flush=True)
    dist_utils.shutdown()
    return metrics
