"""Typed configuration sections loaded from TOML and validated at start-up.

A service reads its whole config before it touches hardware or the network; a bad value stops it
with a message naming the field (``[broker].port: expected int, got 'abc'``) instead of failing
later at 7 a.m. in front of the first applicant. Sections are plain dataclasses: defaults live in
the dataclass, checks in ``__post_init__`` (raising ConfigError with the field name).
"""

from __future__ import annotations

import dataclasses
import tomllib
import types
import typing
from pathlib import Path
from typing import Any, TypeVar

T = TypeVar("T")


class ConfigError(ValueError):
    """A configuration value that is missing or wrong; the message names the field."""


def _type_name(tp: Any) -> str:
    return getattr(tp, "__name__", str(tp))


def _coerce(where: str, tp: Any, value: Any) -> Any:
    """Check ``value`` against the annotation ``tp``, allowing lossless int → float."""
    origin = typing.get_origin(tp)
    if origin in (typing.Union, types.UnionType):
        options = typing.get_args(tp)
        if value is None and type(None) in options:
            return None
        errors = []
        for option in options:
            if option is type(None):
                continue
            try:
                return _coerce(where, option, value)
            except ConfigError as exc:
                errors.append(str(exc))
        raise ConfigError(errors[0] if errors else f"{where}: invalid value {value!r}")
    if dataclasses.is_dataclass(tp):
        if not isinstance(value, dict):
            raise ConfigError(f"{where}: expected a table, got {type(value).__name__}")
        return load_section(tp, value, where)
    if origin is list:
        (item_tp,) = typing.get_args(tp)
        if not isinstance(value, list):
            raise ConfigError(f"{where}: expected a list, got {type(value).__name__}")
        return [_coerce(f"{where}[{i}]", item_tp, v) for i, v in enumerate(value)]
    if tp is Path:
        if not isinstance(value, str | Path):
            raise ConfigError(f"{where}: expected a path string, got {type(value).__name__}")
        return Path(value)
    if tp is float and isinstance(value, int) and not isinstance(value, bool):
        return float(value)
    if tp in (int, float, str, bool):
        if isinstance(value, bool) and tp is not bool:
            raise ConfigError(f"{where}: expected {_type_name(tp)}, got bool")
        if not isinstance(value, tp):
            raise ConfigError(f"{where}: expected {_type_name(tp)}, got {value!r}")
        return value
    return value


def load_section(cls: type[T], data: dict[str, Any], where: str = "") -> T:
    """Build dataclass ``cls`` from a TOML table, refusing unknown keys and wrong types."""
    hints = typing.get_type_hints(cls)
    fields = {f.name: f for f in dataclasses.fields(cls)}  # type: ignore[arg-type]
    unknown = sorted(set(data) - set(fields))
    if unknown:
        raise ConfigError(f"{where or '[top]'}: unknown key(s) {', '.join(unknown)} "
                          f"(known: {', '.join(fields)})")
    kwargs: dict[str, Any] = {}
    for name, f in fields.items():
        key = f"{where}.{name}" if where else name
        if name in data:
            kwargs[name] = _coerce(key, hints[name], data[name])
        elif f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING:
            raise ConfigError(f"{key}: missing (required)")
    try:
        return cls(**kwargs)
    except ConfigError as exc:
        # __post_init__ names the field relative to the section; add the section path.
        msg = str(exc)
        prefixed = f"{where}.{msg}" if where and not msg.startswith(where) else msg
        raise ConfigError(prefixed) from None


def read_toml(path: Path) -> dict[str, Any]:
    """Read a TOML file, turning I/O and syntax problems into ConfigError with the file name."""
    try:
        with open(path, "rb") as fh:
            return tomllib.load(fh)
    except FileNotFoundError:
        raise ConfigError(f"config file {path} does not exist") from None
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"config file {path}: {exc}") from None


def require(condition: bool, field: str, message: str) -> None:
    """Raise ConfigError for ``field`` unless ``condition`` holds (used in ``__post_init__``)."""
    if not condition:
        raise ConfigError(f"{field}: {message}")


@dataclasses.dataclass
class BrokerConfig:
    """Where the MQTT broker is and how to talk to it."""

    host: str = "127.0.0.1"
    port: int = 1883
    #: 5 for MQTT 5 (Mosquitto); 3 for MQTT 3.1.1 (the embedded demo broker speaks only that).
    protocol: int = 5
    keepalive_s: int = 30
    username: str | None = None
    password: str | None = None

    def __post_init__(self) -> None:
        require(bool(self.host), "host", "must not be empty")
        require(0 < self.port < 65536, "port", f"must be 1..65535, got {self.port}")
        require(self.protocol in (3, 5), "protocol", f"must be 3 or 5, got {self.protocol}")
        require(5 <= self.keepalive_s <= 600, "keepalive_s", "must be 5..600 seconds")
