"""Gateway configuration (TOML), validated at start-up with messages that name the bad field."""

from __future__ import annotations

import ipaddress
import os
import ssl
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from gerbang.config import BrokerConfig, ConfigError, load_section, read_toml, require


@dataclass
class ServiceConfig:
    """Where the gateway keeps data and serves its pages."""

    #: A SQLite file path, or a ``postgresql://user@host/db`` URL for PostgreSQL.
    db: str = "/var/lib/gerbang-gateway/attendance.sqlite"
    http_host: str = "127.0.0.1"
    http_port: int = 8080
    #: Centre id to ingest, or "+" for every centre on the broker.
    centre: str = "+"
    client_id: str = "gerbang-gateway"
    #: Shared-subscription group for running several gateway workers on one stream (each needs
    #: its own client_id); None = this gateway takes every event itself (or, with
    #: ``ingest_workers`` > 1, the group ``gerbang-ingest``).
    share_group: str | None = None
    #: Ingest processes ``run`` keeps going: itself plus ``ingest_workers - 1`` ingest-only
    #: children with client ids ``{client_id}-2`` … ``{client_id}-N``, all in one share group,
    #: all writing to ``db`` (SQLite in WAL mode, or PostgreSQL). Each is one Python process
    #: with its own MQTT loop; see docs/gateway.md for how many a machine can use.
    ingest_workers: int = 1
    #: Serve the dashboard and API (False for pure ingest workers).
    http: bool = True
    #: The centre's clock for pages and the PDF report, hours from UTC: 7 WIB, 8 WITA, 9 WIT.
    #: Stored times, the API and CSV exports stay in UTC (ISO 8601 with Z).
    display_utc_offset_h: float = 7.0
    #: Days after which match scores and frame references (biometric-adjacent) are blanked;
    #: attendance facts are kept. Checked hourly while the gateway runs. 0 = never.
    retention_days: float = 30.0
    # -- seq gaps and admission (gateway/seqwatch.py, gateway/admission.py) --
    #: A missing seq range older than this makes the gateway ask the gate to re-send it.
    gap_resend_s: float = 10.0
    #: A missing seq range older than this is a ``seq_gap`` alert.
    gap_alert_s: float = 60.0
    #: Tolerance between a gate's clock and the gateway's (5..900 s; docs/gateway.md, "Clock
    #: tolerance"): events stamped further in the future, or older without an outage to
    #: explain it, are kept as evidence but not counted in attendance.
    clock_skew_s: float = 120.0

    # ---- the web tier (its own process; docs/gateway.md "Logins", "HTTPS", "Process layout")
    #: Serve the dashboard over HTTPS with this certificate (PEM, the chain after the leaf) and
    #: its unencrypted key; both or neither. Cookies are then ``Secure``.
    tls_cert_file: Path | None = None
    tls_key_file: Path | None = None
    #: Mark cookies ``Secure`` without TLS here: behind a reverse proxy that terminates HTTPS.
    cookie_secure: bool = False
    #: Addresses of reverse proxies whose ``X-Forwarded-For`` / ``X-Forwarded-Proto`` are
    #: believed (so lock-outs count the real client); empty = believe nobody.
    trusted_proxies: list[str] = field(default_factory=list)
    #: The public board's own listener (board page, its live stream, the public API, static
    #: files; nothing else answers there). Off unless ``public_http_port`` is set.
    public_http_host: str = "127.0.0.1"
    public_http_port: int | None = None
    #: Live streams of the public board at once: in total, and from one client address.
    public_stream_max: int = 100
    public_stream_per_address: int = 4
    #: Address-space limit of the web process (RLIMIT_AS), MB; 0 = none. A request that needs
    #: more fails in the web process alone, which is restarted; ingest is never touched.
    web_memory_limit_mb: int = 1024
    #: Password checks (Argon2id, 64 MiB each) running at once, and how many more may wait for
    #: one; the rest are answered 503 at once.
    login_concurrency: int = 2
    login_queue: int = 4
    #: Failed logins per username within ``login_window_s`` that lock the username for
    #: ``login_lockout_s`` (the Nth failure locks it), and per client address the same.
    login_lock_after: int = 6
    login_address_lock_after: int = 20
    login_window_s: float = 900.0
    login_lockout_s: float = 900.0

    def __post_init__(self) -> None:
        require(0 < self.http_port < 65536, "http_port", f"must be 1..65535, got {self.http_port}")
        require(self.centre == "+" or "/" not in self.centre, "centre", "must not contain '/'")
        require(-12 <= self.display_utc_offset_h <= 14, "display_utc_offset_h",
                "must be -12..14 hours")
        require(self.retention_days >= 0, "retention_days", "must be >= 0 (0 = keep)")
        require(1 <= self.ingest_workers <= 32, "ingest_workers",
                f"must be 1..32, got {self.ingest_workers}")
        require(self.share_group is None or (bool(self.share_group) and not any(
            c in self.share_group for c in "/+#")), "share_group",
            "must be a plain name (no '/', '+' or '#')")
        require(1 <= self.gap_resend_s <= 3600, "gap_resend_s", "must be 1..3600 seconds")
        require(1 <= self.gap_alert_s <= 86400, "gap_alert_s", "must be 1..86400 seconds")
        require(5 <= self.clock_skew_s <= 900, "clock_skew_s",
                f"must be 5..900 seconds, got {self.clock_skew_s}")
        self._check_web()

    def _check_web(self) -> None:
        """The web tier's settings: TLS files usable, listeners apart, limits sane."""
        for name in ("tls_cert_file", "tls_key_file"):
            if isinstance(getattr(self, name), str):  # constructed in code, not from TOML
                setattr(self, name, Path(getattr(self, name)))
        require((self.tls_cert_file is None) == (self.tls_key_file is None),
                "tls_cert_file" if self.tls_cert_file is None else "tls_key_file",
                "set both tls_cert_file and tls_key_file, or neither")
        for name in ("tls_cert_file", "tls_key_file"):
            path = getattr(self, name)
            if path is None:
                continue
            require(path.is_file(), name, f"{path} does not exist (or is not a file)")
            require(os.access(path, os.R_OK), name,
                    f"{path} is not readable by this user (uid {os.getuid()})")
        if self.tls_cert_file is not None and self.tls_key_file is not None:
            try:
                ssl.create_default_context(ssl.Purpose.CLIENT_AUTH).load_cert_chain(
                    str(self.tls_cert_file), str(self.tls_key_file), password=lambda: b"")
            except (ssl.SSLError, OSError) as exc:
                raise ConfigError(f"tls_key_file: {self.tls_key_file} cannot be used with "
                                  f"{self.tls_cert_file} ({exc}): it must be the unencrypted "
                                  "PEM key of that PEM certificate") from None
        for proxy in self.trusted_proxies:
            try:
                ipaddress.ip_network(proxy, strict=False)
            except ValueError:
                raise ConfigError(f"trusted_proxies: {proxy!r} is not an IP address or "
                                  "network") from None
        if self.public_http_port is not None:
            require(0 < self.public_http_port < 65536, "public_http_port",
                    f"must be 1..65535, got {self.public_http_port}")
            require(self.public_http_port != self.http_port, "public_http_port",
                    "must differ from http_port: the public board has its own listener")
        require(1 <= self.public_stream_max <= 10_000, "public_stream_max", "must be 1..10000")
        require(1 <= self.public_stream_per_address <= self.public_stream_max,
                "public_stream_per_address", "must be 1..public_stream_max")
        require(self.web_memory_limit_mb == 0 or self.web_memory_limit_mb >= 512,
                "web_memory_limit_mb", "must be 0 (no limit) or at least 512")
        require(1 <= self.login_concurrency <= 16, "login_concurrency", "must be 1..16")
        require(0 <= self.login_queue <= 256, "login_queue", "must be 0..256")
        require(2 <= self.login_lock_after <= 100, "login_lock_after", "must be 2..100")
        require(2 <= self.login_address_lock_after <= 10_000, "login_address_lock_after",
                "must be 2..10000")
        require(1 <= self.login_window_s <= 86400, "login_window_s", "must be 1..86400 s")
        require(1 <= self.login_lockout_s <= 86400, "login_lockout_s", "must be 1..86400 s")

    @property
    def tls(self) -> bool:
        """Whether the dashboard is served over HTTPS."""
        return self.tls_cert_file is not None

    @property
    def secure_cookies(self) -> bool:
        """Whether cookies carry ``Secure`` (HTTPS here or at a reverse proxy)."""
        return self.tls or self.cookie_secure


@dataclass
class GatewayConfig:
    """The whole gateway configuration."""

    gateway: ServiceConfig = field(default_factory=ServiceConfig)
    broker: BrokerConfig = field(default_factory=BrokerConfig)


def load_gateway_config(path: Path | None, overrides: dict[str, dict[str, Any]] | None = None,
                        ) -> GatewayConfig:
    """Read ``path`` (or defaults when None), apply command-line ``overrides``, validate."""
    data = read_toml(path) if path else {}
    for section, values in (overrides or {}).items():
        data.setdefault(section, {}).update({k: v for k, v in values.items() if v is not None})
    return load_section(GatewayConfig, data)
