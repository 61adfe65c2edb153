"""Typed configuration sections loaded from TOML and validated at start-up.

A service reads its whole config before it touches hardware or the network; a bad value stops it
with a message naming the field (``[broker].port: expected int, got 'abc'``) instead of failing
later at 7 a.m. in front of the first applicant. Sections are plain dataclasses: defaults live in
the dataclass, checks in ``__post_init__`` (raising ConfigError with the field name).
"""

from __future__ import annotations

import dataclasses
import os
import ssl
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


#: TLS versions below this are refused: 1.0 and 1.1 are broken, and every Mosquitto 2.x and
#: every OpenSSL on a Raspberry Pi speaks 1.2 and 1.3.
MIN_TLS_VERSION = ssl.TLSVersion.TLSv1_2


class _ServerNameContext(ssl.SSLContext):
    """An SSLContext that checks the broker's certificate against a fixed name.

    paho passes the host it connects to as ``server_hostname``; this context substitutes
    ``tls_server_name`` so a gate can reach the broker by an address that is not in the
    broker's certificate (an IP after a DHCP change, an SSH tunnel) and still insist on the
    name that is.
    """

    expected_name: str | None = None

    def wrap_socket(self, sock: Any, *args: Any, **kwargs: Any) -> ssl.SSLSocket:
        if self.expected_name:
            kwargs["server_hostname"] = self.expected_name
        return super().wrap_socket(sock, *args, **kwargs)


def _refuse_password() -> bytes:
    """Password callback for ``load_cert_chain``: never prompt (a service has no terminal)."""
    raise ssl.SSLError("the key is encrypted")


@dataclasses.dataclass
class BrokerConfig:
    """Where the MQTT broker is and how to talk to it.

    With ``ca_file`` set the connection is TLS (1.2 or newer): the broker must present a
    certificate signed by that CA and valid for ``host`` (or ``tls_server_name``). With
    ``cert_file`` and ``key_file`` as well, the client proves who it is with its own
    certificate (mutual TLS, what a centre's broker requires; see docs/security.md). Every file
    is checked when the config is loaded, so a missing or mismatched certificate stops the
    service at start with the field named, not at the first reconnect.
    """

    host: str = "127.0.0.1"
    port: int = 1883
    #: 5 for MQTT 5 (Mosquitto); 3 for MQTT 3.1.1 (the embedded demo broker speaks only that).
    protocol: int = 5
    keepalive_s: int = 30
    username: str | None = None
    password: str | None = None
    #: The centre CA certificate (``ca.pem``): the only issuer trusted for the broker. Turns TLS on.
    ca_file: Path | None = None
    #: This client's certificate (PEM), signed by the centre CA; CN = device id or ``gateway``.
    cert_file: Path | None = None
    #: The private key of ``cert_file`` (PEM, unencrypted, mode 0600, owned by the service user).
    key_file: Path | None = None
    #: The name to expect in the broker's certificate when it differs from ``host``.
    tls_server_name: str | None = None

    def __post_init__(self) -> None:
        require(bool(self.host), "host", "must not be empty")
        require(0 < self.port < 65536, "port", f"must be 1..65535, got {self.port}")
        require(self.protocol in (3, 5), "protocol", f"must be 3 or 5, got {self.protocol}")
        require(5 <= self.keepalive_s <= 600, "keepalive_s", "must be 5..600 seconds")
        for name in ("ca_file", "cert_file", "key_file"):
            value = getattr(self, name)
            if isinstance(value, str):  # constructed in code rather than from TOML
                setattr(self, name, Path(value))
        require((self.cert_file is None) == (self.key_file is None),
                "cert_file" if self.cert_file is None else "key_file",
                "set both cert_file and key_file (the client certificate and its key), or "
                "neither")
        require(self.ca_file is not None or self.cert_file is None, "ca_file",
                "required with cert_file: the centre CA certificate that signed the broker's")
        require(self.ca_file is not None or self.tls_server_name is None, "ca_file",
                "required with tls_server_name (the name is checked only over TLS)")
        require(self.tls_server_name is None or bool(self.tls_server_name.strip()),
                "tls_server_name", "must not be empty")
        for name in ("ca_file", "cert_file", "key_file"):
            path = getattr(self, name)
            if path is None:
                continue
            require(path.is_file(), name, f"{path} does not exist (or is not a file)")
            require(os.access(path, os.R_OK), name,
                    f"{path} is not readable by this user (uid {os.getuid()}); the service "
                    "user must own it (chown) or be able to read it")
        self.tls_context()  # parses every file now: a bad PEM or wrong key fails at start

    @property
    def tls(self) -> bool:
        """Whether the connection uses TLS (``ca_file`` is set)."""
        return self.ca_file is not None

    def tls_context(self) -> ssl.SSLContext | None:
        """The client TLS context for this broker, or None for plain MQTT.

        TLS 1.2 or newer, the broker's certificate checked against ``ca_file`` alone (no
        system CAs) and against ``tls_server_name`` or ``host``; the client certificate
        loaded when configured. ConfigError names the field whose file is unusable.
        """
        if self.ca_file is None:
            return None
        context = _ServerNameContext(ssl.PROTOCOL_TLS_CLIENT)  # CERT_REQUIRED, check_hostname
        context.minimum_version = MIN_TLS_VERSION
        context.expected_name = self.tls_server_name
        try:
            context.load_verify_locations(cafile=str(self.ca_file))
        except (ssl.SSLError, OSError) as exc:
            raise ConfigError(f"ca_file: {self.ca_file} is not a PEM CA certificate "
                              f"({_ssl_reason(exc)})") from None
        if self.cert_file is not None and self.key_file is not None:
            try:  # the certificate alone first, so a bad one is not blamed on the key
                ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT).load_verify_locations(
                    cafile=str(self.cert_file))
            except (ssl.SSLError, OSError) as exc:
                raise ConfigError(f"cert_file: {self.cert_file} is not a PEM certificate "
                                  f"({_ssl_reason(exc)})") from None
            try:
                context.load_cert_chain(str(self.cert_file), str(self.key_file),
                                        password=_refuse_password)
            except (ssl.SSLError, OSError) as exc:
                raise ConfigError(f"key_file: {self.key_file} cannot be used with "
                                  f"{self.cert_file} ({_ssl_reason(exc)}): it must be the "
                                  "unencrypted PEM key of that certificate") from None
        return context


def _ssl_reason(exc: BaseException) -> str:
    """The useful part of an ssl/OS error: OpenSSL's reason code or the OS message."""
    reason = getattr(exc, "reason", None) or getattr(exc, "strerror", None)
    return str(reason or exc).replace("_", " ").lower()
