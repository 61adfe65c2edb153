"""Proof the converted files compute what the originals do: run them on deterministic synthetic
images against the ONNX originals (onnxruntime), and in both TFLite runtimes a gate may have."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import numpy as np

# Gates on the build's deterministic synthetic test images. The fp32 YuNet matches its ONNX to
# float rounding (~1e-5). The dynamic-range SFace quantises its weights, so it is judged by
# embedding cosine: ~0.991 at worst on these synthetic images, >0.996 on real aligned faces.
# The same cosine gates ai-edge-litert vs tflite-runtime 2.14 outputs for every file.
YUNET_MAX_ABS_DIFF = 1e-3
SFACE_MIN_COSINE = 0.98
RUNTIME_MIN_COSINE = 0.98


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
