"""Dataclass configs from TOML or YAML files, with ``--set key=value`` overrides, validated in one place.

A config dataclass may define ``validate(self)`` (raise UserError via ``check_choice``/``check_range``);
nested dataclass fields are addressed with dots: ``--set train.lr=3e-4``.
"""
from __future__ import annotations

import dataclasses
import json
import math
import typing
from pathlib import Path
from typing import Any, TypeVar

from .errors import UserError, check_choice, suggest

T = TypeVar("T")
__all__ = ["load_config", "apply_overrides", "config_to_dict", "config_from_dict", "check_choice", "check_range"]


def check_range(param: str, value, low=None, high=None) -> None:
    if (low is not None and value < low) or (high is not None and value > high):
        bounds = f">= {low}" if high is None else (f"<= {high}" if low is None else f"in [{low}, {high}]")
        raise UserError(f"{param} must be {bounds}; got {value!r}")


def _read_file(path: Path) -> dict:
    from .inputs import read_text

    text = read_text(path, 16 * 2**20, "config file")  # regular file, capped, strict UTF-8 naming the line
    try:
        if path.suffix.lower() == ".toml":
            import tomllib

            return tomllib.loads(text)
        if path.suffix.lower() in (".yaml", ".yml"):
            import yaml

            data = yaml.safe_load(text) or {}
            if not isinstance(data, dict):
                raise UserError(f"{path}: a config must be a mapping of keys to values")
            return data
        if path.suffix.lower() == ".json":
            return json.loads(text)
    except UserError:
        raise
    except RecursionError:
        raise UserError(f"{path}: config is nested too deeply to be read") from None
    except Exception as e:
        raise UserError(f"{path}: cannot parse config ({(str(e).splitlines() or [type(e).__name__])[0][:200]})") from e
    raise UserError(f"{path}: config must be .toml, .yaml/.yml or .json; got {path.suffix or 'no extension'!r}")


def _coerce(value: Any, tp, name: str):
    origin = typing.get_origin(tp)
    args = typing.get_args(tp)
    if origin is typing.Union or str(origin) == "types.UnionType":
        if value is None or (isinstance(value, str) and value.lower() in ("none", "null")):
            if type(None) in args:
                return None
        for a in args:
            if a is type(None):
                continue
            try:
                return _coerce(value, a, name)
            except UserError:
                continue
        raise UserError(f"{name}: cannot use {value!r} as {tp}")
    if origin in (list, tuple):
        if isinstance(value, str):
            value = [v.strip() for v in value.split(",") if v.strip()] if value else []
        inner = args[0] if args else str
        items = [_coerce(v, inner, name) for v in value]
        return tuple(items) if origin is tuple else items
    if tp is bool:
        if isinstance(value, bool):
            return value
        if str(value).lower() in ("1", "true", "yes", "on"):
            return True
        if str(value).lower() in ("0", "false", "no", "off"):
            return False
        raise UserError(f"{name} must be true or false; got {value!r}")
    if tp in (int, float):
        try:
            if tp is int and isinstance(value, float) and not value.is_integer():
                raise ValueError
            if isinstance(value, bool):
                raise ValueError
            number = tp(float(value)) if tp is int else tp(value)
        except (TypeError, ValueError, OverflowError):
            raise UserError(f"{name} must be {'an integer' if tp is int else 'a number'}; got {value!r}") from None
        if tp is float and not math.isfinite(number):
            raise UserError(f"{name} must be a finite number; got {value!r}")
        return number
    if tp is str:
        return str(value)
    return value


def config_from_dict(cls: type[T], data: dict, prefix: str = "") -> T:
    """Build a (nested) dataclass from a dict; unknown keys are errors with suggestions."""
    if not isinstance(data, dict):
        raise UserError(f"{prefix or 'config'} must be a mapping; got {data!r}")
    hints = typing.get_type_hints(cls)
    fields = {f.name: f for f in dataclasses.fields(cls)}
    kwargs = {}
    for key, value in data.items():
        if key not in fields:
            raise UserError(f"unknown config key {prefix + key!r}{suggest(key, fields)}; valid keys: {', '.join(fields)}")
        tp = hints[key]
        if dataclasses.is_dataclass(tp):
            kwargs[key] = config_from_dict(tp, value, prefix + key + ".")
        else:
            kwargs[key] = _coerce(value, tp, prefix + key)
    obj = cls(**kwargs)
    return obj


def apply_overrides(data: dict, overrides: list[str] | None) -> dict:
    """Apply 'a.b=value' strings to a nested dict (values parsed as TOML scalars when possible)."""
    data = json.loads(json.dumps(data))  # deep copy
    for item in overrides or []:
        if "=" not in item:
            raise UserError(f"--set expects key=value; got {item!r}")
        key, raw = item.split("=", 1)
        key = key.strip()
        try:
            import tomllib

            value = tomllib.loads(f"v = {raw}")["v"]
        except Exception:
            value = raw
        node = data
        parts = key.split(".")
        for p in parts[:-1]:
            node = node.setdefault(p, {})
            if not isinstance(node, dict):
                raise UserError(f"--set {key}: {p!r} is not a section")
        node[parts[-1]] = value
    return data


def config_to_dict(cfg) -> dict:
    return dataclasses.asdict(cfg)


# Names of size-like fields (a layer width, a channel count, a grid): these must be >= 1 in every config, so a
# negative or zero size is a clear error instead of a tensor-shape traceback deep in model building.
_SIZE_WORDS = ("dim", "dims", "width", "hidden", "channels", "grid", "crop", "heads", "layers", "stride",
               "batch_size", "epochs")


def _is_size_field(name: str) -> bool:
    return name in _SIZE_WORDS or any(name.endswith("_" + w) for w in _SIZE_WORDS)


def check_generic(cfg, prefix: str = "") -> None:
    """Rules that hold for every config: numbers are finite, sizes are positive integers."""
    for f in dataclasses.fields(cfg):
        v = getattr(cfg, f.name)
        name = prefix + f.name
        values = v if isinstance(v, (list, tuple)) else [v]
        for x in values:
            if isinstance(x, float) and not math.isfinite(x):
                raise UserError(f"{name} must be a finite number; got {v!r}")
            if _is_size_field(f.name) and isinstance(x, (int, float)) and not isinstance(x, bool):
                low = 0 if f.default == 0 else 1  # a size whose default is 0 uses 0 for "off"
                if x < low:
                    raise UserError(f"{name} must be >= {low} (a size); got {v!r}")


def validate(cfg, _prefix: str = "") -> None:
    """Call ``validate()`` on the config and every nested dataclass that defines it, after the generic rules
    (finite numbers, positive sizes; messages name the dotted key, e.g. ``model.encoder_dim``)."""
    for f in dataclasses.fields(cfg):
        v = getattr(cfg, f.name)
        if dataclasses.is_dataclass(v):
            validate(v, f"{_prefix}{f.name}.")
    check_generic(cfg, _prefix)
    if hasattr(cfg, "validate"):
        cfg.validate()


def load_config(cls: type[T], path: str | Path | None = None, overrides: list[str] | None = None,
                base: T | None = None) -> T:
    """Defaults (or ``base``) <- file <- overrides, then validation."""
    data = config_to_dict(base) if base is not None else config_to_dict(cls())
    if path:
        data = _merge(data, _read_file(Path(path)))
    data = apply_overrides(data, overrides)
    cfg = config_from_dict(cls, data)
    validate(cfg)
    return cfg


def _merge(a: dict, b: dict) -> dict:
    out = dict(a)
    for k, v in b.items():
        out[k] = _merge(out[k], v) if isinstance(v, dict) and isinstance(out.get(k), dict) else v
    return out
