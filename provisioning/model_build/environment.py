"""The build venv: the pins in provisioning/model-build-requirements.txt, and the refusal to build
in any other interpreter (converter output depends on the TensorFlow and onnx2tf versions)."""

from __future__ import annotations

import platform
import re
import sys
from importlib import metadata
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[2]
REQUIREMENTS = REPO_ROOT / "provisioning" / "model-build-requirements.txt"
PYTHON_SERIES = (3, 11)


def read_pins(path: Path) -> dict[str, str]:
    """Read ``name==version`` lines of a requirements file into {normalised name: version}."""
    pins: dict[str, str] = {}
    for raw in path.read_text(encoding="utf-8").splitlines():
        line = raw.split("#", 1)[0].strip()
        if not line:
            continue
        name, sep, version = line.partition("==")
        if not sep:
            raise SystemExit(f"{path}: every line must pin an exact version: {raw!r}")
        pins[normalise(name)] = version.strip()
    return pins


def normalise(name: str) -> str:
    """Normalise a distribution name the way PyPI does (PEP 503)."""
    return re.sub(r"[-_.]+", "-", name).lower()


def check_environment(pins: dict[str, str]) -> None:
    """Refuse to build unless this interpreter has exactly the pinned packages.

    Converter output depends on the TensorFlow and onnx2tf versions, so a build with other
    versions would silently produce different (and maybe non-loading) files.
    """
    if sys.version_info[:2] != PYTHON_SERIES:
        wanted = ".".join(map(str, PYTHON_SERIES))
        raise SystemExit(
            f"Python {wanted} is required (TensorFlow 2.15 wheels); "
            f"this is {platform.python_version()}.\n"
            f"  python{wanted} -m venv /tmp/modelbuild/venv && "
            f"/tmp/modelbuild/venv/bin/pip install -r {REQUIREMENTS}"
        )
    wrong: list[str] = []
    for name, version in sorted(pins.items()):
        try:
            have = metadata.version(name)
        except metadata.PackageNotFoundError:
            wrong.append(f"{name}: missing (want {version})")
            continue
        if have != version:
            wrong.append(f"{name}: {have} installed, {version} pinned")
    if wrong:
        listing = "\n  ".join(wrong)
        raise SystemExit(
            "The build venv does not match the pins:\n  "
            + listing
            + f"\nFix it with:\n  {sys.executable} -m pip install -r {REQUIREMENTS}\n"
            "(or pass --skip-version-check to build anyway; the output may differ)."
        )
