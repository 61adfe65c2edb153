"""What runs on the Pi: the command that makes a gate's key there (only its CSR comes back), and
installing a bundle onto it over SSH, or into a folder (a mounted SD card).
"""

from __future__ import annotations

import os
import shlex
import subprocess
from pathlib import Path

from provisioning import pki
from provisioning.bundle.common import (
    DEFAULT_ETC_DIR,
    DEFAULT_VENV,
    SERVICE_USER,
    ProvisionError,
    check_id,
)
from provisioning.bundle.gate_bundle import bundle_info


def csr_shell_command(device_id: str, centre_id: str, etc_dir: str = DEFAULT_ETC_DIR) -> str:
    """The shell command, run on the Pi, that makes the gate's key there and prints its CSR.

    Plain ``openssl`` (on every Raspberry Pi OS), so it works before Gerbang is installed. The
    key stays in ``{etc_dir}/tls`` (0600, never overwritten: run again, it prints the same CSR);
    only the printed CSR leaves the Pi.
    """
    check_id("device id", device_id)
    check_id("centre", centre_id)
    tls = f"{etc_dir.rstrip('/')}/tls"
    key, csr = f"{tls}/{device_id}.key", f"{tls}/{device_id}.csr"
    subject = f"/O={pki.ORGANIZATION}/OU={centre_id}/CN={device_id}"
    script = (f"set -e; umask 077; mkdir -p {tls}; chmod 700 {tls}; "
              f"if [ ! -e {key} ]; then openssl req -new -newkey ec -pkeyopt "
              f"ec_paramgen_curve:P-256 -nodes -subj {subject} -keyout {key} -out {csr} "
              f"2>/dev/null; fi; cat {csr}")
    return f"sudo sh -c {shlex.quote(script)}"


def fetch_csr_command(host: str, device_id: str, centre_id: str,
                      etc_dir: str = DEFAULT_ETC_DIR) -> list[str]:
    """``ssh HOST <csr_shell_command>``: the CSR arrives on stdout; the key stays on the Pi."""
    return ["ssh", check_ssh_host(host), csr_shell_command(device_id, centre_id, etc_dir)]


def check_ssh_host(host: str) -> str:
    """``user@host`` or ``host``; refuses what ssh would take as an option or cannot be a host."""
    if not host or host.startswith("-") or any(c.isspace() or c in "'\"`$;|&<>\\" for c in host):
        raise ProvisionError(f"--host {host!r} is not an SSH destination (like pi@10.0.0.21)")
    return host


def remote_archive_path(device_id: str) -> str:
    """Where the archive is copied on the Pi before it is unpacked."""
    return f"/tmp/gerbang-bundle-{device_id}.tar.gz"


def install_commands(archive: Path, device_id: str, host: str, *, etc_dir: str,
                     selftest: bool = False, restart: bool = False,
                     venv: str = DEFAULT_VENV) -> list[list[str]]:
    """The ssh/scp commands that install a bundle archive on the Pi at ``host``.

    1. ``scp`` the archive to ``/tmp``; 2. ``ssh -t`` unpacks it in a private temporary folder,
    runs ``install.sh`` with sudo (``-t`` so sudo can ask for the password) and deletes both;
    then optionally 3. the self-test as the service user, with the service stopped (it needs
    the camera and the pins), and 4. a service restart.
    """
    check_ssh_host(host)
    check_id("device id", device_id)
    remote = remote_archive_path(device_id)
    unpack = (f"set -e; d=$(mktemp -d); tar -xzf {remote} -C \"$d\"; "
              f"sudo sh \"$d/{device_id}/install.sh\"; rm -rf \"$d\" {remote}")
    commands = [["scp", "-q", str(archive), f"{host}:{remote}"],
                ["ssh", "-t", host, unpack]]
    config = f"{etc_dir.rstrip('/')}/device.toml"
    if selftest:
        commands.append(["ssh", "-t", host,
                         "sudo systemctl stop gerbang-device 2>/dev/null; "
                         f"sudo -u {SERVICE_USER} {shlex.quote(venv)}/bin/gerbang-device "
                         f"selftest --config {shlex.quote(config)}"])
    if restart:
        commands.append(["ssh", "-t", host, "sudo systemctl restart gerbang-device && "
                         "systemctl --no-pager status gerbang-device | head -n 5"])
    return commands


def install_local(bundle_dir: Path, root: Path) -> subprocess.CompletedProcess[str]:
    """Run the bundle's ``install.sh`` into ``root`` (``DESTDIR``; ``/`` = this machine).

    For an SD card mounted on the laptop, or a gate that is this machine.
    """
    bundle_info(bundle_dir)
    root = Path(root).resolve()
    env = {**os.environ, "DESTDIR": "" if root == Path("/") else str(root)}
    return subprocess.run(["sh", str(Path(bundle_dir) / "install.sh")], env=env,
                          capture_output=True, text=True, check=False)
