"""``gerbang-device selftest``: is this Pi ready to guard its door? One line per check.

Run by the technician after installing a bundle (``gerbang-provision install --selftest``), with
the gate service stopped (the camera and the pins can have only one user). Each check is
independent: one failure never hides the others, and none raises.

=============  ===============================================================================
config         the config loads and validates (TLS files exist, pins valid ...)
clock          not before the CA certificate's start nor 2025; within a few seconds of the
               gateway's clock (HTTP ``Date``), else synchronised by NTP (a wrong clock breaks
               TLS and stamps check-ins with the wrong time)
disk           free space where the outbox and templates live; data_dir writable
certificate    the client certificate: CN = device_id, OU = centre, issued by ca_file, in date
broker         a real MQTT connection with that certificate (connect, then disconnect)
models         every model file matches its sha256 in the manifest, and they run
camera         the camera opens and gives frames
gpio           every output (relay, LED red/green/blue, buzzer) toggled, every input read: the
               technician watches the relay click, the LED change and hears the buzzer
roster         roster keys load; a signed roster for this session and room is installed or waiting
=============  ===============================================================================

A check passes (PASS), fails (FAIL), passes with something to look at (WARN), or does not apply
(SKIP). The exit code is 0 only when nothing failed.
"""

from __future__ import annotations

import datetime as dt
import email.utils
import json
import os
import shutil
import socket
import ssl
import subprocess
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from device.config import DeviceConfig, load_device_config
from gerbang.config import ConfigError

PASS, FAIL, WARN, SKIP = "PASS", "FAIL", "WARN", "SKIP"
#: The clock may differ this much from the gateway's before the check fails (HTTP Date has a
#: one-second resolution; NTP keeps a healthy Pi within milliseconds).
MAX_CLOCK_OFFSET_S = 5.0
#: No real clock can be earlier than this: a Pi that booted without network and without
#: fake-hwclock starts in 1970, and every certificate is then "not yet valid".
EARLIEST_SANE_YEAR = 2025
#: Below this free space the check fails: the outbox must be able to hold a day offline.
MIN_FREE_MB = 256
#: Below this it warns.
LOW_FREE_MB = 1024
#: A certificate expiring sooner than this is a warning.
CERT_WARN_DAYS = 30
#: The gateway's HTTP port (``[gateway] http_port``), for the clock comparison.
GATEWAY_HTTP_PORT = 8080


@dataclass(frozen=True)
class CheckResult:
    """One line of the self-test table."""

    name: str
    status: str
    detail: str


@dataclass(frozen=True)
class SelftestOptions:
    """How the self-test runs (all defaults suit a technician at the door)."""

    #: Where to read the gateway's clock: ``auto`` = ``http://<broker host>:8080/healthz``;
    #: ``None`` = do not ask (then NTP's own status is used).
    gateway_url: str | None = "auto"
    #: Per network or camera step.
    timeout_s: float = 5.0
    #: Frames the camera must deliver.
    frames: int = 3
    #: How long each output stays on and off, so the technician can see and hear it.
    gpio_step_s: float = 0.4


def _guard(name: str, check: Callable[[], CheckResult]) -> CheckResult:
    """Run one check; an unexpected error becomes its FAIL line, never a traceback."""
    try:
        return check()
    except Exception as exc:  # the table must always be printed
        return CheckResult(name, FAIL, f"{type(exc).__name__}: {exc}")


# ---------------------------------------------------------------------------------------------
# clock


def _load_pem_cert(path: Path) -> Any:
    from cryptography import x509

    return x509.load_pem_x509_certificate(Path(path).read_bytes())


def gateway_clock_offset(url: str, timeout_s: float) -> float:
    """Seconds this clock is ahead of the server at ``url`` (negative: behind), from its HTTP
    ``Date`` header, corrected for half the round trip. OSError when there is no answer."""
    started = time.time()
    request = urllib.request.Request(url, method="GET")
    try:
        with urllib.request.urlopen(request, timeout=timeout_s) as response:
            date = response.headers.get("Date")
    except urllib.error.HTTPError as exc:  # a 401/404 still carries the server's Date
        date = exc.headers.get("Date")
    ended = time.time()
    if not date:
        raise OSError(f"{url} sent no Date header")
    server = email.utils.parsedate_to_datetime(date).timestamp() + 0.5  # 1 s resolution
    return (started + ended) / 2 - server


def ntp_synchronized() -> bool | None:
    """systemd's view of NTP (``timedatectl``): True, False, or None when unknown."""
    if Path("/run/systemd/timesync/synchronized").exists():
        return True
    try:
        out = subprocess.run(["timedatectl", "show", "-p", "NTPSynchronized", "--value"],
                             capture_output=True, text=True, timeout=3, check=False)
    except (OSError, subprocess.TimeoutExpired):
        return None
    value = out.stdout.strip()
    return {"yes": True, "no": False}.get(value) if out.returncode == 0 else None


def check_clock(config: DeviceConfig, options: SelftestOptions,
                now: dt.datetime | None = None) -> CheckResult:
    """The clock is sane (not before 2025 / the CA's start), and in sync where that can be told.

    Certificates are checked against this clock, and every check-in is stamped with it, so a
    Pi that booted offline with a stale clock cannot connect, or reports the wrong arrivals.
    """
    now = now or dt.datetime.now(dt.UTC)
    floor = dt.datetime(EARLIEST_SANE_YEAR, 1, 1, tzinfo=dt.UTC)
    floor_what = f"{EARLIEST_SANE_YEAR}"
    if config.broker.ca_file is not None:
        ca_start = _load_pem_cert(config.broker.ca_file).not_valid_before_utc
        if ca_start > floor:
            floor, floor_what = ca_start, "the centre CA certificate's start"
    if now < floor:
        return CheckResult("clock", FAIL, f"clock says {now:%Y-%m-%d %H:%M} UTC, before "
                           f"{floor_what} ({floor:%Y-%m-%d}): TLS will refuse every "
                           "certificate. Connect the network (NTP) or set it: sudo date -s "
                           "'YYYY-MM-DD HH:MM:SS'")
    url = options.gateway_url
    if url == "auto":
        url = f"http://{config.broker.host}:{GATEWAY_HTTP_PORT}/healthz"
    note = ""
    if url:
        try:
            offset = gateway_clock_offset(url, options.timeout_s)
        except (OSError, ValueError, TypeError) as exc:
            note = f"gateway clock not readable ({url}: {getattr(exc, 'reason', exc)}); "
        else:
            direction = "ahead of" if offset > 0 else "behind"
            text = f"{abs(offset):.1f} s {direction} the gateway's clock ({url})"
            if abs(offset) > MAX_CLOCK_OFFSET_S:
                return CheckResult("clock", FAIL, f"{text}; more than {MAX_CLOCK_OFFSET_S:.0f} "
                                   "s: check NTP on both (timedatectl status)")
            return CheckResult("clock", PASS, text)
    synced = ntp_synchronized()
    if synced:
        return CheckResult("clock", PASS, f"{note}synchronised by NTP (timedatectl); "
                           f"{now:%Y-%m-%d %H:%M:%S} UTC")
    what = ("NTP reports NOT synchronised" if synced is False
            else "NTP status unknown (no timedatectl)")
    return CheckResult("clock", WARN, f"{note}{what}; clock {now:%Y-%m-%d %H:%M:%S} UTC is "
                       f"after {floor_what} but unverified: check it against a watch")


# ---------------------------------------------------------------------------------------------
# disk


def check_disk(config: DeviceConfig) -> CheckResult:
    """Free space under data_dir (the outbox must be able to hold a day offline), writable."""
    data_dir = config.gate.data_dir
    probe = data_dir
    while not probe.exists() and probe != probe.parent:
        probe = probe.parent
    free_mb = shutil.disk_usage(probe).free // 2**20
    detail = f"{free_mb} MB free at {probe}"
    if not data_dir.exists():
        detail += f" ({data_dir} not created yet; the service creates it)"
    elif not os.access(data_dir, os.W_OK | os.X_OK):
        return CheckResult("disk", FAIL, f"{data_dir} is not writable by this user (uid "
                           f"{os.getuid()}): sudo chown -R gerbang:gerbang {data_dir}")
    if free_mb < MIN_FREE_MB:
        return CheckResult("disk", FAIL, f"{detail}: below {MIN_FREE_MB} MB, free some space")
    if free_mb < LOW_FREE_MB:
        return CheckResult("disk", WARN, f"{detail}: below {LOW_FREE_MB} MB")
    return CheckResult("disk", PASS, detail)


# ---------------------------------------------------------------------------------------------
# certificate and broker


def check_certificate(config: DeviceConfig, now: dt.datetime | None = None) -> CheckResult:
    """The client certificate is this gate's: CN = device_id, OU = centre, from ca_file, in date.

    The broker takes the CN as the gate's identity and its ACL allows it only its own topics:
    a certificate for another id would have every event refused.
    """
    from cryptography.exceptions import InvalidSignature
    from cryptography.x509.oid import NameOID

    broker = config.broker
    if broker.ca_file is None:
        return CheckResult("certificate", WARN, "[broker] has no ca_file: plain MQTT without "
                           "TLS (demo only; a centre broker refuses it)")
    if broker.cert_file is None:
        return CheckResult("certificate", WARN, "[broker] has no cert_file/key_file: TLS "
                           "without a client certificate (a centre broker refuses it)")
    now = now or dt.datetime.now(dt.UTC)
    cert = _load_pem_cert(broker.cert_file)
    ca = _load_pem_cert(broker.ca_file)
    names = [a.value for a in cert.subject.get_attributes_for_oid(NameOID.COMMON_NAME)]
    units = [a.value for a in cert.subject.get_attributes_for_oid(
        NameOID.ORGANIZATIONAL_UNIT_NAME)]
    ident = config.gate
    if names != [ident.device_id]:
        return CheckResult("certificate", FAIL, f"{broker.cert_file} is for {names}, but "
                           f"device_id is {ident.device_id!r}: the broker would refuse every "
                           "event; install this gate's own bundle")
    if units and units != [ident.centre]:
        return CheckResult("certificate", FAIL, f"{broker.cert_file} is for centre {units}, but "
                           f"[gate] centre is {ident.centre!r}")
    try:
        cert.verify_directly_issued_by(ca)
    except (ValueError, TypeError, InvalidSignature):
        return CheckResult("certificate", FAIL, f"{broker.cert_file} was not issued by "
                           f"{broker.ca_file} (another centre's CA?)")
    start, end = cert.not_valid_before_utc, cert.not_valid_after_utc
    if now < start:
        return CheckResult("certificate", FAIL, f"not valid before {start:%Y-%m-%d %H:%M} UTC: "
                           "this clock is behind (see clock)")
    if now >= end:
        return CheckResult("certificate", FAIL, f"EXPIRED on {end:%Y-%m-%d}: `gerbang-provision "
                           f"device add {ident.device_id} --replace` and a new bundle")
    days = (end - now).days
    detail = (f"CN {ident.device_id}, centre {ident.centre}, issued by {broker.ca_file.name}, "
              f"valid until {end:%Y-%m-%d} ({days} days)")
    return CheckResult("certificate", WARN if days < CERT_WARN_DAYS else PASS,
                       detail + (": renew it soon" if days < CERT_WARN_DAYS else ""))


def check_broker(config: DeviceConfig, options: SelftestOptions) -> CheckResult:
    """Connect to the broker as the gate does (TLS and certificate), then disconnect.

    With a client certificate the broker uses its CN as client id, i.e. the gate's own session:
    the test resumes it (clean start off, same expiry) and acknowledges nothing, so commands
    queued for the gate stay queued.
    """
    import paho.mqtt.client as mqtt

    from gerbang.mqtt import make_client

    broker, ident = config.broker, config.gate
    where = f"{broker.host}:{broker.port}" + (" (TLS)" if broker.tls else " (no TLS)")
    keep_session = broker.cert_file is not None
    client = make_client(f"gerbang-selftest-{ident.device_id}", broker,
                         persistent_session=keep_session)
    client.disable_logger()
    client.manual_ack_set(True)
    client.connect_timeout = options.timeout_s
    outcome: dict[str, Any] = {}
    done = threading.Event()

    def on_connect(c: mqtt.Client, userdata: Any, flags: Any, reason: Any,
                   properties: Any = None) -> None:
        outcome["connack"] = reason
        done.set()

    def on_disconnect(c: mqtt.Client, userdata: Any, flags: Any, reason: Any,
                      properties: Any = None) -> None:
        outcome.setdefault("dropped", reason)
        done.set()

    client.on_connect, client.on_disconnect = on_connect, on_disconnect
    started = time.monotonic()
    try:
        if broker.protocol == 5:
            from paho.mqtt.packettypes import PacketTypes
            from paho.mqtt.properties import Properties

            props = Properties(PacketTypes.CONNECT)
            if keep_session:
                props.SessionExpiryInterval = 24 * 3600  # as the uplink: keep the session
            client.connect(broker.host, broker.port, keepalive=broker.keepalive_s,
                           clean_start=not keep_session, properties=props)
        else:
            client.connect(broker.host, broker.port, keepalive=broker.keepalive_s)
    except ssl.SSLCertVerificationError as exc:
        return CheckResult("broker", FAIL, f"{where}: the broker's certificate is not "
                           f"accepted ({exc.verify_message}): is ca_file this centre's ca.pem, "
                           f"and is {broker.tls_server_name or broker.host!r} in the broker's "
                           "certificate?")
    except ssl.SSLError as exc:
        return CheckResult("broker", FAIL, f"{where}: TLS handshake failed ({exc.reason or exc})"
                           ": the broker refused this gate's certificate (revoked, another "
                           "centre's, expired?) or does not speak TLS on this port")
    except ConnectionRefusedError:
        return CheckResult("broker", FAIL, f"{where}: connection refused: nothing listens "
                           "there. Is Mosquitto running on the broker host, and the port right?")
    except socket.gaierror as exc:
        return CheckResult("broker", FAIL, f"{where}: cannot resolve {broker.host!r} "
                           f"({exc.strerror}): check the name or use the broker's IP address")
    except TimeoutError:
        return CheckResult("broker", FAIL, f"{where}: no answer within {options.timeout_s:.0f} s"
                           ": wrong address, network down, or a firewall")
    except OSError as exc:
        return CheckResult("broker", FAIL, f"{where}: {exc.strerror or exc}")
    client.loop_start()
    try:
        done.wait(options.timeout_s)
        elapsed_ms = (time.monotonic() - started) * 1000
        connack = outcome.get("connack")
        if connack is None:
            if "dropped" in outcome:
                return CheckResult("broker", FAIL, f"{where}: the broker closed the connection "
                                   "before accepting it: it refused this gate's certificate "
                                   "(revoked, another centre's, or expired; see the broker's "
                                   "log)")
            return CheckResult("broker", FAIL, f"{where}: no MQTT answer within "
                               f"{options.timeout_s:.0f} s")
        if connack.is_failure:
            return CheckResult("broker", FAIL, f"{where}: the broker refused the connection: "
                               f"{connack}")
        sock = client.socket()
        version = sock.version() if isinstance(sock, ssl.SSLSocket) else None
        who = f" as {ident.device_id}" if keep_session else ""
        return CheckResult("broker", PASS, f"connected to {broker.host}:{broker.port}{who}"
                           + (f" over {version}" if version else " WITHOUT TLS")
                           + f" in {elapsed_ms:.0f} ms, then disconnected")
    finally:
        client.disconnect()
        client.loop_stop()


# ---------------------------------------------------------------------------------------------
# models and camera


def check_models(config: DeviceConfig) -> CheckResult:
    """Every model matches its manifest sha256, and the models load and run on a blank frame."""
    import numpy as np

    from device.infer.bundle import load_bundle
    from device.infer.pipeline import FacePipeline

    bundle = load_bundle(config.models.bundle_dir)  # ModelBundleError names a bad file
    started = time.monotonic()
    pipeline = FacePipeline.from_bundle(bundle, config.models.threads, config.models.runtime)
    pipeline.read(np.zeros((480, 640, 3), np.uint8))
    extra = ""
    if config.liveness.enabled and config.liveness.passive:
        from device.infer.liveness import PassiveLiveness

        PassiveLiveness.from_json(bundle=bundle, threads=config.models.threads,
                                  runtime=config.models.runtime)
        extra = " + liveness classifier"
    hashes = ", ".join(f"{role} {sha[:12]}" for role, sha in bundle.hashes().items())
    return CheckResult("models", PASS, f"{len(bundle.hashes())} files match the manifest "
                       f"({hashes}); loaded{extra} and ran in "
                       f"{(time.monotonic() - started) * 1000:.0f} ms")


def check_camera(config: DeviceConfig, options: SelftestOptions) -> CheckResult:
    """The configured camera opens and delivers frames within the timeout."""
    from device.processes.assembly import open_source

    capture = config.capture
    what = capture.source if capture.source != "replay" else f"replay {capture.path}"
    if capture.source == "replay" and capture.path is not None and not capture.path.exists():
        return CheckResult("camera", FAIL, f"{what}: does not exist")
    source = open_source(capture)
    frames: list[Any] = []
    failure: list[BaseException] = []

    def pull() -> None:
        try:
            for frame in source.frames():
                frames.append(frame)
                if len(frames) >= options.frames:
                    return
        except BaseException as exc:  # reported below
            failure.append(exc)

    started = time.monotonic()
    reader = threading.Thread(target=pull, name="selftest-camera", daemon=True)
    reader.start()
    reader.join(options.timeout_s)
    elapsed = time.monotonic() - started
    source.close()
    reader.join(1.0)
    if failure:
        return CheckResult("camera", FAIL, f"{what}: {failure[0]}")
    if not frames:
        hint = ("is the ribbon cable seated, the camera enabled (rpicam-hello --list-cameras), "
                "and the gate service stopped?" if capture.source != "replay"
                else "no readable image in it")
        return CheckResult("camera", FAIL, f"{what}: no frame within {options.timeout_s:.0f} s: "
                           f"{hint}")
    height, width = frames[0].image.shape[:2]
    status = PASS if len(frames) >= options.frames or capture.source == "replay" else WARN
    return CheckResult("camera", status, f"{what}: {len(frames)} frame(s) {width}x{height} in "
                       f"{elapsed:.1f} s")


# ---------------------------------------------------------------------------------------------
# GPIO


def check_gpio(config: DeviceConfig, options: SelftestOptions) -> CheckResult:
    """Toggle every output once (relay, LED red/green/blue, buzzer) and read every input.

    The relay is driven through ``LockRelay`` so the lock type is respected: fail-secure
    releases for one step, fail-safe drops its hold for one step. Reading back the pin state
    proves the pin is driven; that the relay clicks, the LED lights and the buzzer sounds only
    the technician can see and hear.
    """
    from gpiozero import OutputDevice
    from gpiozero.exc import GPIOPinInUse

    from device.gate.lock import LockRelay
    from device.gate.pins import use_pin_factory
    from device.gate.switch import Switch

    gpio = config.gpio
    factory = use_pin_factory(gpio.pin_factory)
    opened: list[Any] = []
    problems: list[str] = []
    try:
        relay = LockRelay(gpio.relay_pin, gpio.relay_pulse_s, active_high=gpio.relay_active_high,
                          fail_safe=gpio.fail_safe)
        opened.append(relay)
        relay.release()
        time.sleep(options.gpio_step_s)
        released = relay.released
        relay.lock()
        time.sleep(options.gpio_step_s)
        if not released or relay.released:
            problems.append(f"relay BCM {gpio.relay_pin} did not follow release/lock")
        outputs = (("LED red", gpio.red_pin, gpio.led_active_high),
                   ("LED green", gpio.green_pin, gpio.led_active_high),
                   ("LED blue", gpio.blue_pin, gpio.led_active_high),
                   ("buzzer", gpio.buzzer_pin, gpio.buzzer_active_high))
        for name, pin, active_high in outputs:
            device = OutputDevice(pin, active_high=active_high, initial_value=False)
            opened.append(device)
            device.on()
            time.sleep(options.gpio_step_s)
            on_ok = device.value == 1
            device.off()
            time.sleep(options.gpio_step_s / 2)
            if not on_ok or device.value != 0:
                problems.append(f"{name} BCM {pin} did not follow on/off")
        readings = []
        for name, meaning in (("door_contact", ("shut", "OPEN")),
                              ("exit_button", ("released", "PRESSED")),
                              ("override_key", ("off", "TURNED")),
                              ("tamper", ("lid closed", "LID OPEN"))):
            switch_config = getattr(gpio, name)
            switch = Switch(switch_config.pin, switch_config.pull, switch_config.active,
                            switch_config.bounce_s)
            opened.append(switch)
            readings.append(f"{name.replace('_', ' ')} {meaning[switch.is_active]}")
            if name == "tamper" and switch.is_active:
                problems.append("tamper switch reads the enclosure open")
    except GPIOPinInUse as exc:
        return CheckResult("gpio", FAIL, f"{exc}: is the gate service running? sudo systemctl "
                           "stop gerbang-device, then test again")
    except Exception as exc:
        text = str(exc)
        hint = (" (is the gate service running? sudo systemctl stop gerbang-device)"
                if "busy" in text.lower() else "")
        return CheckResult("gpio", FAIL, f"{type(exc).__name__}: {text}{hint}")
    finally:
        for device in reversed(opened):
            device.close()
    pins = (f"relay {gpio.relay_pin}, LED {gpio.red_pin}/{gpio.green_pin}/{gpio.blue_pin}, "
            f"buzzer {gpio.buzzer_pin}")
    where = "MockFactory pins, nothing real was driven" if factory == "mock" else "real pins"
    detail = f"toggled {pins} ({where}); read: {', '.join(readings)}"
    if any("did not follow" in p for p in problems):
        return CheckResult("gpio", FAIL, "; ".join(problems) + f"; {detail}")
    if problems:
        return CheckResult("gpio", WARN, "; ".join(problems) + f"; {detail}")
    if factory == "mock" and gpio.pin_factory == "auto":
        return CheckResult("gpio", WARN, f"not a Raspberry Pi: {detail}")
    return CheckResult("gpio", PASS, detail)


# ---------------------------------------------------------------------------------------------
# roster keys and roster


def check_roster(config: DeviceConfig) -> CheckResult:
    """Roster keys load, and a roster for this session and room is installed or waiting.

    The gate service refuses to start without one, so its absence is reported; a roster can
    also arrive later (copied into ``incoming/``), hence a warning rather than a failure.
    """
    from device.manage.keyfile import key_id, read_secret_key
    from device.manage.roster_file import load_roster_public_key
    from device.manage.signed_layout import public_key_id
    from device.manage.template_store import read_store_header, store_path

    keys, ident = config.keys, config.gate
    if not keys.signed_rosters:
        where = config.roster_path
        state = "present" if where.exists() else "MISSING"
        return CheckResult("roster", WARN, f"no [keys]: plain roster {where} ({state}), "
                           "templates unencrypted on disk (demo and tests only)")
    assert keys.roster_public_key and keys.roster_transport_key and keys.storage_key
    public = public_key_id(load_roster_public_key(keys.roster_public_key))
    room_key = key_id(read_secret_key(keys.roster_transport_key, "roster transport key"))
    read_secret_key(keys.storage_key, "storage key")
    detail = f"keys OK (signer {public}, room key {room_key}); "
    installed = store_path(ident.data_dir, ident.session, ident.room)
    waiting = sorted(config.incoming_dir.glob("*.roster.signed")) \
        if config.incoming_dir.is_dir() else []
    if installed.exists():
        header = read_store_header(installed)
        detail += f"roster v{header.get('version')} installed for {ident.session}/{ident.room}"
        if waiting:
            detail += f"; {len(waiting)} more waiting in incoming/"
        return CheckResult("roster", PASS, detail)
    if waiting:
        return CheckResult("roster", PASS, detail + f"{len(waiting)} signed roster(s) waiting in "
                           f"{config.incoming_dir} (installed at start)")
    return CheckResult("roster", WARN, detail + f"NO roster for session {ident.session} room "
                       f"{ident.room}: the service will not start until its .roster.signed is "
                       f"copied into {config.incoming_dir}")


# ---------------------------------------------------------------------------------------------
# running and reporting


def run_selftest(config_path: Path, options: SelftestOptions | None = None,
                 ) -> tuple[DeviceConfig | None, list[CheckResult]]:
    """Every check in order; the config failing to load is the only thing that stops the rest."""
    options = options or SelftestOptions()
    try:
        config = load_device_config(config_path)
    except ConfigError as exc:
        return None, [CheckResult("config", FAIL, str(exc))]
    results = [CheckResult("config", PASS, f"{config_path}: valid")]
    checks: list[tuple[str, Callable[[], CheckResult]]] = [
        ("clock", lambda: check_clock(config, options)),
        ("disk", lambda: check_disk(config)),
        ("certificate", lambda: check_certificate(config)),
        ("broker", lambda: check_broker(config, options)),
        ("models", lambda: check_models(config)),
        ("camera", lambda: check_camera(config, options)),
        ("gpio", lambda: check_gpio(config, options)),
        ("roster", lambda: check_roster(config)),
    ]
    for name, check in checks:
        results.append(_guard(name, check))
    return config, results


def passed(results: list[CheckResult]) -> bool:
    """True when no check failed (warnings and skipped checks do not fail the gate)."""
    return all(r.status != FAIL for r in results)


def format_table(config_path: Path, config: DeviceConfig | None,
                 results: list[CheckResult]) -> str:
    """The pass/fail table the technician reads, ending with one RESULT line."""
    if config is not None:
        ident = config.gate
        title = (f"Gerbang gate self-test: {ident.device_id} (centre {ident.centre}, room "
                 f"{ident.room}, session {ident.session})")
    else:
        title = "Gerbang gate self-test"
    lines = [title, f"config {config_path}, {dt.datetime.now(dt.UTC):%Y-%m-%d %H:%M:%S} UTC", "",
             f"  {'check':12s} {'result':6s}  detail"]
    for r in results:
        lines.append(f"  {r.name:12s} {r.status:6s}  {r.detail}")
    failed = [r.name for r in results if r.status == FAIL]
    warned = [r.name for r in results if r.status == WARN]
    lines.append("")
    if failed:
        lines.append(f"RESULT: FAIL ({len(failed)} of {len(results)} checks failed: "
                     f"{', '.join(failed)})")
    else:
        lines.append(f"RESULT: PASS (all {len(results)} checks"
                     + (f"; look at the warnings: {', '.join(warned)})" if warned else ")"))
    return "\n".join(lines)


def as_json(config: DeviceConfig | None, results: list[CheckResult]) -> str:
    """The results as one JSON object (``ok``, ``device_id``, ``checks``)."""
    return json.dumps({"ok": passed(results),
                       "device_id": config.gate.device_id if config else None,
                       "checks": [asdict(r) for r in results]})
