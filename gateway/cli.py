"""``gerbang-gateway``: run the centre gateway (ingest + dashboard)."""

from __future__ import annotations

import argparse
import json
import logging
import signal
import sys
import threading
from pathlib import Path

from gerbang.config import ConfigError
from gerbang.logs import setup_logging

log = logging.getLogger("gateway")


def _cmd_run(args: argparse.Namespace) -> int:
    import uvicorn

    from gateway.config import load_gateway_config
    from gateway.ingest import Ingest
    from gateway.store import open_store
    from gateway.web import create_app

    config = load_gateway_config(args.config, {
        "gateway": {"db": args.db, "http_host": args.http_host, "http_port": args.http_port,
                    "client_id": args.client_id, "share_group": args.share_group,
                    "http": False if args.no_http else None},
        "broker": {"host": args.broker_host, "port": args.broker_port,
                   "protocol": args.mqtt_protocol}})
    store = open_store(config.gateway.db)
    ingest = Ingest(store, config.broker, client_id=config.gateway.client_id,
                    centre=config.gateway.centre, share_group=config.gateway.share_group)
    ingest.start()
    stop = threading.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda *_: stop.set())
    if not config.gateway.http:
        log.info("ingest-only worker %s (database %s)", config.gateway.client_id,
                 config.gateway.db)
        stop.wait()
        ingest.stop()
        log.info("stopped: %s", ingest.stats)
        return 0
    app = create_app(store, ingest.stats)
    server = uvicorn.Server(uvicorn.Config(app, host=config.gateway.http_host,
                                           port=config.gateway.http_port, log_level="warning"))
    log.info("dashboard at http://%s:%d/  (database %s)", config.gateway.http_host,
             config.gateway.http_port, config.gateway.db)

    def on_signal(*_: object) -> None:
        stop.set()
        server.should_exit = True

    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, on_signal)
    server.install_signal_handlers = lambda: None  # type: ignore[method-assign]
    try:
        server.run()
    finally:
        ingest.stop()
        log.info("stopped: %s", ingest.stats)
    return 0


def _cmd_bench(args: argparse.Namespace) -> int:
    from gateway.bench import run_bench

    backends = tuple(b for b in ("sqlite", "postgresql") if b in args.backend)
    result = run_bench(events=args.events, devices=args.devices, pg_url=args.postgres,
                       backends=backends)
    print(json.dumps(result, indent=None if args.json else 2))
    return 0


def build_parser() -> argparse.ArgumentParser:
    """The command-line interface."""
    parser = argparse.ArgumentParser(
        prog="gerbang-gateway",
        description="Gerbang centre gateway: stores every gate check-in exactly once and shows "
                    "attendance per room live.")
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    sub = parser.add_subparsers(dest="command", required=True)
    run = sub.add_parser("run", help="run ingest and dashboard in the foreground")
    run.add_argument("--config", type=Path, help="gateway TOML config (defaults otherwise)")
    run.add_argument("--db", help="SQLite database path or postgresql:// URL")
    run.add_argument("--http-host", help="dashboard bind address (default 127.0.0.1)")
    run.add_argument("--http-port", type=int, help="dashboard port (default 8080)")
    run.add_argument("--broker-host", help="MQTT broker host (default 127.0.0.1)")
    run.add_argument("--broker-port", type=int, help="MQTT broker port (default 1883)")
    run.add_argument("--mqtt-protocol", type=int, choices=(3, 5),
                     help="5 = MQTT 5 (default), 3 = MQTT 3.1.1")
    run.add_argument("--client-id", help="MQTT client id (unique per worker)")
    run.add_argument("--share-group", help="join this MQTT shared-subscription group")
    run.add_argument("--no-http", action="store_true", help="ingest only, no dashboard")
    run.set_defaults(func=_cmd_run)

    bench = sub.add_parser(
        "bench", help="ingest benchmark: events/s from simulated devices into each back-end",
        description="Starts Mosquitto, gateway workers and publisher processes on this machine "
                    "and measures sustained events/s into SQLite (1 worker) and PostgreSQL (1 "
                    "and 2 workers), lost and duplicated events, next to mosquitto_sub's raw "
                    "rate for the same stream.")
    bench.add_argument("--events", type=int, default=20000)
    bench.add_argument("--devices", type=int, default=50)
    bench.add_argument("--backend", nargs="+", default=["sqlite", "postgresql"],
                       choices=("sqlite", "postgresql"))
    bench.add_argument("--postgres", default="postgresql://postgres@127.0.0.1:5432/postgres",
                       help="server where a scratch database is created and dropped")
    bench.add_argument("--json", action="store_true", help="compact JSON on one line")
    bench.set_defaults(func=_cmd_bench)
    return parser


def main(argv: list[str] | None = None) -> int:
    """Entry point; configuration problems print one clear line and exit 2."""
    args = build_parser().parse_args(argv)
    setup_logging("gerbang-gateway", args.verbose)
    try:
        return args.func(args)
    except ConfigError as exc:
        log.error("cannot start: %s", exc)
        return 2


if __name__ == "__main__":
    sys.exit(main())
