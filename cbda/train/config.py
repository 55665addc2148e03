"""YAML configs with `_base_` inheritance, dotted `key=value` overrides, and the schema check.

A config file may name one or more base files in `_base_` (paths relative to it); bases merge
first, in order, then the file itself, dict by dict (lists and scalars replace). A config is
found by path, or by name among the configs shipped in `cbda/train/configs/`.
Overrides `a.b.c=value` are typed by `yaml.safe_load` of the value ("0.1" -> float, "null" ->
None, "[1, 2]" -> list) and must name a key of the config or of the schema, so a typo fails
loudly. `load_config` then checks the result against the schema (schema.py) and fills in the
defaults, so a config that loads is a config that can run.
"""
from __future__ import annotations

import copy
from pathlib import Path

import yaml

from . import schema
from .errors import ConfigError

CONFIG_DIR = Path(__file__).parent / "configs"

__all__ = ["CONFIG_DIR", "ConfigError", "available_configs", "load_config", "load_file", "merge",
           "resolve_config_path", "apply_override"]


def available_configs() -> list[str]:
    """Names of the shipped configs (without `.yaml`, bases excluded)."""
    return sorted(p.stem for p in CONFIG_DIR.glob("*.yaml"))


def resolve_config_path(name_or_path: str | Path) -> Path:
    p = Path(name_or_path)
    if p.is_file():
        return p
    for candidate in (CONFIG_DIR / f"{name_or_path}.yaml", CONFIG_DIR / str(name_or_path)):
        if candidate.is_file():
            return candidate
    raise ConfigError(f"config {str(name_or_path)!r} is neither a file nor a shipped config; "
                      f"shipped: {', '.join(available_configs())}")


def merge(base: dict, update: dict) -> dict:
    """Recursive dict merge: a new dict, `update` winning; nested dicts merge, the rest replace."""
    out = copy.deepcopy(base)
    for k, v in update.items():
        if isinstance(v, dict) and isinstance(out.get(k), dict):
            out[k] = merge(out[k], v)
        else:
            out[k] = copy.deepcopy(v)
    return out


def load_file(path: str | Path, _seen: tuple = ()) -> dict:
    """The merged mapping of one YAML file and its `_base_` chain (no schema check)."""
    path = Path(path).resolve()
    if path in _seen:
        raise ConfigError(f"config {path}: circular _base_")
    try:
        with open(path) as f:
            data = yaml.safe_load(f) or {}
    except FileNotFoundError:
        via = f" (a _base_ of {_seen[-1]})" if _seen else ""
        raise ConfigError(f"config {path}{via}: no such file") from None
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None)
        where = f" line {mark.line + 1}, column {mark.column + 1}" if mark else ""
        what = getattr(e, "problem", None) or str(e).splitlines()[0]
        raise ConfigError(f"config {path}:{where} is not valid YAML ({what})") from None
    except (OSError, UnicodeDecodeError) as e:
        raise ConfigError(f"config {path}: cannot be read ({e})") from None
    if not isinstance(data, dict):
        raise ConfigError(f"config {path}: top level must be a mapping, got {type(data).__name__}")
    bases = data.pop("_base_", None) or []
    if isinstance(bases, str):
        bases = [bases]
    if not isinstance(bases, list) or not all(isinstance(b, str) for b in bases):
        raise ConfigError(f"config {path}: _base_ must be a file name or a list of them, got {bases!r}")
    cfg: dict = {}
    for b in bases:
        cfg = merge(cfg, load_file(path.parent / b, _seen + (path,)))
    return merge(cfg, data)


def apply_override(cfg: dict, item: str, use_schema: bool = False) -> None:
    """Apply one `dotted.key=value` override in place. The key must exist in `cfg` (or, with
    `use_schema`, be a key of the schema, as one the file left to its default)."""
    if "=" not in item:
        raise ConfigError(f"override {item!r}: expected key=value")
    key, _, raw = item.partition("=")
    key = key.strip()
    parts = key.split(".")
    node = cfg
    for i, part in enumerate(parts[:-1]):
        if part not in node and use_schema and schema.known_key(parts[:i + 1]):
            node[part] = {}
        if not isinstance(node.get(part), dict):
            raise ConfigError(f"override {item!r}: {'.'.join(parts[:i + 1])} is not a section of the config")
        node = node[part]
    if parts[-1] not in node and not (use_schema and schema.known_key(parts)):
        known = sorted(set(node) | set(schema.known_keys(parts[:-1]) if use_schema else ()))
        raise ConfigError(f"override {item!r}: unknown key {key!r} (known here: {', '.join(known)})")
    try:
        node[parts[-1]] = yaml.safe_load(raw)
    except yaml.YAMLError as e:
        first = str(e).splitlines()[0] if str(e) else type(e).__name__
        raise ConfigError(f"override {item!r}: value is not valid YAML ({first})") from None


def load_config(name_or_path: str | Path, overrides: list[str] | tuple = (), validate: bool = True) -> dict:
    """The merged config of a shipped name or a YAML path, with overrides applied and (unless
    `validate` is False) checked against the schema, defaults filled in.
    Raises ConfigError naming the file or the key."""
    path = resolve_config_path(name_or_path)
    cfg = load_file(path)
    cfg.setdefault("name", path.stem)
    for item in overrides:
        apply_override(cfg, item, use_schema=validate)
    return schema.validate(cfg) if validate else cfg
