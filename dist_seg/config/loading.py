"""Loading a config: the YAML file, ``--set`` overrides, and the round trip to plain data.

The YAML file is parsed safely into plain data (a key given twice is refused), overrides are
applied to that data, and :mod:`.builder` turns it into the :mod:`.schema` dataclasses.
"""

from __future__ import annotations

import dataclasses
import os
import typing
from pathlib import Path
from typing import Any

import yaml

from .. import atomic
from ..errors import ConfigError
from .builder import EXTRA_FIELD, Builder, expand_user
from .schema import Config


def load_config(path: str | Path, overrides: typing.Sequence[str] = ()) -> Config:
    """Read a YAML config, apply ``KEY=VALUE`` overrides, validate, resolve relative paths.

    Relative paths in the file resolve from the folder of the file as named (a symlinked
    config's own folder is not looked up: ``abspath``, not ``resolve``); relative paths given
    as overrides resolve from the current directory, like every other path on a command line.
    """
    path = expand_user(path, "the config file path")
    if not path.is_file():
        raise ConfigError(f"config file {path} does not exist: pass the path to a YAML file such as configs/demo.yaml")
    try:
        raw = yaml.load(path.read_text(encoding="utf-8"), Loader=_UniqueKeyLoader)
    except UnicodeDecodeError as exc:
        raise ConfigError(f"{path} is not UTF-8 text (byte {exc.start} cannot be decoded): save it as UTF-8") from exc
    except yaml.YAMLError as exc:
        raise ConfigError(f"{path} is not valid YAML: {exc}") from exc
    if raw is None:
        raw = {}
    if not isinstance(raw, dict):
        raise ConfigError(f"{path} must hold a mapping with dataset:, training:, ... sections, not {type(raw).__name__}")
    parsed = parse_overrides(overrides)
    apply_overrides(raw, parsed)
    # A problem with an overridden key is on the command line, not in the file: name the --set item.
    given = {key: item.strip() for (key, _), item in zip(parsed, overrides, strict=True)}
    # The folder of the file as named: a symlinked config's target folder is not looked up (abspath, not resolve).
    return Builder(base_dir=Path(os.path.abspath(path)).parent, source=str(path), overrides=given).build(Config, raw,
                                                                                                        "")


class _UniqueKeyLoader(yaml.SafeLoader):
    """SafeLoader that refuses a key given twice in one mapping (plain YAML keeps the last one silently).

    Keys merged in with ``<<: *anchor`` are not duplicates: a key written next to the merge
    overrides the merged one, as YAML defines.
    """

    def construct_mapping(self, node: yaml.MappingNode, deep: bool = False) -> dict:
        seen: dict[Any, int] = {}
        for key_node, _ in node.value:
            if key_node.tag == "tag:yaml.org,2002:merge":
                continue
            key = self.construct_object(key_node, deep=True)
            line = key_node.start_mark.line + 1
            if not isinstance(key, typing.Hashable):
                raise ConfigError(f"{key_node.start_mark.name}, line {line}: the key {key!r} is a "
                                  f"{type(key).__name__}; config keys are plain names such as batch_size")
            if key in seen:
                raise ConfigError(f"{key_node.start_mark.name}: key {key!r} appears twice in the same section "
                                  f"(lines {seen[key]} and {line}); YAML would silently keep only the last one: "
                                  "merge them into one")
            seen[key] = line
        return super().construct_mapping(node, deep=deep)


def parse_overrides(items: typing.Iterable[str]) -> list[tuple[str, Any]]:
    """Parse ``a.b=value`` strings; values are YAML scalars (``2`` -> int, ``[1, 2]`` -> list)."""
    parsed = []
    for item in items:
        key, sep, value = item.partition("=")
        if not sep or not key.strip():
            raise ConfigError(f"--set {item!r}: expected KEY=VALUE, e.g. --set training.epochs=2")
        try:
            parsed.append((key.strip(), yaml.safe_load(value)))
        except yaml.YAMLError as exc:
            raise ConfigError(f"--set {item!r}: value is not a YAML scalar: {exc}") from exc
    return parsed


def apply_overrides(raw: dict, overrides: typing.Iterable[tuple[str, Any]]) -> None:
    """Set dotted keys in the raw config mapping, creating sections as needed."""
    for key, value in overrides:
        parts = key.split(".")
        node = raw
        for i, part in enumerate(parts[:-1]):
            child = node.setdefault(part, {})
            if not isinstance(child, dict):
                raise ConfigError(f"--set {key}: {'.'.join(parts[: i + 1])} is not a section")
            node = child
        node[parts[-1]] = value


def config_from_dict(raw: dict, base_dir: Path | None = None, source: str = "config") -> Config:
    """Build and validate a :class:`Config` from plain data (a parsed YAML file or a checkpoint)."""
    return Builder(base_dir=base_dir, source=source).build(Config, raw, "")


def config_to_dict(cfg: Config) -> dict:
    """Plain, YAML/JSON-safe data (paths as strings, tuples as lists) that round-trips."""

    def convert(value: Any) -> Any:
        if dataclasses.is_dataclass(value):
            out = {f.name: convert(getattr(value, f.name)) for f in dataclasses.fields(value) if f.name != EXTRA_FIELD}
            if hasattr(value, "takes_extra_keys"):
                out.update(convert(getattr(value, EXTRA_FIELD)))
            return out
        if isinstance(value, Path):
            return str(value)
        if isinstance(value, (list, tuple)):
            return [convert(v) for v in value]
        if isinstance(value, dict):
            return {k: convert(v) for k, v in value.items()}
        return value

    return convert(cfg)


def save_config(cfg: Config, path: str | Path) -> None:
    """Write the resolved config as YAML, atomically."""
    atomic.write_text(path, yaml.safe_dump(config_to_dict(cfg), sort_keys=False))
