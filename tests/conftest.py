"""Shared fixtures: a real Mosquitto on a free port, the shipped models, the shared face data."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import pytest

from gerbang.broker import MosquittoBroker

REPO = Path(__file__).resolve().parent.parent
DATA = Path(os.environ.get("GERBANG_DATA", REPO.parent / "shared" / "data"))


@pytest.fixture
def mosquitto(tmp_path: Path):
    """A real Mosquitto process with the project's own config, on a free loopback port."""
    if not (shutil.which("mosquitto") or Path("/usr/sbin/mosquitto").exists()):
        pytest.skip("mosquitto is not installed (apt-get install mosquitto; .ci/run does this)")
    broker = MosquittoBroker(tmp_path / "broker").start()
    yield broker
    broker.stop()


@pytest.fixture(scope="session")
def faces_root() -> Path:
    """The shared face sets (``$GERBANG_DATA/faces``); tests needing them skip when absent."""
    root = DATA / "faces"
    if not (root / "celeba").is_dir():
        pytest.skip(f"shared face data not found at {root} (set GERBANG_DATA)")
    return root


@pytest.fixture(scope="session")
def pipeline():
    """The shipped model bundle, verified and loaded once per test session."""
    from device.infer.bundle import load_bundle
    from device.infer.pipeline import FacePipeline

    return FacePipeline.from_bundle(load_bundle(), threads=1)
