"""fp16 for CUDA: the linear layers and the KV cache in fp16, the numerically delicate parts in fp32
— LayerNorm / SkipLayerNorm, residual adds, Gelu, attention scores, mask and softmax (GPT-Neo's
unscaled q·kᵀ and its -1e9 mask overflow fp16), embeddings and the logits (the tied LM head)."""

from __future__ import annotations

import contextlib
import io

import numpy as np
import onnx
from onnx import numpy_helper

# Ops that only move or reshape data: safe in any dtype, and they carry the fp16 KV cache.
_MOVES = {
    "Concat",
    "Reshape",
    "Transpose",
    "Split",
    "Slice",
    "Squeeze",
    "Unsqueeze",
    "Identity",
    "Shape",
    "Expand",
    "Flatten",
}


def convert(model: onnx.ModelProto, logits: str = "logits") -> tuple[onnx.ModelProto, dict]:
    """The fp16 graph, and how many nodes stayed fp32 by type."""
    from onnxruntime.tools.symbolic_shape_infer import SymbolicShapeInference
    from onnxruntime.transformers.float16 import convert_float_to_float16

    # The converter places its Casts from value types; onnx's own inference can't type the
    # fused contrib ops, ONNX Runtime's symbolic inference can.
    with contextlib.redirect_stdout(io.StringIO()):
        model = SymbolicShapeInference.infer_shapes(model, auto_merge=True)
    _clamp_constants(model)
    inits = {t.name for t in model.graph.initializer}
    fp32_nodes = [n for n in model.graph.node if not _fp16_node(n, inits)]
    for node in fp32_nodes:
        if not node.name:
            node.name = f"fp32/{node.op_type}/{node.output[0]}"
    converted = convert_float_to_float16(
        model,
        keep_io_types=[logits],  # logits stay fp32; the KV cache inputs / outputs become fp16
        node_block_list=[n.name for n in fp32_nodes],
        disable_shape_infer=True,
    )
    _drop_duplicates(converted)
    kept: dict[str, int] = {}
    for node in fp32_nodes:
        kept[node.op_type] = kept.get(node.op_type, 0) + 1
    return converted, dict(sorted(kept.items()))


_FP16_MAX = 65504.0


def _clamp_constants(model: onnx.ModelProto) -> None:
    """Mask constants such as float32's minimum become -inf in fp16, and -inf turns into NaN once
    a row is fully masked: clamp every float constant to fp16's range first (as a mask value,
    -65504 still underflows to exactly zero in the fp32 softmax)."""
    tensors = list(model.graph.initializer) + [
        a.t
        for n in model.graph.node
        if n.op_type in ("Constant", "ConstantOfShape")
        for a in n.attribute
        if a.type == onnx.AttributeProto.TENSOR
    ]
    for tensor in tensors:
        if tensor.data_type != onnx.TensorProto.FLOAT:
            continue
        values = numpy_helper.to_array(tensor)
        if np.abs(values).max(initial=0) > _FP16_MAX:
            clamped = np.clip(values, -_FP16_MAX, _FP16_MAX).astype(np.float32)
            tensor.CopyFrom(numpy_helper.from_array(clamped, tensor.name))


def _fp16_node(node: onnx.NodeProto, inits: set[str]) -> bool:
    """Linear layers (constant 2-D weight) and data movement, except on the way to the logits."""
    if _feeds_logits(node):
        return False
    linear = node.op_type in ("MatMul", "Gemm") and len(node.input) > 1 and node.input[1] in inits
    return linear or node.op_type in _MOVES


def _feeds_logits(node: onnx.NodeProto) -> bool:
    return any(name.startswith("logits") or "lm_head" in name for name in [node.name, *node.output])


def _drop_duplicates(model: onnx.ModelProto) -> None:
    """The converter can insert the same Cast twice (same input, same output): keep one."""
    seen = set()
    for node in list(model.graph.node):
        key = (node.op_type, tuple(node.input), tuple(node.output))
        if key in seen:
            model.graph.node.remove(node)
        seen.add(key)
