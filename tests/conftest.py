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
    # A broker that cannot save its state loses sessions on restart: never let that pass silently.
    assert not broker.log_errors(), f"mosquitto logged errors: {broker.log_errors()}"


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


POSTGRES_URL = os.environ.get("GERBANG_TEST_POSTGRES",
                              "postgresql://postgres@127.0.0.1:5432/postgres")


def _postgres_available() -> str | None:
    try:
        import psycopg
    except ImportError:
        return "psycopg is not installed (pip install 'gerbang[gateway]')"
    try:
        psycopg.connect(POSTGRES_URL, connect_timeout=3).close()
    except psycopg.Error as exc:
        return f"PostgreSQL not reachable at {POSTGRES_URL}: {exc}"
    return None


@pytest.fixture(params=["sqlite", "postgresql"])
def store(request, tmp_path):
    """An empty attendance store on each back-end (PostgreSQL: a fresh database per test)."""
    from gateway.store import open_store

    if request.param == "sqlite":
        yield open_store(tmp_path / "gw.sqlite")
        return
    reason = _postgres_available()
    if reason:
        pytest.skip(reason)
    import uuid

    import psycopg

    name = f"gerbang_test_{uuid.uuid4().hex[:12]}"
    with psycopg.connect(POSTGRES_URL, autocommit=True) as admin:
        admin.execute(f"CREATE DATABASE {name}")
    url = POSTGRES_URL.rsplit("/", 1)[0] + f"/{name}"
    yield open_store(url)
    with psycopg.connect(POSTGRES_URL, autocommit=True) as admin:
        admin.execute(f"DROP DATABASE {name} WITH (FORCE)")
