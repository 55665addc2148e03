"""YAML configs with `_base_` inheritance and dotted `key=value` overrides.

A config file may name one or more base files in `_base_` (paths relative to it); bases merge
first, in order, then the file itself, dict by dict (lists and scalars replace). A config is
found by path, or by name among the configs shipped in `cbda/train/configs/`.
Overrides `a.b.c=value` are typed by `yaml.safe_load` of the value ("0.1" -> float, "null" ->
None, "[1, 2]" -> list) and must name an existing key, so a typo fails loudly.
"""
from __future__ import annotations

import copy
from pathlib import Path

import yaml

CONFIG_DIR = Path(__file__).parent / "configs"


class ConfigError(ValueError):
    """A config file or override is invalid."""


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
    path = Path(path).resolve()
    if path in _seen:
        raise ConfigError(f"config {path}: circular _base_")
    with open(path) as f:
        data = yaml.safe_load(f) or {}
    if not isinstance(data, dict):
        raise ConfigError(f"config {path}: top level must be a mapping")
    bases = data.pop("_base_", None) or []
    if isinstance(bases, str):
        bases = [bases]
    cfg: dict = {}
    for b in bases:
        cfg = merge(cfg, load_file(path.parent / b, _seen + (path,)))
    return merge(cfg, data)


def apply_override(cfg: dict, item: str) -> None:
    """Apply one `dotted.key=value` override in place."""
    if "=" not in item:
        raise ConfigError(f"override {item!r}: expected key=value")
    key, _, raw = item.partition("=")
    parts = key.strip().split(".")
    node = cfg
    for i, part in enumerate(parts[:-1]):
        if not isinstance(node.get(part), dict):
            raise ConfigError(f"override {item!r}: {'.'.join(parts[:i + 1])} is not a section of the config")
        node = node[part]
    if parts[-1] not in node:
        raise ConfigError(f"override {item!r}: unknown key {key!r} (known here: {', '.join(sorted(node))})")
    try:
        node[parts[-1]] = yaml.safe_load(raw)
    except yaml.YAMLError as e:
        raise ConfigError(f"override {item!r}: value is not valid YAML: {e}") from None


def load_config(name_or_path: str | Path, overrides: list[str] | tuple = ()) -> dict:
    """The merged config of a shipped name or a YAML path, with overrides applied."""
    path = resolve_config_path(name_or_path)
    cfg = load_file(path)
    cfg.setdefault("name", path.stem)
    for item in overrides:
        apply_override(cfg, item)
    return cfg
