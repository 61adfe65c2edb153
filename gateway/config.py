"""Gateway configuration (TOML), validated at start-up with messages that name the bad field."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from gerbang.config import BrokerConfig, load_section, read_toml, require


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
