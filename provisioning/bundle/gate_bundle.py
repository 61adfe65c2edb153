"""The bundle that turns a blank Pi into one of the centre's gates: its files, checked as the gate
will check them, and its archive.

``devices/<device>/`` *is* the gate's bundle once ``write_bundle`` has filled it::

    device.toml          the gate's config: ids, broker with TLS paths, camera, pins, [keys]
    tls/ca.pem           the centre CA (what the gate trusts)
    tls/<device>.pem     the gate's client certificate (CN = device id)
    tls/<device>.key     its private key, when made here (absent in the CSR flow)
    keys/                roster-signing.pub, roster-transport.key, storage.key
    incoming/            signed rosters to install at first start (optional)
    WIRING.txt           the pin map for whoever wires the door
    install.sh           copies everything into place on the Pi with the right modes
    bundle.json          what the bundle is for, and the sha256 of every file

Paths inside ``device.toml`` are where the files end up on the Pi (``/etc/gerbang``,
``/var/lib/gerbang`` by default), which ``install.sh`` honours; ``install_commands``
(provisioning.bundle.on_the_pi) copies the bundle over SSH and runs it there.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import hashlib
import io
import json
import shlex
import shutil
import tarfile
import tomllib
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from device.config import GpioConfig, parse_device_config
from gerbang.config import ConfigError, load_section
from provisioning import pki
from provisioning.bundle.centre import DEVICE_FILE, Centre
from provisioning.bundle.certificates import DeviceRecord, load_device
from provisioning.bundle.common import (
    DEFAULT_DATA_DIR,
    DEFAULT_ETC_DIR,
    DEFAULT_VENV,
    SERVICE_USER,
    ProvisionError,
    check_id,
    copy_file,
    now_iso,
    toml_value,
    write_json,
)
from provisioning.files import write_file

BUNDLE_FILE = "bundle.json"
CAMERAS = ("picamera2", "v4l2", "replay")

#: Raspberry Pi 40-pin header: BCM number → physical pin, for the wiring sheet.
BCM_TO_HEADER = {2: 3, 3: 5, 4: 7, 5: 29, 6: 31, 7: 26, 8: 24, 9: 21, 10: 19, 11: 23, 12: 32,
                 13: 33, 14: 8, 15: 10, 16: 36, 17: 11, 18: 12, 19: 35, 20: 38, 21: 40, 22: 15,
                 23: 16, 24: 18, 25: 22, 26: 37, 27: 13}


@dataclass(frozen=True)
class BundleOptions:
    """What a gate's bundle should say beyond what the centre folder knows."""

    session: str
    etc_dir: str = DEFAULT_ETC_DIR
    data_dir: str = DEFAULT_DATA_DIR
    camera: str = "picamera2"
    #: For ``camera = "replay"``: the folder, playlist or video the gate replays.
    replay_path: str | None = None
    #: A TOML file with a ``[gpio]`` table (the door's wiring); default: the standard wiring.
    pin_map: Path | None = None
    pin_factory: str = "auto"
    #: The name or address this gate reaches the broker by (default: the centre's first).
    broker_host: str | None = None
    #: Signed rosters (``.roster.signed``) to install at the gate's first start.
    rosters: tuple[Path, ...] = ()
    #: Liveness step on (default: on for a real camera, off for replayed stills).
    liveness: bool | None = None
    model_threads: int = 2


def load_pin_map(path: Path | None, pin_factory: str) -> GpioConfig:
    """The door's ``[gpio]`` table from ``path`` (validated, naming the bad field), or the
    standard wiring; ``pin_factory`` applied."""
    data: dict[str, Any] = {}
    if path is not None:
        try:
            doc = tomllib.loads(Path(path).read_text())
        except FileNotFoundError:
            raise ProvisionError(f"--pins: {path} does not exist") from None
        except tomllib.TOMLDecodeError as exc:
            raise ProvisionError(f"--pins: {path}: {exc}") from None
        data = doc.get("gpio", doc)
        if not isinstance(data, dict):
            raise ProvisionError(f"--pins: {path}: [gpio] must be a table")
    data = {**data, "pin_factory": pin_factory}
    try:
        return load_section(GpioConfig, data, "gpio")
    except ConfigError as exc:
        raise ProvisionError(f"--pins {path}: {exc}") from None


def wiring_sheet(device_id: str, room: str, gpio: GpioConfig) -> str:
    """The pin map as a sheet for the electrician: what, BCM number, header pin, polarity."""
    rows = [
        ("lock relay", gpio.relay_pin,
         f"relay board input; {'active high' if gpio.relay_active_high else 'active low'}; "
         + ("FAIL-SAFE: energised = locked, power loss releases the door" if gpio.fail_safe
            else "fail-secure: energised = released, power loss keeps the door locked")),
        ("status LED red", gpio.red_pin, "common cathode" if gpio.led_active_high
         else "common anode"),
        ("status LED green", gpio.green_pin, ""),
        ("status LED blue", gpio.blue_pin, ""),
        ("buzzer", gpio.buzzer_pin, "active high" if gpio.buzzer_active_high else "active low"),
    ]
    switches = (("door contact", gpio.door_contact, "on = door open"),
                ("exit button", gpio.exit_button, "on = pressed"),
                ("override key", gpio.override_key, "on = key turned"),
                ("tamper switch", gpio.tamper, "on = enclosure open"))
    for name, switch, meaning in switches:
        rows.append((name, switch.pin, f"pull {switch.pull}, {meaning} reads {switch.active}"))
    lines = [f"Wiring of gate {device_id} (room {room}); BCM numbering, header = physical pin "
             "on the 40-pin header. Ground: header pins 6, 9, 14, 20, 25, 30, 34, 39.", "",
             f"{'what':18s} {'BCM':>4s} {'header':>6s}  notes",
             f"{'-' * 18} {'-' * 4} {'-' * 6}  {'-' * 40}"]
    for name, pin, note in rows:
        lines.append(f"{name:18s} {pin:>4d} {BCM_TO_HEADER.get(pin, 0):>6d}  {note}")
    lines += ["", "Check after wiring: gerbang-device selftest --config "
              "/etc/gerbang/device.toml (the relay clicks, the LED shows red, green, blue, the "
              "buzzer beeps; every input is read and shown).", ""]
    return "\n".join(lines)


def device_toml(centre: Centre, record: DeviceRecord, options: BundleOptions,
                gpio: GpioConfig) -> str:
    """The gate's ``device.toml``, commented for the technician who opens it on the Pi."""
    etc = options.etc_dir.rstrip("/") or "/"
    tls, keys = f"{etc}/tls", f"{etc}/keys"
    host = options.broker_host or centre.broker_hosts[0]
    liveness = options.liveness if options.liveness is not None else options.camera != "replay"
    lines = [
        f"# Gerbang gate {record.device_id}: centre {centre.centre_id}, room {record.room}.",
        "# Written by `gerbang-provision bundle`; make the bundle again rather than editing",
        "# (the certificate, keys and ids below belong together). Every key is checked at start.",
        "",
        "[gate]",
        f"device_id = {toml_value(record.device_id)}   # = the CN of its certificate",
        f"centre = {toml_value(centre.centre_id)}",
        f"room = {toml_value(record.room)}",
        f"session = {toml_value(options.session)}          # the exam session this gate serves",
        f"data_dir = {toml_value(options.data_dir)}",
        "",
        "[broker]",
        "# Mutual TLS: the gate trusts only the centre CA and proves who it is with its own",
        "# certificate; the broker refuses anything else.",
        f"host = {toml_value(host)}",
        f"port = {centre.broker_port}",
        "protocol = 5",
        f"ca_file = {toml_value(f'{tls}/{pki.CA_CERT}')}",
        f"cert_file = {toml_value(f'{tls}/{record.device_id}.pem')}",
        f"key_file = {toml_value(f'{tls}/{record.device_id}.key')}"
        + ("   # made on the gate itself" if record.key_on_device else ""),
    ]
    if host not in centre.broker_hosts:
        lines.append(f"tls_server_name = {toml_value(centre.broker_hosts[0])}   # the name in the "
                     "broker's certificate")
    lines += ["", "[capture]", f"source = {toml_value(options.camera)}"]
    if options.camera == "replay":
        lines.append(f"path = {toml_value(options.replay_path)}")
    lines += ["", "[models]", f"threads = {options.model_threads}", "",
              "[liveness]", f"enabled = {toml_value(liveness)}"
              + ("" if liveness else "   # replayed stills cannot answer a challenge"), "",
              "[gpio]", "# BCM numbering; the wiring sheet is WIRING.txt in the bundle."]
    for f in dataclasses.fields(gpio):
        lines.append(f"{f.name} = {toml_value(getattr(gpio, f.name))}")
    lines += ["", "[keys]",
              "# The gate's share of the roster keys: signed, encrypted rosters only.",
              f"roster_public_key = {toml_value(f'{keys}/roster-signing.pub')}",
              f"roster_transport_key = {toml_value(f'{keys}/roster-transport.key')}",
              f"storage_key = {toml_value(f'{keys}/storage.key')}", ""]
    return "\n".join(lines)


def _check_device_toml(text: str, bundle_dir: Path, etc_dir: str, record: DeviceRecord) -> None:
    """Validate the generated config as the gate will, with its files where the bundle has them.

    The TLS paths point at ``etc_dir`` on the Pi; for the check they are mapped into the
    bundle folder. A key made on the gate is not here, so the client pair is left out then.
    """
    data = tomllib.loads(text)
    broker = data["broker"]
    for name in ("ca_file", "cert_file", "key_file"):
        value = broker[name]
        if value.startswith(etc_dir.rstrip("/") + "/"):
            broker[name] = str(bundle_dir / value[len(etc_dir.rstrip("/")) + 1:])
    if record.key_on_device:
        del broker["cert_file"], broker["key_file"]
    try:
        parse_device_config(data)
    except ConfigError as exc:
        raise ProvisionError(f"the generated device.toml would not start: {exc}") from None


def _check_roster(path: Path, centre: Centre, record: DeviceRecord, session: str,
                  keys_dir: Path) -> None:
    """Refuse now, with the gate's own reason, a signed roster the gate would refuse at the door:
    another centre, session or room, templates from another model than the one shipped with
    this Gerbang, not signed by this centre, or not openable with the room's key."""
    from device.decide.roster import RosterError
    from device.infer.bundle import load_bundle
    from device.manage.keyfile import read_secret_key
    from device.manage.roster_file import load_roster_public_key, verify_signed_roster

    try:
        verify_signed_roster(
            Path(path).read_bytes(),
            public_key=load_roster_public_key(keys_dir / "roster-signing.pub"),
            transport_key=read_secret_key(keys_dir / "roster-transport.key",
                                          "roster transport key"),
            centre=centre.centre_id, session=session, room=record.room,
            embedder_sha256=load_bundle().hashes()["embedder"])
    except FileNotFoundError:
        raise ProvisionError(f"--roster: {path} does not exist") from None
    except RosterError as exc:
        raise ProvisionError(f"--roster {path}: gate {record.device_id} (room {record.room}, "
                             f"session {session}) would refuse it: {exc}") from None


def install_script(record: DeviceRecord, options: BundleOptions,
                   service_user: str = SERVICE_USER) -> str:
    """``install.sh``: puts the bundle's files where ``device.toml`` says, with safe modes.

    Run on the Pi as root (``sudo sh install.sh``); ``DESTDIR=/mnt/rootfs`` writes into a
    mounted SD card instead. Files are owned by the service user when it exists.
    """
    dev = record.device_id
    etc, data = options.etc_dir.rstrip("/"), options.data_dir.rstrip("/")
    key_line = (f'if [ -f "$here/tls/{dev}.key" ]; then install -m 0600 "$here/tls/{dev}.key" '
                f'"$etc/tls/{dev}.key"; fi')
    return f"""#!/bin/sh
# Install the Gerbang bundle of gate {dev} (room {record.room}, session {options.session}).
# On the Pi, from the bundle folder:      sudo sh install.sh
# Onto a mounted SD card's root instead:  sudo DESTDIR=/media/$USER/rootfs sh install.sh
# Written by `gerbang-provision bundle`; make the bundle again rather than editing this.
set -eu
here=$(cd "$(dirname "$0")" && pwd)
dest="${{DESTDIR:-}}"
etc="$dest"{shlex.quote(etc)}
data="$dest"{shlex.quote(data)}
user={shlex.quote(service_user)}
install -d -m 0755 "$etc"
install -d -m 0700 "$etc/tls" "$etc/keys" "$data" "$data/incoming"
install -m 0644 "$here/device.toml" "$etc/device.toml"
install -m 0644 "$here/tls/ca.pem" "$etc/tls/ca.pem"
install -m 0644 "$here/tls/{dev}.pem" "$etc/tls/{dev}.pem"
{key_line}
install -m 0644 "$here/keys/roster-signing.pub" "$etc/keys/roster-signing.pub"
install -m 0600 "$here/keys/roster-transport.key" "$etc/keys/roster-transport.key"
install -m 0600 "$here/keys/storage.key" "$etc/keys/storage.key"
for roster in "$here"/incoming/*.roster.signed; do
    [ -e "$roster" ] || continue
    install -m 0600 "$roster" "$data/incoming/"
done
if [ ! -f "$etc/tls/{dev}.key" ]; then
    echo "WARNING: $etc/tls/{dev}.key is missing: this gate's key must be made on it (see" >&2
    echo "  gerbang-provision device csr-command {dev}) before the gate can connect." >&2
fi
if [ -z "$dest" ] && [ "$(id -u)" = 0 ] && id "$user" >/dev/null 2>&1; then
    # The service replaces device.toml itself when the gateway pushes a config: it owns the file
    # and its folder (systemd lets it write /etc/gerbang and /var/lib/gerbang, nothing else).
    chown "$user:$user" "$etc" "$etc/device.toml"
    chown -R "$user:$user" "$etc/tls" "$etc/keys" "$data"
    echo "gate {dev}: files installed under $etc and $data, owned by $user"
else
    echo "gate {dev}: files installed under $etc and $data"
    echo "NOTE: not owned by the '$user' service user yet; on the Pi run:" >&2
    echo "  sudo chown $user:$user {etc} {etc}/device.toml" >&2
    echo "  sudo chown -R $user:$user {etc}/tls {etc}/keys {data}" >&2
fi
echo "next: sudo -u $user {DEFAULT_VENV}/bin/gerbang-device selftest --config {etc}/device.toml"
"""


def write_bundle(centre: Centre, device_id: str, options: BundleOptions) -> Path:
    """Fill ``devices/<device>/`` with everything the gate needs (see the module docstring).

    Checked first: the device was added and its certificate is neither expired nor revoked,
    the session id, the camera, the pin map. Then the gate's roster keys are exported (kept if
    already there: its storage key is made once), every roster is checked with them as the
    gate will (this centre's signature, this gate's room and session), and the generated
    ``device.toml`` is validated as the gate will, before it and the rest are written.
    Returns the bundle folder.
    """
    from provisioning.signing import export_device_keys, load_roster_keys

    record = load_device(centre, device_id)
    check_id("session", options.session)
    if options.camera not in CAMERAS:
        raise ProvisionError(f"--camera must be one of {', '.join(CAMERAS)}, got "
                             f"{options.camera!r}")
    if options.camera == "replay" and not options.replay_path:
        raise ProvisionError("--replay-path is required with --camera replay")
    for what, value in (("--etc-dir", options.etc_dir), ("--data-dir", options.data_dir)):
        if not value.startswith("/"):
            raise ProvisionError(f"{what} must be an absolute path on the Pi, got {value!r}")
    cert = pki.load_certificate(record.cert_path)
    if cert.not_valid_after_utc <= dt.datetime.now(dt.UTC):
        raise ProvisionError(f"{record.cert_path} expired on "
                             f"{cert.not_valid_after_utc:%Y-%m-%d}; `gerbang-provision device "
                             f"add {device_id} --room {record.room} --replace`")
    revoked = json.loads((centre.ca_dir / pki.REVOKED_FILE).read_text())["revoked"]
    if any(int(entry["serial"], 16) == record.serial for entry in revoked):
        raise ProvisionError(f"{device_id}'s certificate (serial {record.serial:x}) is revoked; "
                             f"`gerbang-provision device add {device_id} --room {record.room} "
                             "--replace` first")
    gpio = load_pin_map(options.pin_map, options.pin_factory)
    folder = record.folder
    keys = load_roster_keys(centre.roster_keys_dir)
    if keys.centre != centre.centre_id:
        raise ProvisionError(f"roster keys in {centre.roster_keys_dir} are centre "
                             f"{keys.centre}'s, not {centre.centre_id}'s")
    export_device_keys(keys, record.room, folder / "keys")
    for roster in options.rosters:
        _check_roster(roster, centre, record, options.session, folder / "keys")
    copy_file(centre.ca_dir / pki.CA_CERT, folder / "tls" / pki.CA_CERT, 0o644)
    text = device_toml(centre, record, options, gpio)
    _check_device_toml(text, folder, options.etc_dir, record)
    write_file(folder / "device.toml", text)
    incoming = folder / "incoming"
    if incoming.is_dir():
        shutil.rmtree(incoming)  # only this bundle's rosters, never one left from before
    for roster in options.rosters:
        copy_file(roster, incoming / Path(roster).name, 0o600)
    write_file(folder / "WIRING.txt", wiring_sheet(device_id, record.room, gpio))
    write_file(folder / "install.sh", install_script(record, options), 0o755)
    files = {str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest()
             for p in sorted(folder.rglob("*")) if p.is_file() and _goes_to_the_gate(p)
             and p.name != BUNDLE_FILE}
    write_json(folder / BUNDLE_FILE, {
        "device_id": device_id, "centre": centre.centre_id, "room": record.room,
        "session": options.session, "etc_dir": options.etc_dir, "data_dir": options.data_dir,
        "key_on_device": record.key_on_device, "certificate_serial": f"{record.serial:x}",
        "created": now_iso(), "files": files})
    return folder


def _goes_to_the_gate(path: Path) -> bool:
    """Everything in the device folder but the CSR, the laptop's record and hidden files."""
    return not (path.name.startswith(".") or path.suffix == ".csr" or path.name == DEVICE_FILE)


def bundle_info(bundle_dir: Path) -> dict[str, Any]:
    """``bundle.json`` of a bundle folder; ProvisionError if it was never made."""
    try:
        return json.loads((Path(bundle_dir) / BUNDLE_FILE).read_text())
    except FileNotFoundError:
        raise ProvisionError(f"{bundle_dir} holds no bundle yet; make it with "
                             "`gerbang-provision bundle`") from None


def _tar_filter(info: tarfile.TarInfo) -> tarfile.TarInfo:
    """Archive entries owned by root, not by whoever ran the tool on the laptop."""
    info.uid = info.gid = 0
    info.uname = info.gname = "root"
    return info


def default_archive_path(bundle_dir: Path) -> Path:
    """``devices/<device>.tar.gz`` next to the bundle folder (ids may contain dots)."""
    return Path(bundle_dir).parent / f"{Path(bundle_dir).name}.tar.gz"


def write_bundle_archive(bundle_dir: Path, out: Path) -> Path:
    """``bundle_dir`` as a .tar.gz (mode 0600: it holds keys), top folder = the device id."""
    bundle_dir = Path(bundle_dir)
    info = bundle_info(bundle_dir)
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w:gz") as tar:
        for path in sorted(bundle_dir.rglob("*")):
            if not _goes_to_the_gate(path):
                continue
            tar.add(path, arcname=f"{info['device_id']}/{path.relative_to(bundle_dir)}",
                    recursive=False, filter=_tar_filter)
    write_file(Path(out), buffer.getvalue(), 0o600)
    return Path(out)
