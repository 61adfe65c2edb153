"""``gerbang-gateway``: run the centre gateway (ingest + dashboard)."""

from __future__ import annotations

import argparse
import json
import logging
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import TYPE_CHECKING

from gerbang.config import ConfigError
from gerbang.stopping import stop_processes

if TYPE_CHECKING:
    from gateway.config import GatewayConfig
    from gateway.store import Store
    from gateway.webproc import WebProcess
from gerbang.logs import setup_logging

log = logging.getLogger("gateway")


def _load_run_config(args: argparse.Namespace, web: bool = False) -> GatewayConfig:
    """The config of ``run`` (or, ``web``, of the web process): the file, then the
    command-line overrides."""
    from gateway.config import load_gateway_config

    http = None if web or not (args.no_http or args.worker_of) else False
    return load_gateway_config(args.config, {
        "gateway": {"db": args.db, "http_host": args.http_host, "http_port": args.http_port,
                    "client_id": getattr(args, "client_id", None),
                    "share_group": getattr(args, "share_group", None),
                    "ingest_workers": getattr(args, "ingest_workers", None), "http": http},
        "broker": {"host": getattr(args, "broker_host", None),
                   "port": getattr(args, "broker_port", None),
                   "protocol": getattr(args, "mqtt_protocol", None)}})


def _cmd_run(args: argparse.Namespace) -> int:
    from gateway.identity import resolve_mqtt_identity
    from gateway.ingest import DEFAULT_SHARE_GROUP, Ingest
    from gateway.store import open_store

    config = _load_run_config(args)
    gw = config.gateway
    # A child started by another `run` is one ingest worker, nothing else.
    workers = 1 if args.worker_of or args.retire else gw.ingest_workers
    # Over mutual TLS: client id = certificate CN, each worker its own (gateway/identity.py).
    config = resolve_mqtt_identity(config, workers=workers,
                                   worker=bool(args.worker_of or args.retire))
    gw = config.gateway
    share_group = gw.share_group or (DEFAULT_SHARE_GROUP if workers > 1 else None)
    store = open_store(gw.db)
    if args.retire:
        return _retire(store, config)
    ingest = Ingest(store, config.broker, client_id=gw.client_id, centre=gw.centre,
                    share_group=share_group, clock_skew_s=gw.clock_skew_s)
    ingest.start()
    from gateway.seqwatch import start_seq_watch

    start_seq_watch(store, ingest, gw, primary=not args.worker_of)  # seq gaps (one process)
    from gateway.outgoing import OutgoingCommands

    # Only the first process publishes queued commands (a worker child would send them twice).
    outgoing = OutgoingCommands(store, ingest, gw.client_id, publish=not args.worker_of)
    outgoing.start()
    stop = threading.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda *_: stop.set())
    pool = _WorkerPool(args, gw.client_id, share_group, workers)
    pool.start()
    if args.worker_of:
        threading.Thread(target=_watch_parent, args=(args.worker_of, stop),
                         name="parent-watch", daemon=True).start()
    elif gw.retention_days > 0:
        threading.Thread(target=_retention_loop, args=(store, gw.retention_days, stop),
                         name="retention", daemon=True).start()
    web = _start_web(args, config, workers)
    if web is None:
        log.info("ingest-only worker %s (database %s%s)", gw.client_id, gw.db,
                 f", share group {share_group}" if share_group else "")
    stop.wait()
    if web is not None:
        web.stop()
    pool.stop()
    outgoing.stop()
    ingest.stop()
    log.info("stopped: %s", ingest.stats)
    return 0


def _start_web(args: argparse.Namespace, config: GatewayConfig,
               workers: int) -> WebProcess | None:
    """The web tier's child process of this ``run`` (None for an ingest-only process): the
    ingest process itself serves no HTTP (docs/gateway.md, "Process layout")."""
    from gateway.webproc import WebProcess

    gw = config.gateway
    if not gw.http:
        return None
    web = WebProcess(args)
    web.start()
    scheme = "https" if gw.tls else "http"
    log.info("dashboard at %s://%s:%d/ served by its own process (database %s, %d ingest "
             "worker%s)", scheme, gw.http_host, gw.http_port, gw.db, workers,
             "s" if workers > 1 else "")
    return web


def _cmd_web(args: argparse.Namespace) -> int:
    """The web tier alone: what ``run`` starts as its child, or more web processes against
    one PostgreSQL (no broker connection; commands go through the store)."""
    from gateway.webproc import serve_web

    return serve_web(_load_run_config(args, web=True), parent=args.worker_of)


class _WorkerPool:
    """The ingest-only children of a ``run`` with ``ingest_workers`` > 1, kept running.

    Each child is ``gerbang-gateway run --worker-of PID`` with the parent's config and command
    line, client id ``{client_id}-{n}`` (n = 2..N, fixed so its persistent session survives a
    restart) and the parent's share group. A child that exits is started again: the broker
    keeps handing a share of the events to its session, and they wait there until it is back.
    A child stops by itself when the parent is gone.
    """

    def __init__(self, args: argparse.Namespace, client_id: str, share_group: str | None,
                 workers: int) -> None:
        self.client_ids = [f"{client_id}-{n}" for n in range(2, workers + 1)]
        self.commands = [self._command(args, cid, share_group or "") for cid in self.client_ids]
        self.procs: list[subprocess.Popen[bytes] | None] = [None] * len(self.commands)
        self._stopping = threading.Event()
        self._thread = threading.Thread(target=self._supervise, name="ingest-workers",
                                        daemon=True)

    @staticmethod
    def _command(args: argparse.Namespace, client_id: str, share_group: str) -> list[str]:
        cmd = [sys.executable, "-m", "gateway.cli", *(["-v"] if args.verbose else []), "run",
               "--worker-of", str(os.getpid()), "--client-id", client_id,
               "--share-group", share_group]
        for flag, value in (("--config", args.config), ("--db", args.db),
                            ("--broker-host", args.broker_host),
                            ("--broker-port", args.broker_port),
                            ("--mqtt-protocol", args.mqtt_protocol)):
            if value is not None:
                cmd += [flag, str(value)]
        return cmd

    def start(self) -> None:
        """Start every child, then watch them."""
        if not self.commands:
            return
        for i in range(len(self.commands)):
            self._spawn(i)
        self._thread.start()

    def _spawn(self, i: int) -> None:
        proc = self.procs[i] = subprocess.Popen(self.commands[i])
        log.info("ingest worker %s started (pid %d)", self.client_ids[i], proc.pid)

    def _supervise(self) -> None:
        while not self._stopping.wait(1.0):
            for i, proc in enumerate(self.procs):
                if proc is not None and proc.poll() is not None and not self._stopping.is_set():
                    log.warning("ingest worker pid %d exited with %s; starting it again",
                                proc.pid, proc.returncode)
                    if self._stopping.wait(2.0):
                        return
                    self._spawn(i)

    def stop(self) -> None:
        """Stop every child (each finishes its batch first), waiting up to 15 s."""
        self._stopping.set()
        stop_processes(self.procs, timeout=15)


def _retire(store: Store, config: GatewayConfig, quiet_s: float = 3.0) -> int:
    """Take a worker out of its share group for good: store what its session still holds,
    leave the group, end the session (so the broker stops queueing a share for it)."""
    from gateway.ingest import Ingest, end_session

    gw = config.gateway
    ingest = Ingest(store, config.broker, client_id=gw.client_id, centre=gw.centre,
                    share_group=gw.share_group, retire=True, clock_skew_s=gw.clock_skew_s)
    ingest.start()
    if not ingest.connected.wait(30):
        log.error("could not reach the broker as %s; nothing changed", gw.client_id)
        ingest.stop()
        return 1
    # The broker sends the backlog at once; it is all stored when nothing more has come for
    # ``quiet_s`` and the writer has nothing left.
    seen, quiet_since = -1, time.monotonic()
    while time.monotonic() - quiet_since < quiet_s:
        time.sleep(0.2)
        if ingest.messages != seen or ingest.pending():
            seen, quiet_since = ingest.messages, time.monotonic()
    ingest.stop()
    end_session(gw.client_id, config.broker)
    log.info("worker %s retired: stored %d events its session still held (%d already "
             "stored); its session is ended", gw.client_id, ingest.stats.stored,
             ingest.stats.duplicates)
    return 0


def _watch_parent(parent: int, stop: threading.Event) -> None:
    """A worker child stops when the ``run`` that started it is gone (even after a SIGKILL)."""
    while not stop.wait(1.0):
        if os.getppid() != parent:
            log.warning("parent gateway %d is gone; stopping", parent)
            stop.set()


def _retention_loop(store: Store, days: float, stop: threading.Event,
                    every_s: float = 3600.0) -> None:
    """Blank biometric-adjacent columns older than ``days``, now and then every hour."""
    while not stop.is_set():
        try:
            changed = store.purge_biometric(days * 86400)
            if changed:
                log.info("retention: blanked scores of %d events older than %g days", changed,
                         days)
        except Exception:
            log.exception("retention purge failed; will retry")
        stop.wait(every_s)


def _cmd_bench(args: argparse.Namespace) -> int:
    from gateway.bench import run_bench

    backends = tuple(b for b in ("sqlite", "postgresql") if b in args.backend)
    result = run_bench(events=args.events, devices=args.devices, pg_url=args.postgres,
                       backends=backends, workers=tuple(args.workers), repeat=args.repeat,
                       protocol=args.mqtt_protocol, publisher=args.publisher)
    print(json.dumps(result, indent=None if args.json else 2))
    return 0


def _store(args: argparse.Namespace) -> Store:
    from gateway.config import load_gateway_config
    from gateway.store import open_store

    config = load_gateway_config(args.config, {"gateway": {"db": args.db}})
    return open_store(config.gateway.db)


def _cmd_user(args: argparse.Namespace) -> int:
    """Create or reset an account (``--role``), set its rooms, disable or enable it, or end a
    login lock-out; each change is audited as ``cli:<unix user>``."""
    import getpass

    from gateway.auth import add_user, check_username, parse_rooms

    if not (args.role or args.rooms or args.disable or args.enable or args.unlock):
        log.error("nothing to do: give --role (create or reset the password), --rooms, "
                  "--disable, --enable or --unlock")
        return 2
    try:
        check_username(args.username)
        rooms = parse_rooms(args.rooms) if args.rooms else None
        reason = _user_reason(args)
    except ValueError as exc:
        log.error("user not changed: %s", exc)
        return 2
    store = _store(args)
    who = f"cli:{getpass.getuser()}"
    exists = store.user(args.username) is not None
    if args.role:
        if args.role == "proctor" and rooms is None and not exists:
            log.error("user not saved: rooms: a new proctor needs --rooms (e.g. --rooms "
                      "R01,R02, or --rooms '*' for every room)")
            return 2
        password = (sys.stdin.readline().rstrip("\n") if args.password_stdin
                    else getpass.getpass(f"password for {args.username}: "))
        try:
            add_user(store, args.username, password, args.role, rooms)
        except ValueError as exc:
            log.error("user not saved: %s", exc)
            return 2
        store.audit(who, "user_put", args.username,
                    {"role": args.role, "rooms": store.all_user_rooms().get(args.username)})
        print(f"user {args.username} ({args.role}) saved; any earlier login of it has ended")
    elif not exists:
        log.error("no user %r: create it with --role first", args.username)
        return 2
    elif rooms is not None:
        store.set_user_rooms(args.username, rooms)
        store.audit(who, "user_rooms", args.username,
                    {"rooms": store.all_user_rooms().get(args.username)})
    if rooms is not None:
        print(f"user {args.username} acts on: "
              f"{', '.join(store.all_user_rooms().get(args.username, []))}")
    if args.disable or args.enable:
        store.set_user_disabled(args.username, bool(args.disable), who)
        store.audit(who, "user_disable" if args.disable else "user_enable", args.username,
                    {"reason": reason})
        state = "disabled: its logins have ended" if args.disable else "enabled"
        print(f"user {args.username} {state}")
    if args.unlock:
        cleared = store.clear_login_failures("user", args.username)
        store.audit(who, "login_unlock", args.username)
        print(f"user {args.username}: {'lock-out ended' if cleared else 'was not locked out'}")
    return 0


def _user_reason(args: argparse.Namespace) -> str | None:
    """The ``--reason`` of ``--disable`` / ``--enable`` (required there, checked like every
    reason: letters or digits, not only spaces, punctuation or invisible characters)."""
    from gateway.web import meaningful_reason

    if args.disable and args.enable:
        raise ValueError("give --disable or --enable, not both")
    if not (args.disable or args.enable):
        return None
    if not args.reason:
        raise ValueError("reason: --disable and --enable need --reason (it is audited)")
    try:
        return meaningful_reason(args.reason)
    except ValueError as exc:
        raise ValueError(f"reason: {exc}") from None


def _cmd_session(args: argparse.Namespace) -> int:
    from pydantic import ValidationError

    from gateway.web import ExamSessionIn

    try:
        body = ExamSessionIn(centre=args.centre, name=args.name, doors_open=args.doors_open,
                             starts_at=args.starts_at, doors_close=args.doors_close)
    except ValidationError as exc:
        first = exc.errors()[0]
        log.error("session not saved: %s: %s", first["loc"][0], first["msg"])
        return 2
    store = _store(args)
    store.upsert_session({"session_id": args.session_id, **body.model_dump()})
    store.audit(_cli_user(), "session_put", args.session_id, body.model_dump())
    print(f"session {args.session_id} saved")
    return 0


def _cmd_roster(args: argparse.Namespace) -> int:
    from gateway.roster_import import parse_roster_csv

    store = _store(args)
    if store.exam_session(args.session_id) is None:
        log.error("no exam session %r: create it with `gerbang-gateway session add` first",
                  args.session_id)
        return 2
    result = parse_roster_csv(args.csv.read_bytes(), args.session_id)
    if not result.ok:
        for error in result.errors[:50]:
            print(f"{args.csv}:{error['line']}: {error['field'] or '-'}: {error['error']}",
                  file=sys.stderr)
        log.error("roster not imported: %d error(s); nothing was changed", len(result.errors))
        return 1
    count = store.replace_roster(args.session_id, result.entries)
    store.audit(_cli_user(), "roster_import", args.session_id,
                {"entries": count, "file": str(args.csv)})
    print(f"imported {count} applicants into {args.session_id}")
    return 0


def _cmd_purge(args: argparse.Namespace) -> int:
    store = _store(args)
    changed = store.purge_biometric(args.days * 86400)
    store.audit(_cli_user(), "retention_purge", None, {"days": args.days, "events": changed})
    print(f"blanked scores and frame references of {changed} events older than "
          f"{args.days} days")
    return 0


def _cli_user() -> str:
    """Who the audit log names for a command run on the gateway's machine."""
    import getpass

    return f"cli:{getpass.getuser()}"


def _cmd_assign(args: argparse.Namespace) -> int:
    """``assign DEVICE --centre C --room R [--session S]``, ``assign --from FILE``,
    ``assign DEVICE --remove``, ``assign --list``."""
    from gateway.assignments import AssignmentError, assign, assign_many, read_assignments
    from gateway.assignments import unassign as remove

    store = _store(args)
    who = _cli_user()
    try:
        if args.list:
            for a in store.assignments():
                print(f"{a['device_id']}\tcentre {a['centre']}\troom {a['room']}\tsession "
                      f"{a['session'] or '(any open session)'}\tby {a['assigned_by']}")
            return 0
        if args.from_file is not None:
            if args.device:
                raise AssignmentError("give either DEVICE or --from FILE, not both")
            rows = read_assignments(args.from_file, centre=args.centre)
            count = assign_many(store, rows, who, source=str(args.from_file))
            print(f"assigned {count} gates from {args.from_file}")
            return 0
        if not args.device:
            raise AssignmentError("give a DEVICE (with --centre and --room), --from FILE, "
                                  "or --list")
        if args.remove:
            print(f"{args.device}: " + ("assignment removed" if remove(store, args.device, who)
                                        else "had no assignment"))
            return 0
        if not args.centre or not args.room:
            raise AssignmentError("--centre and --room: required to assign a gate")
        row = assign(store, args.device, args.centre, args.room, args.session, who)
    except AssignmentError as exc:
        log.error("nothing assigned: %s", exc)
        return 2
    print(f"{row['device_id']} assigned to centre {row['centre']}, room {row['room']}, "
          f"session {row['session'] or '(any open session of the centre)'}")
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
                     help="5 = MQTT 5 (the default; [broker] protocol), 3 = MQTT 3.1.1")
    run.add_argument("--client-id", help="MQTT client id (unique per worker)")
    run.add_argument("--share-group", help="join this MQTT shared-subscription group")
    run.add_argument("--ingest-workers", type=int, metavar="N",
                     help="ingest processes: this one plus N-1 children sharing the stream "
                          "(default 1; [gateway] ingest_workers)")
    run.add_argument("--no-http", action="store_true", help="ingest only, no dashboard")
    run.add_argument("--worker-of", type=int, metavar="PID", help=argparse.SUPPRESS)
    run.add_argument("--retire", action="store_true",
                     help="take the worker --client-id out of its share group for good: store "
                          "what the broker still holds for it, then end its session")
    run.set_defaults(func=_cmd_run)

    web = sub.add_parser(
        "web", help="serve the dashboard only (what `run` starts as its web process)",
        description="The web tier alone: dashboard, API, public board listener; no broker "
                    "connection (gate commands go through the store's queue, ingest counters "
                    "come from the store). `run` starts it as a child process of its own; run "
                    "it by hand for more web processes against one PostgreSQL.")
    web.add_argument("--config", type=Path, help="gateway TOML config (defaults otherwise)")
    web.add_argument("--db", help="SQLite database path or postgresql:// URL")
    web.add_argument("--http-host", help="dashboard bind address (default 127.0.0.1)")
    web.add_argument("--http-port", type=int, help="dashboard port (default 8080)")
    web.add_argument("--worker-of", type=int, metavar="PID", help=argparse.SUPPRESS)
    web.set_defaults(func=_cmd_web)

    bench = sub.add_parser(
        "bench", help="ingest benchmark: events/s from simulated devices into each back-end",
        description="Starts Mosquitto, a gateway (`run --no-http --ingest-workers N`) and "
                    "publisher processes on this machine and measures sustained events/s into "
                    "SQLite and PostgreSQL with 1 and 2 ingest workers, lost and duplicated "
                    "events, and CPU seconds per part, next to mosquitto_sub's raw rate for the "
                    "same stream. The headline events_per_s is SQLite with 2 workers.")
    bench.add_argument("--events", type=int, default=20000)
    bench.add_argument("--devices", type=int, default=50)
    bench.add_argument("--backend", nargs="+", default=["sqlite", "postgresql"],
                       choices=("sqlite", "postgresql"))
    bench.add_argument("--workers", type=int, nargs="+", default=[1, 2], metavar="N",
                       help="ingest worker counts to measure (default: 1 2)")
    bench.add_argument("--repeat", type=int, default=1,
                       help="run every configuration this many times, interleaved; the "
                            "summary gives medians (default 1)")
    bench.add_argument("--mqtt-protocol", type=int, choices=(3, 5),
                       help="the gateway's MQTT version (default: the gateway's default)")
    bench.add_argument("--publisher", choices=("mosquitto_pub", "paho"),
                       default="mosquitto_pub",
                       help="simulated gates: one mosquitto_pub each (default), or the two "
                            "Python paho processes of earlier benchmarks")
    bench.add_argument("--postgres", default="postgresql://postgres@127.0.0.1:5432/postgres",
                       help="server where a scratch database is created and dropped")
    bench.add_argument("--json", action="store_true", help="compact JSON on one line")
    bench.set_defaults(func=_cmd_bench)

    def with_store(p: argparse.ArgumentParser) -> argparse.ArgumentParser:
        p.add_argument("--config", type=Path, help="gateway TOML config (for its database)")
        p.add_argument("--db", help="SQLite database path or postgresql:// URL")
        return p

    user = with_store(sub.add_parser(
        "user", help="create a dashboard login, reset its password, set its rooms, disable it",
        description="Create a dashboard account or reset its password and role (--role; a reset "
                    "ends every login of the account). Roles: viewer (reads), technician (+ "
                    "remote unlock), proctor (+ manual admit, mark absent, alerts), manager "
                    "(everything: sessions, rosters, users). Every account but a manager's "
                    "acts only on its rooms (--rooms). --disable ends its logins at once."))
    user.add_argument("username")
    user.add_argument("--role", choices=("viewer", "technician", "proctor", "manager"),
                      help="create the account, or reset its password and role")
    user.add_argument("--rooms", metavar="LIST",
                      help="rooms it may act on: R01,R02 (every session), S1/R01 (one "
                           "session), S1/* or * (every room); required for a new proctor")
    user.add_argument("--disable", action="store_true",
                      help="disable the account: its logins end now (needs --reason)")
    user.add_argument("--enable", action="store_true",
                      help="enable a disabled account again (needs --reason)")
    user.add_argument("--reason", help="why (audited), for --disable / --enable")
    user.add_argument("--unlock", action="store_true",
                      help="end a login lock-out of this username now")
    user.add_argument("--password-stdin", action="store_true",
                      help="read the password from standard input instead of prompting")
    user.set_defaults(func=_cmd_user)

    session = with_store(sub.add_parser(
        "session", help="schedule an exam session",
        description="Create or update an exam session. Times are ISO 8601 with the centre's "
                    "UTC offset, e.g. 2026-12-01T07:30:00+07:00 (WIB)."))
    session.add_argument("session_id")
    session.add_argument("--centre", required=True)
    session.add_argument("--name", required=True)
    session.add_argument("--doors-open", required=True)
    session.add_argument("--starts-at", required=True)
    session.add_argument("--doors-close", required=True)
    session.set_defaults(func=_cmd_session)

    roster = with_store(sub.add_parser(
        "roster", help="import a session roster from CSV",
        description="Replace a session's roster with a CSV export (columns applicant_id or "
                    "no_peserta, name or nama, room or ruang, optional seat or kursi). Every "
                    "bad row is listed by line; if there is any, nothing is changed."))
    roster.add_argument("session_id")
    roster.add_argument("csv", type=Path)
    roster.set_defaults(func=_cmd_roster)

    purge = with_store(sub.add_parser(
        "purge", help="retention: blank match scores older than N days",
        description="Biometric-adjacent data (match scores, frame references) older than the "
                    "retention period is blanked; attendance (who, where, when) is kept."))
    purge.add_argument("--days", type=float, required=True)
    purge.set_defaults(func=_cmd_purge)

    assign_cmd = with_store(sub.add_parser(
        "assign", help="assign a gate to its room (and session)",
        description="A gate admits only for its assignment: events for another room or "
                    "session, applicants not on the room's roster or sessions not open are "
                    "kept but not counted. Assign one gate, or every gate of a provisioning "
                    "centre folder (devices/<id>/device.json), a JSON list or a CSV file "
                    "(device_id, centre, room, session) with --from. Audited."))
    assign_cmd.add_argument("device", nargs="?", help="the gate's device id")
    assign_cmd.add_argument("--centre", help="its centre (with --from: for records without one)")
    assign_cmd.add_argument("--room", help="its room")
    assign_cmd.add_argument("--session",
                            help="one session only (default: any open session of the centre)")
    assign_cmd.add_argument("--from", dest="from_file", type=Path, metavar="FILE",
                            help="a centre folder, centre.json, JSON or CSV list of gates")
    assign_cmd.add_argument("--remove", action="store_true", help="remove DEVICE's assignment")
    assign_cmd.add_argument("--list", action="store_true", help="print every assignment")
    assign_cmd.set_defaults(func=_cmd_assign)
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
