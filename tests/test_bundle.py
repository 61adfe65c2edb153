"""The device verifies every model file against the manifest and refuses altered ones."""

from __future__ import annotations

import shutil
import subprocess
import sys

import pytest

from device.infer.bundle import DEFAULT_BUNDLE_DIR, ModelBundleError, load_bundle, sha256_file


def test_shipped_bundle_matches_its_manifest():
    bundle = load_bundle()
    assert {"detector", "embedder"} <= set(bundle.hashes())
    for role in bundle.hashes():
        assert sha256_file(bundle.path(role)) == bundle.entry(role)["sha256"]


@pytest.fixture
def bundle_copy(tmp_path):
    target = tmp_path / "models"
    shutil.copytree(DEFAULT_BUNDLE_DIR, target)
    return target


def test_one_flipped_byte_is_refused_naming_the_file(bundle_copy):
    model = bundle_copy / load_bundle(bundle_copy).entry("embedder")["file"]
    data = bytearray(model.read_bytes())
    data[len(data) // 2] ^= 0x01
    model.write_bytes(bytes(data))
    with pytest.raises(ModelBundleError, match=model.name):
        load_bundle(bundle_copy)


def test_altered_passive_liveness_model_is_refused_like_a_model(bundle_copy):
    bundle = load_bundle(bundle_copy)
    entry = bundle.manifest["artefacts"]["pad_passive"]
    # Pinned for the shipped embedder, so a rebuild with another SFace drops it.
    assert entry["fitted_on_embedder"] == bundle.hashes()["embedder"]
    path = bundle_copy / entry["file"]
    path.write_text(path.read_text().replace('"threshold": 0.', '"threshold": 0.0', 1))
    with pytest.raises(ModelBundleError, match="pad_passive"):
        load_bundle(bundle_copy)


def test_missing_file_and_missing_manifest_are_refused(bundle_copy):
    (bundle_copy / load_bundle(bundle_copy).entry("detector")["file"]).unlink()
    with pytest.raises(ModelBundleError, match="missing"):
        load_bundle(bundle_copy)
    (bundle_copy / "manifest.json").unlink()
    with pytest.raises(ModelBundleError, match="manifest"):
        load_bundle(bundle_copy)


def test_cli_reports_a_tampered_model_without_traceback(bundle_copy):
    model = bundle_copy / load_bundle(bundle_copy).entry("detector")["file"]
    model.write_bytes(model.read_bytes()[:-10])
    proc = subprocess.run([sys.executable, "-m", "device.cli", "verify-models",
                           "--bundle", str(bundle_copy)], capture_output=True, text=True,
                          timeout=60)
    assert proc.returncode == 2
    assert model.name in proc.stderr and "refusing to start" in proc.stderr
    assert "Traceback" not in proc.stderr
