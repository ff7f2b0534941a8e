"""Operator fusion with ONNX Runtime's transformer optimizer (SkipLayerNormalization, FastGelu, …).
Patterns silently stop matching when exporters change, so the counts are recorded, never assumed.
The optimizer copies and serializes the model several times (shape inference), so it works on a
skeleton — the weight matrices without their bytes — and the fused structure is put back onto
the model, whose weights never move: no copy of them is made, and graphs over the 2 GB protobuf
limit fuse like small ones."""

from __future__ import annotations

import contextlib
import io
import logging

import onnx

from ortgen.errors import ExportError

# Its shape inference warns on every symbolic dim it cannot compare (under two module names), and
# it warns that the built graph's producer is not "pytorch": developer chatter, not user news.
_QUIET_LOGGERS = (
    "onnxruntime.tools.symbolic_shape_infer",
    "symbolic_shape_infer",
    "onnxruntime.transformers.optimizer",
)


def fuse(model: onnx.ModelProto, num_heads: int, hidden_size: int) -> tuple[onnx.ModelProto, dict]:
    """The fused graph (`model`, rewritten) and the number of fused nodes by type (types with
    zero left out)."""
    skeleton, held = _skeleton(model)
    fused, counts = _optimize(skeleton, num_heads, hidden_size)
    _transplant(fused, model, held)
    return model, counts


def _optimize(
    model: onnx.ModelProto, num_heads: int, hidden_size: int
) -> tuple[onnx.ModelProto, dict]:
    from onnxruntime.transformers.fusion_options import FusionOptions
    from onnxruntime.transformers.optimizer import optimize_model

    loggers = [logging.getLogger(n) for n in _QUIET_LOGGERS]
    with contextlib.ExitStack() as stack:
        for shape_logger in loggers:
            shape_logger.disabled = True
            stack.callback(setattr, shape_logger, "disabled", False)
        stack.enter_context(contextlib.redirect_stdout(io.StringIO()))  # it also prints
        optimized = optimize_model(
            model,
            model_type="gpt2",  # GPT-2's patterns also describe GPT-Neo's LayerNorm / Gelu / MLP
            num_heads=num_heads,
            hidden_size=hidden_size,
            optimization_options=FusionOptions("gpt2"),
            opt_level=0,  # graph fusions only: ORT's own level-1/2 passes run at load time
        )
        counts = optimized.get_fused_operator_statistics()
    return optimized.model, {op: n for op, n in sorted(counts.items()) if n}


_HELD = "ortgen-weights-held-in-memory"  # a skeleton weight's (never written) external location


def _skeleton(model: onnx.ModelProto) -> tuple[onnx.ModelProto, dict[str, tuple]]:
    """A copy of `model` whose weight matrices (≥ 2 dims, raw bytes) are external placeholders:
    name, type and dims, no bytes. → skeleton, {name: (data type, dims)} of those held back."""
    skeleton = onnx.ModelProto()
    skeleton.ir_version = model.ir_version
    skeleton.producer_name = model.producer_name
    skeleton.opset_import.extend(model.opset_import)
    graph, source = skeleton.graph, model.graph
    graph.name = source.name
    for field in ("node", "input", "output", "value_info"):
        getattr(graph, field).extend(getattr(source, field))
    held = {}
    for tensor in source.initializer:
        if len(tensor.dims) < 2 or not tensor.HasField("raw_data"):
            graph.initializer.append(tensor)
            continue
        placeholder = graph.initializer.add()
        placeholder.name, placeholder.data_type = tensor.name, tensor.data_type
        placeholder.dims.extend(tensor.dims)
        placeholder.data_location = onnx.TensorProto.EXTERNAL
        placeholder.external_data.add(key="location", value=_HELD)
        held[tensor.name] = (tensor.data_type, tuple(tensor.dims))
    return skeleton, held


def _transplant(fused: onnx.ModelProto, model: onnx.ModelProto, held: dict[str, tuple]) -> None:
    """Give `model` the fused graph: nodes, inputs, outputs, opsets and the fused graph's small
    initializers; the held-back weights stay where they are (or go, when fusion dropped them)."""
    graph, source = model.graph, fused.graph
    for field in ("node", "input", "output", "value_info"):
        graph.ClearField(field)
        getattr(graph, field).extend(getattr(source, field))
    model.ClearField("opset_import")
    model.opset_import.extend(fused.opset_import)
    kept = {t.name for t in source.initializer}
    for tensor in source.initializer:
        if tensor.name in held and held[tensor.name] != (tensor.data_type, tuple(tensor.dims)):
            raise ExportError(
                f"operator fusion changed the weight {tensor.name}: export with --no-optimize"
            )
    for index in reversed(range(len(graph.initializer))):
        name = graph.initializer[index].name
        if name not in held or name not in kept:  # small ones come from the fused graph
            del graph.initializer[index]
    graph.initializer.extend(t for t in source.initializer if t.name not in held)
