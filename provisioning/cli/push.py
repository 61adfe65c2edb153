"""Pushes to the gates over MQTT, as a technician: ``roster-push`` (a signed roster) and
``config-push`` (a new version of a gate's device.toml); each waits for the gates' answers."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import TYPE_CHECKING

from gerbang.config import ConfigError

if TYPE_CHECKING:
    from gerbang.config import BrokerConfig


def _cmd_roster_push(args: argparse.Namespace) -> int:
    from provisioning.push import push_roster

    broker = _push_broker(args)
    results = push_roster(broker, args.centre, args.device, args.signed_roster.read_bytes(),
                          timeout_s=args.timeout)
    for r in results:
        state = {True: "ok", False: "REFUSED", None: "NOT CONFIRMED"}[r.ok]
        print(f"{r.device_id:24s} {state:14s} {r.detail}")
    return 0 if all(r.ok for r in results) else 1


def _toml_keys(table: dict, prefix: str = "") -> list[str]:
    """Dotted keys a TOML document sets (``gpio.tamper.pin``), in file order."""
    keys = []
    for name, value in table.items():
        key = f"{prefix}{name}"
        keys.extend(_toml_keys(value, key + ".") if isinstance(value, dict) else [key])
    return keys


def _cmd_config_push(args: argparse.Namespace) -> int:
    import base64
    import tomllib

    from device.manage.config_keys import LOCAL, SIGNED, classify
    from provisioning.push import config_sha256, push_command, push_config

    if args.version < 1:
        raise ConfigError(f"--version: must be >= 1, got {args.version}")
    try:
        text = args.config_file.read_text("utf-8")
        document = tomllib.loads(text)
    except UnicodeDecodeError as exc:
        raise ConfigError(f"{args.config_file}: not UTF-8 text ({exc})") from None
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"{args.config_file}: not valid TOML ({exc})") from None
    gate = document.get("gate")
    if not isinstance(gate, dict):
        raise ConfigError(f"{args.config_file}: gate: missing (the gate's [gate] table)")
    # One device.toml names one gate; the gate would refuse another's, so stop here instead.
    if gate.get("device_id") != args.device:
        raise ConfigError(f"{args.config_file}: gate.device_id is {gate.get('device_id')!r}, "
                          f"not {args.device!r}: each gate gets its own config file")
    centre = gate.get("centre")
    if not isinstance(centre, str) or args.centre not in (None, centre):
        raise ConfigError(f"{args.config_file}: gate.centre is {centre!r}"
                          + (f", not {args.centre!r}" if args.centre else ""))
    keys = None
    if args.keys:
        from provisioning.signing import load_roster_keys, sign_config

        keys = load_roster_keys(args.keys)  # RosterError (one line, exit 2) if unusable
        if keys.centre != centre:
            raise ConfigError(f"--keys {args.keys} are centre {keys.centre}'s, the file is for "
                              f"centre {centre}")
    broker = _push_broker(args)
    print(f"desired: {args.device} config v{args.version} sha256 {config_sha256(text)}"
          + (f", signed by key {keys.key_id}" if keys else ", unsigned"))
    set_keys = _toml_keys(document)
    local = [k for k in set_keys if classify(k) == LOCAL]
    protected = [k for k in set_keys if classify(k) == SIGNED]
    if local:
        print(f"note: local-only keys ({', '.join(local)}) must equal what the gate runs; no "
              "push can change them (re-provision the gate for that)")
    if protected and not keys:
        print(f"note: unsigned: the gate refuses this unless these keys are unchanged from what "
              f"it runs: {', '.join(protected)}; to change any of them, sign the push with "
              "--keys DIR (the centre's roster key folder)")
    try:
        if keys:
            blob = sign_config(text, keys, args.device, args.version)
            (r,) = push_command(
                broker, centre, [args.device], "config",
                {"signed_config_b64": base64.b64encode(blob).decode()}, args.timeout,
                offline_hint="it applies the config when it reconnects, unless a newer "
                             "version reaches it first")
        else:
            r = push_config(broker, centre, args.device, text, args.version,
                            timeout_s=args.timeout)
    except OSError as exc:  # refused connection, unknown host, no subscription confirmed
        raise RuntimeError(f"broker {args.broker_host}:{args.broker_port}: {exc}") from None
    state = {True: "applied", False: "REFUSED", None: "NOT CONFIRMED"}[r.ok]
    print(f"{r.device_id:24s} {state:14s} {r.detail}")
    return 0 if r.ok else 1


def _push_broker(args: argparse.Namespace) -> BrokerConfig:
    """The push's broker, refused (exit 2, the reason) for a certificate that is not a
    technician's before anything is printed or sent."""
    from gerbang.config import BrokerConfig
    from provisioning.push import check_push_identity

    broker = BrokerConfig(host=args.broker_host, port=args.broker_port, ca_file=args.ca_file,
                          cert_file=args.cert_file, key_file=args.key_file)
    check_push_identity(broker)
    return broker


def _add_push_broker_args(parser: argparse.ArgumentParser) -> None:
    """How a push command reaches the centre's broker (as a technician: their certificate) and
    how long it waits for the gates' acknowledgements."""
    parser.add_argument("--broker-host", default="127.0.0.1")
    parser.add_argument("--broker-port", type=int, default=8883)
    parser.add_argument("--ca-file", type=Path, help="centre CA (turns TLS on)")
    parser.add_argument("--cert-file", type=Path,
                        help="your technician certificate (technicians/tech-NAME.pem from "
                             "`technician-cert`); the gateway's is refused")
    parser.add_argument("--key-file", type=Path, help="its key (technicians/tech-NAME.key)")
    parser.add_argument("--timeout", type=float, default=30.0,
                        help="seconds to wait for the acknowledgements (default 30)")


def add_commands(sub: argparse._SubParsersAction) -> None:
    """The ``roster-push`` and ``config-push`` commands."""
    push = sub.add_parser(
        "roster-push", help="send a signed roster to a room's gates and confirm each one",
        description="Publish a signed roster (.roster.signed) to each named gate over MQTT and "
                    "wait for every gate's acknowledgement. Each gate checks the signature, "
                    "centre, session, room, model and version before using it; a refusal is "
                    "printed with its reason. A gate that is offline gets the roster when it "
                    "reconnects and is listed as NOT CONFIRMED. Use your technician "
                    "certificate (`technician-cert`); the gateway's is refused, since the push "
                    "would take over the running gateway's session. Exit code 0 only when "
                    "every gate confirmed.")
    push.add_argument("signed_roster", type=Path, help="the .roster.signed file")
    push.add_argument("--centre", required=True, help="centre id, e.g. c01")
    push.add_argument("--device", action="append", required=True,
                      help="a gate id of the room (repeat for each gate)")
    _add_push_broker_args(push)
    push.set_defaults(func=_cmd_roster_push)

    cpush = sub.add_parser(
        "config-push", help="send a gate a new version of its device.toml and confirm it",
        description="Publish a gate's whole device.toml, with a version number, over MQTT and "
                    "wait for the gate's acknowledgement. The version and the file's sha256 "
                    "are the desired config (printed first); the gate answers `applied` once "
                    "it has swapped the file in and restarted its workers with it (its reported "
                    "config, also in its status message), or REFUSED with the reason: a version "
                    "not newer than the one it runs, a file that is not TOML or not a valid "
                    "config (the field is named), an unsigned change of a key that decides who "
                    "enters or whom the gate trusts (thresholds, liveness, quality, broker, pin "
                    "map, room, session, camera, models: sign it with --keys), or a changed "
                    "local-only key (device_id, centre, data_dir, [keys], the broker's TLS "
                    "files: re-provision for those). Without --keys only the harmless keys may "
                    "change (telemetry_interval_s, drain_timeout_s, models.threads, "
                    "screen.result_hold_s, screen.preview_fps, capture.freeze_s); the keys the "
                    "file sets that would need signing are printed before sending. A gate that "
                    "is offline gets the config when it reconnects and is listed as NOT "
                    "CONFIRMED. Use your technician certificate (`technician-cert`), never the "
                    "gateway's. Exit code 0 only when the gate applied it.",
        epilog="Example: gerbang-provision config-push --config-file devices/c01-r01-a/"
               "device.toml --version 2 --device c01-r01-a --keys roster-keys "
               "--broker-host broker.c01.lan --ca-file technicians/ca.pem --cert-file "
               "technicians/tech-budi.pem --key-file technicians/tech-budi.key")
    cpush.add_argument("--config-file", type=Path, required=True,
                       help="the gate's whole new device.toml (its [gate] device_id must be "
                            "--device)")
    cpush.add_argument("--version", type=int, required=True,
                       help="config version; must be higher than the one the gate reports")
    cpush.add_argument("--device", required=True, help="the gate id, e.g. c01-r01-a")
    cpush.add_argument("--centre", help="centre id (default: [gate] centre of the file)")
    cpush.add_argument("--keys", type=Path,
                       help="the centre's roster key folder: sign the config with it (needed "
                            "to change any key but the harmless ones)")
    _add_push_broker_args(cpush)
    cpush.set_defaults(func=_cmd_config_push)
