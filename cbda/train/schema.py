"""The typed schema of a training config, checked when the config loads (before any data or
model is touched): every key's type and range, unknown keys, and the cross-field rules
(schedule vs rounds and train.iters, goal vs num_classes, radius vs the label size, which
dataset roots a mode needs).

`validate(cfg)` returns a new config with every section complete (missing keys take the
defaults below, which are RIPU's, as in `configs/_base_/ripu.yaml`) or raises ConfigError with
one line naming the dotted key, what was given and the accepted form. A compact hand-written
schema rather than a dependency: each field is a small checker, and the error text is ours.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

from .errors import ConfigError

REQUIRED = object()  # a field without a default must be given

MODES = ("adapt", "source_only", "supervised")
DEVICES = ("auto", "cpu", "cuda")
SOURCES = ("gtav", "synthia")
NUM_CLASSES = (16, 19)
BACKBONES = ("resnet18", "resnet50", "resnet101")
OUTPUT_STRIDES = (8, 16, 32)
LABEL_SOURCES = ("ground_truth", "human")   # active.labels: simulated annotator, or `cbda import`
DEFAULT_EXPORT = ("labelstudio", "cvat", "preview")


def _strategies() -> tuple[str, ...]:
    import cbda
    return tuple(cbda.STRATEGIES)


def _heuristics() -> tuple[str, ...]:
    import cbda
    return tuple(cbda.HEURISTICS)


def _backends() -> tuple[str, ...]:
    from cbda.api.dispatch import BACKEND_NAMES
    return tuple(BACKEND_NAMES)


def _got(value) -> str:
    return f"{value!r} ({type(value).__name__})" if not isinstance(value, str) else repr(value)


@dataclass(frozen=True)
class Field:
    """One config value: `check(key, value)` returns the value (normalised) or raises."""
    check: Callable[[str, Any], Any]
    default: Any = REQUIRED
    nullable: bool = False

    def __call__(self, key: str, value):
        if value is None:
            if self.nullable:
                return None
            raise ConfigError(f"{key}: must be set, got null")
        return self.check(key, value)


def _is_int(v) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


def Int(default=REQUIRED, lo: int | None = None, hi: int | None = None, nullable=False) -> Field:
    def check(key, v):
        rng = (f" >= {lo}" if lo is not None else "") + (f" and <= {hi}" if hi is not None else "")
        if not _is_int(v) or (lo is not None and v < lo) or (hi is not None and v > hi):
            raise ConfigError(f"{key}: expected an integer{rng}, got {_got(v)}")
        return v
    return Field(check, default, nullable)


def _as_float(key, v, form):
    # PyYAML reads 1e-4 (no dot) as a string: accept a plain numeric string for float keys
    if isinstance(v, str):
        try:
            v = float(v)
        except ValueError:
            raise ConfigError(f"{key}: expected {form}, got {_got(v)}") from None
    if isinstance(v, bool) or not isinstance(v, (int, float)) or not math.isfinite(v):
        raise ConfigError(f"{key}: expected {form}, got {_got(v)}")
    return float(v)


def Float(default=REQUIRED, lo: float | None = None, hi: float | None = None, lo_open=False,
          hi_open=False, nullable=False) -> Field:
    parts = []
    if lo is not None:
        parts.append(f"{'>' if lo_open else '>='} {lo}")
    if hi is not None:
        parts.append(f"{'<' if hi_open else '<='} {hi}")
    form = "a number" + (" " + " and ".join(parts) if parts else "")

    def check(key, v):
        f = _as_float(key, v, form)
        if (lo is not None and (f < lo or (lo_open and f == lo))) or \
           (hi is not None and (f > hi or (hi_open and f == hi))):
            raise ConfigError(f"{key}: expected {form}, got {_got(v)}")
        return f
    return Field(check, default, nullable)


def Bool(default=REQUIRED) -> Field:
    def check(key, v):
        if not isinstance(v, bool):
            raise ConfigError(f"{key}: expected true or false, got {_got(v)}")
        return v
    return Field(check, default)


def Str(default=REQUIRED, nullable=False) -> Field:
    def check(key, v):
        if not isinstance(v, str) or not v:
            raise ConfigError(f"{key}: expected a non-empty string, got {_got(v)}")
        return v
    return Field(check, default, nullable)


def PathStr(default=REQUIRED, nullable=True) -> Field:
    def check(key, v):
        if not isinstance(v, str) or not v.strip():
            raise ConfigError(f"{key}: expected a path (a string) or null, got {_got(v)}")
        return v
    return Field(check, default, nullable)


def Choice(choices, default=REQUIRED, nullable=False) -> Field:
    def check(key, v):
        allowed = choices() if callable(choices) else choices
        # same type too: 19.0 is not the class count 19, nor True the choice 1
        if not any(v == a and type(v) is type(a) for a in allowed):
            extra = " or null" if nullable else ""
            raise ConfigError(f"{key}: expected one of {', '.join(map(str, allowed))}{extra}, got {_got(v)}")
        return v
    return Field(check, default, nullable)


def Size(default=REQUIRED, nullable=False) -> Field:
    def check(key, v):
        if not isinstance(v, (list, tuple)) or len(v) != 2 or not all(_is_int(x) and x >= 1 for x in v):
            raise ConfigError(f"{key}: expected [H, W], two positive integers, got {_got(v)}")
        return [int(x) for x in v]
    return Field(check, default, nullable)


def IntList(default=REQUIRED, lo: int = 0, nonempty=False, nullable=False) -> Field:
    def check(key, v):
        if not isinstance(v, (list, tuple)) or not all(_is_int(x) and x >= lo for x in v) or (nonempty and not v):
            what = "a non-empty list" if nonempty else "a list"
            raise ConfigError(f"{key}: expected {what} of integers >= {lo}, got {_got(v)}")
        return list(v)
    return Field(check, default, nullable)


def FloatList(default=REQUIRED, nullable=False) -> Field:
    def check(key, v):
        if not isinstance(v, (list, tuple)):
            raise ConfigError(f"{key}: expected a list of numbers, got {_got(v)}")
        return [_as_float(f"{key}[{i}]", x, "a number") for i, x in enumerate(v)]
    return Field(check, default, nullable)


def _export_formats(key, v):
    from cbda.annotate.roundtrip import FORMATS
    fmts = [v] if isinstance(v, str) else v
    if not isinstance(fmts, (list, tuple)) or not fmts or not all(f in FORMATS for f in fmts):
        raise ConfigError(f"{key}: expected a non-empty list of {', '.join(FORMATS)}, got {_got(v)}")
    return list(fmts)


#: section -> key -> Field. Sections marked nullable in NULLABLE_SECTIONS may be null.
GENERATE = {
    "seed": Int(0, lo=0),
    "size": Size(),
    "num_source": Int(REQUIRED, lo=1),
    "num_train": Int(REQUIRED, lo=1),
    "num_val": Int(REQUIRED, lo=1),
    "dir": PathStr(None),
}

SCHEMA: dict[str, Any] = {
    "name": Str(None, nullable=True),
    "seed": Int(0, lo=0),
    "device": Choice(DEVICES, "auto"),
    "mode": Choice(MODES, "adapt"),
    "data": {
        "source": Choice(SOURCES, None, nullable=True),    # null only in mode supervised
        "source_root": PathStr(None),
        "target_root": PathStr(None),
        "num_classes": Choice(NUM_CLASSES),
        "source_size": Size(),
        "target_size": Size(),
        "eval_size": Size(),
        "label_size": Size(None, nullable=True),
        "class_balanced": Bool(True),
        "num_workers": Int(0, lo=0),
        "generate": GENERATE,          # null or a section
    },
    "model": {
        "backbone": Choice(BACKBONES, "resnet101"),
        "width": Int(64, lo=1),
        "output_stride": Choice(OUTPUT_STRIDES, 8),
        "frozen_bn": Bool(True),
        "head_channels": Int(512, lo=1),
        "low_channels": Int(48, lo=1),
        "aspp_dilations": IntList([6, 12, 18], lo=1, nonempty=True),
        "dropout": Float(0.1, lo=0.0, hi=1.0, hi_open=True),
        "pretrained": PathStr(None),
    },
    "train": {
        "iters": Int(REQUIRED, lo=1),
        "batch_source": Int(2, lo=1),
        "batch_target": Int(2, lo=1),
        "lr": Float(REQUIRED, lo=0.0, lo_open=True),
        "head_lr_mult": Float(10.0, lo=0.0, lo_open=True),
        "momentum": Float(0.9, lo=0.0, hi=1.0, hi_open=True),
        "weight_decay": Float(5e-4, lo=0.0),
        "poly_power": Float(0.9, lo=0.0),
        "poly_iters": Int(None, lo=1, nullable=True),     # null: train.iters
        "lambda_lc": Float(0.1, lo=0.0),
        "lambda_nl": Float(1.0, lo=0.0),
        "nl_threshold": Float(0.05, lo=0.0, hi=1.0, lo_open=True, hi_open=True),
        "bf16": Bool(False),
        "channels_last": Bool(True),
        "deterministic": Bool(False),
        "checkpoint_every": Int(0, lo=0),
        "keep_checkpoints": Int(2, lo=0),
        "log_every": Int(50, lo=1),
    },
    "active": {
        # null only outside mode adapt (checked with the other cross-field rules)
        "strategy": Choice(_strategies, None, nullable=True),
        "heuristic": Choice(_heuristics, "ripu"),
        "budget": Float(None, lo=0.0, hi=1.0, lo_open=True, nullable=True),
        "rounds": Int(None, lo=1, nullable=True),
        "schedule": IntList(None, lo=0, nullable=True),
        "radius": Int(1, lo=0),
        "goal": FloatList(None, nullable=True),
        "backend": Choice(_backends, "auto"),
        "batch_size": Int(2, lo=1),          # images per model forward pass of a round
        "select_batch_size": Int(None, lo=1, nullable=True),  # images per kernel batch; null: from free GPU memory
        "labels": Choice(LABEL_SOURCES, "ground_truth"),
        "export": Field(_export_formats, list(DEFAULT_EXPORT)),
        "image_url": Str(None, nullable=True),
    },
    "eval": {
        "flip": Bool(True),
        "batch_size": Int(1, lo=1),
        "every": Int(0, lo=0),
        "before_rounds": Bool(False),
    },
}
NULLABLE_SECTIONS = {"data.generate"}


def _section(key: str, spec: dict, given) -> dict:
    if not isinstance(given, dict):
        raise ConfigError(f"{key}: expected a mapping of keys ({', '.join(spec)}), got {_got(given)}")
    unknown = [k for k in given if k not in spec]
    if unknown:
        raise ConfigError(f"{key}.{unknown[0]}: unknown key (known in {key}: {', '.join(spec)})")
    out = {}
    for name, field in spec.items():
        dotted = f"{key}.{name}" if key else name
        if isinstance(field, dict):
            value = given.get(name)
            if value is None and dotted in NULLABLE_SECTIONS:
                out[name] = None
            else:
                out[name] = _section(dotted, field, value if value is not None else {})
        elif name in given:
            out[name] = field(dotted, given[name])
        elif field.default is REQUIRED:
            raise ConfigError(f"{dotted}: missing (required)")
        else:
            out[name] = field.default if not isinstance(field.default, list) else list(field.default)
    return out


def validate(cfg: dict) -> dict:
    """The config checked against SCHEMA and the cross-field rules, with defaults filled in.
    Raises ConfigError (one line, naming the key) on the first problem."""
    if not isinstance(cfg, dict):
        raise ConfigError(f"config: expected a mapping at the top level, got {_got(cfg)}")
    unknown = [k for k in cfg if k not in SCHEMA]
    if unknown:
        raise ConfigError(f"{unknown[0]}: unknown key (known at the top level: {', '.join(SCHEMA)})")
    out = {}
    for name, field in SCHEMA.items():
        if isinstance(field, dict):
            out[name] = _section(name, field, cfg.get(name) if cfg.get(name) is not None else {})
        elif name in cfg:
            out[name] = field(name, cfg[name])
        elif field.default is REQUIRED:
            raise ConfigError(f"{name}: missing (required)")
        else:
            out[name] = field.default
    _cross_checks(out)
    return out


def label_size_known(cfg: dict) -> tuple[int, int] | None:
    """(H, W) of the label space when the config alone fixes it (data.label_size, or the size of
    the generated dataset), else None (the native size of the target labels, known on reading)."""
    data = cfg["data"]
    if data.get("label_size"):
        return tuple(data["label_size"])
    if data.get("generate"):
        return tuple(data["generate"]["size"])
    return None


def check_radius(radius: int, label_size: tuple[int, int]) -> None:
    """A region (2r+1)² must fit inside the label space, else no region can be picked whole."""
    h, w = label_size
    if 2 * radius + 1 > min(h, w):
        raise ConfigError(f"active.radius: a region of (2r+1)^2 = {2 * radius + 1}x{2 * radius + 1} "
                          f"pixels must fit in the label size {h}x{w}; expected radius <= "
                          f"{(min(h, w) - 1) // 2}, got {radius}")


def _cross_checks(cfg: dict) -> None:
    mode, data, tr, act = cfg["mode"], cfg["data"], cfg["train"], cfg["active"]
    gen = data["generate"]
    if mode != "supervised" and data["source"] is None:
        raise ConfigError(f"data.source: mode {mode} trains on a source domain; expected one of "
                          f"{', '.join(SOURCES)}, got null")
    if gen is None:
        if data["target_root"] is None:
            raise ConfigError("data.target_root: not set; point it at the Cityscapes folder "
                              "(or add a data.generate section for the built-in dataset)")
        if mode != "supervised" and data["source_root"] is None:
            raise ConfigError(f"data.source_root: not set; point it at the {data['source']} folder "
                              "(or add a data.generate section for the built-in dataset)")
    else:
        src, tgt = data["source_root"], data["target_root"]
        if mode != "supervised" and src is not None and tgt is not None and \
                Path(src).expanduser().resolve() == Path(tgt).expanduser().resolve():
            raise ConfigError(f"data.source_root: the generated source and target need separate "
                              f"folders, both are {src}")
    if tr["poly_iters"] is None:
        tr["poly_iters"] = tr["iters"]
    if mode != "adapt":
        return
    if act["strategy"] is None:
        raise ConfigError(f"active.strategy: mode adapt acquires labels; expected one of "
                          f"{', '.join(_strategies())}, got null")
    for key in ("budget", "rounds", "schedule"):
        if act[key] is None:
            raise ConfigError(f"active.{key}: mode adapt needs it, got null")
    rounds, schedule, iters = act["rounds"], act["schedule"], tr["iters"]
    if len(schedule) != rounds:
        raise ConfigError(f"active.schedule: expected one iteration per round (active.rounds = {rounds}), "
                          f"got {len(schedule)}: {schedule}")
    if any(b <= a for a, b in zip(schedule, schedule[1:])):
        raise ConfigError(f"active.schedule: expected strictly increasing iterations, got {schedule}")
    if schedule and schedule[-1] >= iters:
        raise ConfigError(f"active.schedule: every round must come before train.iters = {iters} "
                          f"(or it never runs), got {schedule}")
    C = data["num_classes"]
    goal = act["goal"]
    if goal is not None:
        if len(goal) != C:
            raise ConfigError(f"active.goal: expected {C} shares (data.num_classes), got {len(goal)}")
        if any(g < 0 for g in goal) or abs(sum(goal) - 1.0) > 1e-3:
            raise ConfigError(f"active.goal: expected a distribution (shares >= 0 summing to 1), "
                              f"got shares summing to {sum(goal):.6g}")
    size = label_size_known(cfg)
    if size is not None:
        check_radius(act["radius"], size)


def known_key(parts: list[str]) -> bool:
    """Whether the dotted key `parts` names a field of the schema (present in a file or not)."""
    node: Any = SCHEMA
    for p in parts:
        if not isinstance(node, dict) or p not in node:
            return False
        node = node[p]
    return True


def known_keys(parts: list[str]) -> list[str]:
    """The keys the schema knows inside the section `parts` ([] for the top level)."""
    node: Any = SCHEMA
    for p in parts:
        node = node.get(p) if isinstance(node, dict) else None
    return list(node) if isinstance(node, dict) else []
