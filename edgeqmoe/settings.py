"""Typed, frozen settings built from YAML, with errors that name the file and key.

Settings classes are frozen dataclasses; each field declares its type (and, in its
``metadata``, its unit and allowed values). ``build(cls, data, source)`` checks every
key: unknown keys, wrong types and values outside ``choices`` or ``range`` raise
``SettingsError`` with the file, the dotted key and what is allowed.
"""

from __future__ import annotations

import dataclasses
import typing
from pathlib import Path
from typing import Any, Dict, Tuple, Type, TypeVar, Union, get_args, get_origin

import yaml

T = TypeVar("T")


class SettingsError(Exception):
    def __init__(self, source: str, key: str, problem: str):
        self.source, self.key, self.problem = source, key, problem
        where = f"{source}: " if source else ""
        super().__init__(f"{where}{key}: {problem}" if key else f"{where}{problem}")


def field(default=dataclasses.MISSING, *, unit: str = "", choices: Tuple = (), range: Tuple = (), doc: str = "",
          default_factory=dataclasses.MISSING):
    meta = {"unit": unit, "choices": tuple(choices), "range": tuple(range), "doc": doc}
    if default_factory is not dataclasses.MISSING:
        return dataclasses.field(default_factory=default_factory, metadata=meta)
    return dataclasses.field(default=default, metadata=meta)


def _type_name(tp) -> str:
    """The type as a YAML user reads it: a number, an integer, a string, null..."""
    origin = get_origin(tp)
    if origin is Union:
        return " or ".join(_type_name(a) for a in get_args(tp))
    names = {float: "a number", int: "an integer", str: "a string", bool: "true or false", type(None): "null"}
    if tp in names:
        return names[tp]
    if origin in (list, tuple):
        args = get_args(tp)
        return f"list of {_type_name(args[0])}" if args else "list"
    if origin is dict:
        return "mapping"
    return getattr(tp, "__name__", str(tp))


def _convert(tp, value, source: str, key: str):
    origin = get_origin(tp)
    if tp is Any:
        return value
    if origin is Union:
        args = get_args(tp)
        if value is None and type(None) in args:
            return None
        for a in args:
            if a is type(None):
                continue
            try:
                return _convert(a, value, source, key)
            except SettingsError:
                pass
        raise SettingsError(source, key, f"expected {_type_name(tp)}, got {value!r}")
    if origin in (list, tuple):
        if not isinstance(value, (list, tuple)):
            raise SettingsError(source, key, f"expected a list, got {value!r}")
        (inner,) = get_args(tp)[:1] or (Any,)
        items = [_convert(inner, v, source, f"{key}[{i}]") for i, v in enumerate(value)]
        return tuple(items)
    if origin is dict:
        if not isinstance(value, dict):
            raise SettingsError(source, key, f"expected a mapping, got {value!r}")
        kt, vt = get_args(tp) or (Any, Any)
        return {_convert(kt, k, source, f"{key}.{k}"): _convert(vt, v, source, f"{key}.{k}") for k, v in value.items()}
    if dataclasses.is_dataclass(tp):
        return build(tp, value, source, key)
    if tp is bool:
        if isinstance(value, bool):
            return value
        raise SettingsError(source, key, f"expected true or false, got {value!r}")
    if tp is int:
        if isinstance(value, int) and not isinstance(value, bool):
            return value
        raise SettingsError(source, key, f"expected an integer, got {value!r}")
    if tp is float:
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return float(value)
        raise SettingsError(source, key, f"expected a number, got {value!r}")
    if tp is str:
        if isinstance(value, str):
            return value
        raise SettingsError(source, key, f"expected a string, got {value!r}")
    return value


def build(cls: Type[T], data: Any, source: str = "", prefix: str = "") -> T:
    """``cls`` from a mapping, validating every key (see module doc)."""
    if data is None:
        data = {}
    if not isinstance(data, dict):
        raise SettingsError(source, prefix, f"expected a mapping of settings, got {data!r}")
    hints = typing.get_type_hints(cls)
    fields = {f.name: f for f in dataclasses.fields(cls)}
    unknown = sorted(set(data) - set(fields))
    if unknown:
        k = f"{prefix}.{unknown[0]}" if prefix else str(unknown[0])
        public = sorted(n for n in fields if not n.startswith("_"))  # _names are set by the loader
        raise SettingsError(source, k, f"unknown setting; allowed here: {', '.join(public)}")
    kwargs = {}
    for name, f in fields.items():
        key = f"{prefix}.{name}" if prefix else name
        if name not in data:
            if f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING:
                raise SettingsError(source, key, "required setting is missing")
            continue
        value = _convert(hints[name], data[name], source, key)
        meta = f.metadata or {}
        if meta.get("choices") and value not in meta["choices"]:
            raise SettingsError(source, key, f"{value!r} is not allowed; choose one of "
                                             f"{', '.join(map(str, meta['choices']))}")
        if meta.get("range") and value is not None:
            lo, hi = meta["range"]
            if (lo is not None and value < lo) or (hi is not None and value > hi):
                unit = f" {meta['unit']}" if meta.get("unit") else ""
                raise SettingsError(source, key, f"{value!r} is outside {lo}..{hi}{unit}")
        kwargs[name] = value
    try:
        obj = cls(**kwargs)
    except (TypeError, ValueError) as e:
        raise SettingsError(source, prefix, str(e)) from None
    check = getattr(obj, "validate", None)
    if check:
        problem = check()
        if problem:
            key, msg = problem
            raise SettingsError(source, f"{prefix}.{key}" if prefix else key, msg)
    return obj


def load_yaml(path) -> Dict[str, Any]:
    p = Path(path)
    try:
        text = p.read_text()
    except FileNotFoundError:
        raise SettingsError(str(p), "", "file not found") from None
    except OSError as e:
        raise SettingsError(str(p), "", f"cannot read ({e.strerror})") from None
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None)
        where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark else ""
        raise SettingsError(str(p), "", f"invalid YAML{where}: {getattr(e, 'problem', e)}") from None
    return data if data is not None else {}


def to_dict(obj) -> Dict[str, Any]:
    """Plain data (lists, dicts) of a settings object, for YAML or JSON."""
    def conv(v):
        if dataclasses.is_dataclass(v):
            return {f.name: conv(getattr(v, f.name)) for f in dataclasses.fields(v)}
        if isinstance(v, (list, tuple)):
            return [conv(x) for x in v]
        if isinstance(v, dict):
            return {k: conv(x) for k, x in v.items()}
        return v

    return conv(obj)
