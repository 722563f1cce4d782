"""Plain data (a parsed YAML file, ``--set`` overrides, a checkpoint's config) -> schema dataclasses.

One generic walker checks every key and type against the section's type hints, suggests the
nearest valid key for a typo, resolves relative paths and reads class list files. Every problem
is a :class:`~dist_seg.errors.ConfigError` naming the dotted key and the fix.
"""

from __future__ import annotations

import dataclasses
import difflib
import math
import os
import types
import typing
from pathlib import Path
from typing import Any, Literal

from ..errors import ConfigError
from .classes import ClassSpec, read_class_file

# The field of a section with ``takes_extra_keys`` that collects its unknown keys.
EXTRA_FIELD = "extra"


def expand_user(value: str | os.PathLike, key: str) -> Path:
    """``Path(value).expanduser()``; an unknown ``~user`` is a ConfigError naming ``key``, not a RuntimeError."""
    try:
        return Path(value).expanduser()
    except RuntimeError as exc:
        raise ConfigError(f"{key}: cannot expand {str(value)!r} ({exc}); that user does not exist here: write "
                          "the path out in full") from exc


def type_name(tp: Any) -> str:
    """A type hint as a user reads it: ``'a' | 'b'``, ``int or null``, ``list of int``, ``path``."""
    if typing.get_origin(tp) is Literal:
        return " | ".join(repr(a) for a in typing.get_args(tp))
    if typing.get_origin(tp) in (typing.Union, types.UnionType):
        return " or ".join(type_name(a) for a in typing.get_args(tp))
    if tp is type(None):
        return "null"
    if tp is Path:
        return "path"
    origin = typing.get_origin(tp)
    if origin in (list, tuple):
        return f"list of {type_name(typing.get_args(tp)[0])}"
    if dataclasses.is_dataclass(tp):
        return "mapping"
    return getattr(tp, "__name__", str(tp))


class Builder:
    """Turns plain data into dataclasses, checking keys and types, resolving paths."""

    def __init__(self, base_dir: Path | None, source: str, overrides: dict[str, str] | None = None) -> None:
        self.base_dir = base_dir
        self.source = source
        self.overrides = overrides or {}  # dotted key -> the --set item that gave it
        # Defaults that a referenced file supplies for a sibling key (a class list file's
        # void_class): dotted key -> (value, file name). Used only where the key is absent.
        self.file_defaults: dict[str, tuple[Any, str]] = {}

    def fail(self, key: str, message: str) -> typing.NoReturn:
        item = self.overrides.get(key)
        if item is not None:
            raise ConfigError(f"--set {item}: {message} (on the command line; {self.source} was read)")
        raise ConfigError(f"{self.source}: {key}: {message}")

    def build(self, cls: type, raw: Any, prefix: str) -> Any:
        """An instance of the section ``cls`` from ``raw``, checked key by key, then validated."""
        if raw is None:
            raw = {}
        if not isinstance(raw, dict):
            self.fail(prefix or "top level", f"expected a mapping of keys, got {raw!r}")
        hints = typing.get_type_hints(cls)
        takes_extra = hasattr(cls, "takes_extra_keys")
        fields = {f.name: f for f in dataclasses.fields(cls) if not (takes_extra and f.name == EXTRA_FIELD)}
        kwargs: dict[str, Any] = {}
        extra: dict[str, Any] = {}
        keep_unknown = takes_extra and cls.takes_extra_keys(raw)
        for key, value in raw.items():
            dotted = _join(prefix, str(key))
            if key not in fields:
                if keep_unknown:
                    extra[key] = value
                    continue
                close = difflib.get_close_matches(str(key), list(fields), n=1, cutoff=0.5)
                hint = f"did you mean {_join(prefix, close[0])}?" if close else (
                    f"valid keys here: {', '.join(fields)}")
                self.fail(dotted, f"unknown key; {hint}")
            kwargs[key] = self.convert(hints[key], value, dotted)
        for name, f in fields.items():
            dotted = _join(prefix, name)
            if name in kwargs:
                continue
            if dotted in self.file_defaults:
                value, origin = self.file_defaults[dotted]
                kwargs[name] = self.convert(hints[name], value, f"{dotted} (from {origin})")
            elif f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING:
                self.fail(dotted, f"required key is missing; {self.missing_fix(hints[name], dotted)}")
        if takes_extra:
            kwargs[EXTRA_FIELD] = extra
        section = cls(**kwargs)
        if hasattr(section, "validate"):
            section.validate(lambda key, message: self.fail(_join(prefix, key), message))
        return section

    def missing_fix(self, tp: Any, dotted: str) -> str:
        """How to supply a missing key; for a missing section, the keys it cannot do without."""
        if not dataclasses.is_dataclass(tp):
            return f"add it to the config file or pass --set {dotted}={_placeholder(tp)}"
        hints = typing.get_type_hints(tp)
        required = [f.name for f in dataclasses.fields(tp)
                    if f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING]
        if not required:
            return f"add a {dotted}: section to the config file"
        keys = ", ".join(f"{dotted}.{n}" for n in required)
        first = required[0]
        return (f"add a {dotted}: section with {keys} to the config file, or pass "
                f"--set {dotted}.{first}={_placeholder(hints[first])}")

    def convert(self, tp: Any, value: Any, key: str) -> Any:
        origin = typing.get_origin(tp)
        if origin in (typing.Union, types.UnionType):
            members = list(typing.get_args(tp))
            if value is None:
                if type(None) in members:
                    return None
                self.fail(key, f"must not be null; expected {type_name(tp)}")
            errors = []
            for member in members:
                if member is type(None):
                    continue
                try:
                    return self.convert(member, value, key)
                except ConfigError as exc:
                    errors.append(exc)
            self.fail(key, f"expected {type_name(tp)}, got {value!r}")
        if tp is ClassSpec:
            return self.class_spec(value, key)
        if origin is list and typing.get_args(tp)[0] is ClassSpec and isinstance(value, (str, Path)):
            return self.class_file(value, key)
        if dataclasses.is_dataclass(tp):
            return self.build(tp, value, key)
        if origin is Literal:
            choices = typing.get_args(tp)
            if isinstance(value, str) and value in choices:
                return value
            close = difflib.get_close_matches(str(value), [str(c) for c in choices], n=1)
            hint = f" (did you mean {close[0]!r}?)" if close else ""
            self.fail(key, f"must be one of {', '.join(repr(c) for c in choices)}, got {value!r}{hint}")
        if origin is list:
            if not isinstance(value, list):
                self.fail(key, f"expected a list, got {value!r}")
            (item_tp,) = typing.get_args(tp)
            return [self.convert(item_tp, v, f"{key}[{i}]") for i, v in enumerate(value)]
        if origin is tuple:
            item_types = typing.get_args(tp)
            if not isinstance(value, (list, tuple)) or len(value) != len(item_types):
                self.fail(key, f"expected a list of {len(item_types)} values, got {value!r}")
            return tuple(self.convert(t, v, f"{key}[{i}]") for i, (t, v) in enumerate(zip(item_types, value, strict=False)))
        if origin is dict:
            if not isinstance(value, dict):
                self.fail(key, f"expected a mapping, got {value!r}")
            return dict(value)
        if tp is bool:
            if isinstance(value, bool):
                return value
            self.fail(key, f"expected true or false, got {value!r}")
        if tp is int:
            if isinstance(value, int) and not isinstance(value, bool):
                return value
            self.fail(key, f"expected an integer, got {value!r}")
        if tp is float:
            # YAML 1.1 reads "1e-4" (no dot) as a string; accept what float() accepts.
            if isinstance(value, (int, float, str)) and not isinstance(value, bool):
                try:
                    value = float(value)
                except ValueError:
                    pass
            # NaN compares false with every bound, so it would slip through each check after this;
            # infinity passes "> 0" and then poisons every step.
            if isinstance(value, float) and math.isfinite(value):
                return value
            self.fail(key, f"expected a number (finite, not nan or inf), got {value!r}")
        if tp is str:
            if isinstance(value, str):
                return value
            self.fail(key, f"expected a string, got {value!r}")
        if tp is Path:
            if not isinstance(value, (str, Path)) or not str(value):
                self.fail(key, f"expected a path, got {value!r}")
            return self.path(value, key)
        if tp is Any:
            return value
        raise TypeError(f"config field {key} has unsupported type {tp!r}")  # a bug in this module

    def path(self, value: str | Path, key: str) -> Path:
        p = expand_user(value, f"{self.source}: {key}")
        if p.is_absolute():
            return p
        if any(key == k or key.startswith(k + ".") for k in self.overrides):
            return Path(os.path.abspath(p))  # typed in a shell (--set): relative to where it was typed
        if self.base_dir is not None:
            # normpath, not resolve(): drop "configs/../" without following symlinks.
            p = Path(os.path.normpath(self.base_dir / p))
        return p

    def class_spec(self, value: Any, key: str) -> ClassSpec:
        if not isinstance(value, dict) or set(value) != {"name", "color"}:
            self.fail(key, f"each class needs exactly name and color, e.g. {{name: road, color: [128, 64, 128]}}; got {value!r}")
        name = self.convert(str, value["name"], f"{key}.name")
        color = self.convert(tuple[int, int, int], value["color"], f"{key}.color")
        if any(not 0 <= c <= 255 for c in color):
            self.fail(f"{key}.color", f"RGB components must be in 0..255, got {list(color)}")
        return ClassSpec(name, color)

    def class_file(self, value: str | Path, key: str) -> list[ClassSpec]:
        path = self.path(value, key)
        if not path.is_file():
            self.fail(key, f"class list file {path} does not exist; give a list of {{name, color}} or a YAML/JSON file path")
        try:
            content = read_class_file(path)
        except ValueError as exc:
            self.fail(key, str(exc))
        if content.has_void:
            self.file_defaults[key.rpartition(".")[0] + ".void_class"] = (content.void_class, path.name)
        return [self.class_spec(v, f"{key}[{i}] ({path.name})") for i, v in enumerate(content.entries)]


def _join(prefix: str, key: str) -> str:
    return ".".join(part for part in (prefix, key) if part)


def _placeholder(tp: Any) -> str:
    return "PATH" if tp is Path else "..."
