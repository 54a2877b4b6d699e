"""Typed, frozen settings built from YAML, with errors that name the file and key.

Settings classes are frozen dataclasses; each field declares its type (and, in its
``metadata``, its unit and allowed values). ``build(cls, data, source)`` checks every
key: unknown keys, wrong types and values outside ``choices`` or ``range`` raise
``SettingsError`` with the file, the dotted key and what is allowed.
"""

from __future__ import annotations

import dataclasses
import errno
import math
import os
import stat
import typing
from pathlib import Path
from typing import Any, Dict, Tuple, Type, TypeVar, Union, get_args, get_origin

import yaml

T = TypeVar("T")


#: a settings file larger than this is refused (bytes)
MAX_FILE_BYTES = 256 * 1024
#: YAML aliases (*name) allowed in one file: a few are handy, thousands are a bomb
MAX_ALIASES = 50
#: values in a file once aliases are expanded (a chain of aliases can multiply them)
MAX_VALUES = 20_000
#: nesting of mappings and lists allowed in one file
MAX_DEPTH = 32


class SettingsError(Exception):
    """Bad settings: ``problems`` lists every (key, problem) found in the file."""

    def __init__(self, source: str, key: str, problem: str, problems=None):
        self.source, self.key, self.problem = source, key, problem
        self.problems = list(problems) if problems else [(key, problem)]
        where = f"{source}: " if source else ""
        lines = [f"{k}: {m}" if k else m for k, m in self.problems]
        if len(lines) == 1:
            super().__init__(where + lines[0])
        else:
            super().__init__(f"{where}{len(lines)} problems:\n  " + "\n  ".join(lines))


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
        return tuple(_each(((f"{key}[{i}]", inner, v) for i, v in enumerate(value)), source))
    if origin is dict:
        if not isinstance(value, dict):
            raise SettingsError(source, key, f"expected a mapping, got {value!r}")
        kt, vt = get_args(tp) or (Any, Any)
        keys = _each(((f"{key}.{k}", kt, k) for k in value), source)
        return dict(zip(keys, _each(((f"{key}.{k}", vt, v) for k, v in value.items()), source)))
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
            if not math.isfinite(value):
                raise SettingsError(source, key, f"{value!r} is not a finite number")
            return float(value)
        raise SettingsError(source, key, f"expected a number, got {value!r}")
    if tp is str:
        if isinstance(value, str):
            return value
        raise SettingsError(source, key, f"expected a string, got {value!r}")
    return value


def _each(items, source: str) -> list:
    """Convert every (key, type, value); all problems of all items in one SettingsError."""
    out, problems = [], []
    for key, tp, value in items:
        try:
            out.append(_convert(tp, value, source, key))
        except SettingsError as e:
            problems.extend(e.problems)
    if problems:
        raise SettingsError(source, problems[0][0], problems[0][1], problems)
    return out


def build(cls: Type[T], data: Any, source: str = "", prefix: str = "") -> T:
    """``cls`` from a mapping, validating every key (see module doc); every problem
    of the mapping is reported at once in one ``SettingsError``."""
    problems: list = []
    obj = _build(cls, data, source, prefix, problems)
    if problems:
        raise SettingsError(source, problems[0][0], problems[0][1], problems)
    return obj


def _build(cls, data, source: str, prefix: str, problems: list):
    if data is None:
        data = {}
    if not isinstance(data, dict):
        problems.append((prefix, f"expected a mapping of settings, got {_short(data)}"))
        return None
    hints = typing.get_type_hints(cls)
    fields = {f.name: f for f in dataclasses.fields(cls)}
    public = sorted(n for n in fields if not n.startswith("_"))  # _names are set by the loader
    for k in sorted(set(data) - set(fields), key=str):
        problems.append((f"{prefix}.{k}" if prefix else str(k), f"unknown setting; allowed here: {', '.join(public)}"))
    kwargs = {}
    n_before = len(problems)
    for name, f in fields.items():
        key = f"{prefix}.{name}" if prefix else name
        if name not in data:
            if f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING:
                problems.append((key, "required setting is missing"))
            continue
        try:
            if dataclasses.is_dataclass(hints[name]):
                value = _build(hints[name], data[name], source, key, problems)
            else:
                value = _convert(hints[name], data[name], source, key)
        except SettingsError as e:
            problems.extend(e.problems)
            continue
        meta = f.metadata or {}
        problem = _check_value(value, meta)
        if problem:
            problems.append((key, problem))
            continue
        kwargs[name] = value
    if len(problems) > n_before:
        return None
    try:
        obj = cls(**kwargs)
    except (TypeError, ValueError) as e:
        problems.append((prefix, str(e)))
        return None
    check = getattr(obj, "validate", None)
    if check:
        for key, msg in _problems_of(check()):
            problems.append((f"{prefix}.{key}" if prefix else key, msg))
    return obj


def _problems_of(result):
    """``validate()`` may return None, one (key, problem) or a list of them."""
    if not result:
        return []
    return [result] if isinstance(result[0], str) else list(result)


def _check_value(value, meta) -> str:
    if meta.get("choices") and value not in meta["choices"]:
        return f"{value!r} is not allowed; choose one of {', '.join(map(str, meta['choices']))}"
    if meta.get("range") and value is not None:
        lo, hi = meta["range"]
        items = value if isinstance(value, (tuple, list)) else [value]
        unit = f" {meta['unit']}" if meta.get("unit") else ""
        for v in items:
            if isinstance(v, (int, float)) and ((lo is not None and v < lo) or (hi is not None and v > hi)):
                return f"{v!r} is outside {lo}..{hi}{unit}"
    return ""


def _short(v) -> str:
    r = repr(v)
    return r if len(r) <= 80 else r[:77] + "..."


class _GuardedLoader(yaml.SafeLoader):
    """yaml's safe loader with limits on aliases and nesting, so that a hostile or
    broken file fails with a message instead of eating memory or the stack."""

    def __init__(self, stream):
        super().__init__(stream)
        self._aliases = 0
        self._depth = 0

    def compose_node(self, parent, index):
        if self.check_event(yaml.AliasEvent):
            self._aliases += 1
            if self._aliases > MAX_ALIASES:
                raise yaml.YAMLError(f"more than {MAX_ALIASES} aliases (*name); write the values out")
        self._depth += 1
        try:
            if self._depth > MAX_DEPTH:
                raise yaml.YAMLError(f"nested deeper than {MAX_DEPTH} levels")
            return super().compose_node(parent, index)
        finally:
            self._depth -= 1


def read_small_file(path, limit: int = MAX_FILE_BYTES) -> bytes:
    """Up to ``limit`` + 1 bytes of a regular file the user named (a profile, a password
    file, a token). Opened without blocking and checked to be a regular file first, so
    a FIFO, a device or a socket there is an ``OSError`` that says so instead of a read
    that never returns (deaf to SIGTERM)."""
    fd = os.open(os.fspath(path), os.O_RDONLY | os.O_NONBLOCK | getattr(os, "O_NOCTTY", 0))
    try:
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode):
            kind = ("a FIFO" if stat.S_ISFIFO(st.st_mode) else "a folder" if stat.S_ISDIR(st.st_mode) else
                    "a device" if stat.S_ISCHR(st.st_mode) or stat.S_ISBLK(st.st_mode) else
                    "a socket" if stat.S_ISSOCK(st.st_mode) else "not a regular file")
            raise OSError(errno.EINVAL, f"it is {kind}, not a regular file")
        chunks, n = [], 0
        while n <= limit:
            b = os.read(fd, limit + 1 - n)
            if not b:
                break
            chunks.append(b)
            n += len(b)
        return b"".join(chunks)
    finally:
        os.close(fd)


def load_yaml(path) -> Dict[str, Any]:
    p = Path(path)
    try:
        raw = read_small_file(p, MAX_FILE_BYTES)
    except FileNotFoundError:
        raise SettingsError(str(p), "", "file not found") from None
    except OSError as e:
        raise SettingsError(str(p), "", f"cannot read ({e.strerror})") from None
    if len(raw) > MAX_FILE_BYTES:
        raise SettingsError(str(p), "", f"larger than {MAX_FILE_BYTES // 1024} KiB; a settings file is small")
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as e:
        line = raw[:e.start].count(b"\n") + 1
        raise SettingsError(str(p), "", f"not UTF-8 text (byte {e.start}, line {line}); save the file as "
                                        "UTF-8") from None
    try:
        data = yaml.load(text, Loader=_GuardedLoader)  # noqa: S506 - a SafeLoader subclass
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None)
        where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark else ""
        problem = getattr(e, "problem", None) or str(e)
        raise SettingsError(str(p), "", f"invalid YAML{where}: {_short(problem)}") from None
    except RecursionError:
        raise SettingsError(str(p), "", f"nested deeper than {MAX_DEPTH} levels") from None
    if _too_many_values(data):
        raise SettingsError(str(p), "", f"more than {MAX_VALUES} values once its aliases are expanded; write the "
                                        "values out")
    return data if data is not None else {}


def _too_many_values(data) -> bool:
    """Walk the loaded data as a reader would (aliases expanded), stopping at MAX_VALUES."""
    budget = MAX_VALUES
    stack = [data]
    while stack:
        v = stack.pop()
        budget -= 1
        if budget < 0:
            return True
        if isinstance(v, dict):
            stack.extend(v.keys())
            stack.extend(v.values())
        elif isinstance(v, (list, tuple)):
            stack.extend(v)
    return False


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
