"""ONNX int8 block-quantised (opset 21) -> plain fp32 (opset 13), which onnx2tf can read: every
constant DequantizeLinear (and the Reshape after it) is evaluated in numpy."""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import numpy as np


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
