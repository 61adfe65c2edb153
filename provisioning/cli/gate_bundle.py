"""A gate's bundle: ``bundle`` fills its folder (and archive), ``install`` puts it on the Pi over
SSH, or into a mounted SD card's root."""

from __future__ import annotations

import argparse
import logging
import shlex
import subprocess
import sys
from pathlib import Path

from provisioning.cli.centre import centre_folder

log = logging.getLogger("provision")


def _cmd_bundle(args: argparse.Namespace) -> int:
    from provisioning.bundle import (
        BundleOptions,
        default_archive_path,
        load_centre,
        write_bundle,
        write_bundle_archive,
    )

    centre = load_centre(centre_folder(args))
    options = BundleOptions(
        session=args.session, etc_dir=args.etc_dir, data_dir=args.data_dir, camera=args.camera,
        replay_path=args.replay_path, pin_map=args.pins, pin_factory=args.pin_factory,
        broker_host=args.broker_host, rosters=tuple(args.roster),
        liveness=None if args.liveness is None else args.liveness == "on",
        model_threads=args.model_threads)
    folder = write_bundle(centre, args.device, options)
    print(f"Bundle of {args.device} (session {args.session}) in {folder}:")
    print("  device.toml, tls/, keys/, WIRING.txt, install.sh"
          + (f", incoming/ ({len(args.roster)} signed roster(s))" if args.roster else ""))
    if args.tar is not None:
        out = Path(args.tar) if args.tar else default_archive_path(folder)
        write_bundle_archive(folder, out)
        print(f"  archive: {out} (mode 0600: it holds the gate's keys)")
    print(f"Next: gerbang-provision install {args.device} --host pi@ADDRESS, or copy the "
          "folder to the Pi and run `sudo sh install.sh` in it.")
    return 0


def _cmd_install(args: argparse.Namespace) -> int:
    from provisioning.bundle import (
        bundle_info,
        default_archive_path,
        install_commands,
        install_local,
        load_centre,
        load_device,
        write_bundle_archive,
    )

    centre = load_centre(centre_folder(args))
    folder = load_device(centre, args.device).folder
    info = bundle_info(folder)
    if args.root:
        if args.dry_run:
            print(shlex.join(["env", f"DESTDIR={args.root}", "sh",
                              str(folder / "install.sh")]))
            return 0
        done = install_local(folder, args.root)
        sys.stdout.write(done.stdout)
        sys.stderr.write(done.stderr)
        return 0 if done.returncode == 0 else 1
    archive = write_bundle_archive(folder, default_archive_path(folder))
    commands = install_commands(archive, args.device, args.host, etc_dir=info["etc_dir"],
                                selftest=args.selftest, restart=args.restart, venv=args.venv)
    if args.dry_run:
        print(f"# bundle archive written: {archive}")
        for command in commands:
            print(shlex.join(command))
        return 0
    for number, command in enumerate(commands, 1):
        print(f"[{number}/{len(commands)}] {shlex.join(command)}", file=sys.stderr)
        code = subprocess.call(command)
        if code != 0:
            selftest = "gerbang-device selftest" in command[-1]
            log.error("step %d of %d failed (exit code %d): %s", number, len(commands), code,
                      "the self-test found a problem (its table is above); the gate service is "
                      "stopped until you fix it and run `sudo systemctl start gerbang-device`"
                      if selftest else shlex.join(command))
            return 1
    print(f"{args.device} installed on {args.host}")
    return 0


def add_commands(sub: argparse._SubParsersAction, centre_option: argparse.ArgumentParser) -> None:
    """The ``bundle`` and ``install`` commands."""
    from provisioning.bundle import CAMERAS, DEFAULT_DATA_DIR, DEFAULT_ETC_DIR, DEFAULT_VENV

    bundle = sub.add_parser(
        "bundle", parents=[centre_option],
        help="assemble everything one gate needs (folder, .tar.gz)",
        description="Fills the gate's folder devices/DEVICE/ with device.toml (ids, broker and "
                    "TLS paths, camera, pin map, [keys]), its certificate and the CA, its roster "
                    "keys, WIRING.txt for the electrician and install.sh. Everything is checked "
                    "first: the generated device.toml is validated as the gate will, and every "
                    "--roster must be signed by this centre for the gate's room and session.",
        epilog="Example: gerbang-provision bundle c01-r01-a --session S1 --roster "
               "R01.roster.signed --tar")
    bundle.add_argument("device", help="device id, e.g. c01-r01-a")
    bundle.add_argument("--session", required=True, help="exam session the gate serves, e.g. S1")
    bundle.add_argument("--roster", type=Path, action="append", default=[], metavar="FILE",
                        help="signed roster (.roster.signed) to install at first start "
                             "(repeatable; it can also be pushed from the gateway later)")
    bundle.add_argument("--camera", choices=CAMERAS, default="picamera2",
                        help="picamera2 (Pi camera, default), v4l2 (USB), replay (tests)")
    bundle.add_argument("--replay-path", metavar="PATH",
                        help="with --camera replay: the folder/playlist/video on the gate")
    bundle.add_argument("--pins", type=Path, metavar="FILE",
                        help="TOML file with the door's [gpio] table (default: standard wiring, "
                             "see WIRING.txt)")
    bundle.add_argument("--pin-factory", choices=("auto", "native", "mock"), default="auto",
                        help="auto (default): real pins on a Pi; mock: no pins (tests)")
    bundle.add_argument("--broker-host", metavar="NAME",
                        help="how this gate reaches the broker, when not the centre's first "
                             "name (the certificate is still checked against that)")
    bundle.add_argument("--liveness", choices=("on", "off"),
                        help="liveness step (default: on, off for --camera replay)")
    bundle.add_argument("--model-threads", type=int, default=2,
                        help="CPU threads for the face models (default 2)")
    bundle.add_argument("--etc-dir", default=DEFAULT_ETC_DIR,
                        help=f"config folder on the gate (default {DEFAULT_ETC_DIR})")
    bundle.add_argument("--data-dir", default=DEFAULT_DATA_DIR,
                        help=f"data folder on the gate (default {DEFAULT_DATA_DIR})")
    bundle.add_argument("--tar", nargs="?", const="", metavar="FILE",
                        help="also write a .tar.gz (default devices/DEVICE.tar.gz)")
    bundle.set_defaults(func=_cmd_bundle)

    install = sub.add_parser(
        "install", parents=[centre_option], help="copy a gate's bundle onto its Pi over SSH",
        description="Copies the bundle to the Pi (scp) and runs its install.sh there with sudo "
                    "(ssh): files under /etc/gerbang and /var/lib/gerbang, keys mode 0600, owned "
                    "by the gerbang user. --root DIR installs into a folder instead (a mounted "
                    "SD card). --dry-run prints the exact commands without running them.",
        epilog="Example: gerbang-provision install c01-r01-a --host pi@10.0.0.21 --selftest "
               "--restart")
    install.add_argument("device", help="device id, e.g. c01-r01-a")
    where = install.add_mutually_exclusive_group(required=True)
    where.add_argument("--host", metavar="USER@HOST", help="the Pi, as ssh knows it")
    where.add_argument("--root", type=Path, metavar="DIR",
                       help="install under this folder instead (a mounted SD card's root "
                            "file system)")
    install.add_argument("--dry-run", action="store_true",
                         help="print the commands, run nothing")
    install.add_argument("--selftest", action="store_true",
                         help="then run `gerbang-device selftest` on the Pi (service stopped)")
    install.add_argument("--restart", action="store_true",
                         help="then restart the gerbang-device service")
    install.add_argument("--venv", default=DEFAULT_VENV,
                         help=f"Gerbang's virtualenv on the Pi (default {DEFAULT_VENV})")
    install.set_defaults(func=_cmd_install)
