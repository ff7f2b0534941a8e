"""Operator fusion with ONNX Runtime's transformer optimizer (SkipLayerNormalization, FastGelu, …).
Patterns silently stop matching when exporters change, so the counts are recorded, never assumed."""

from __future__ import annotations

import contextlib
import io
import logging

import onnx

# Its shape inference warns on every symbolic dim it cannot compare (under two module names), and
# it warns that the built graph's producer is not "pytorch": developer chatter, not user news.
_QUIET_LOGGERS = (
    "onnxruntime.tools.symbolic_shape_infer",
    "symbolic_shape_infer",
    "onnxruntime.transformers.optimizer",
)


def fuse(model: onnx.ModelProto, num_heads: int, hidden_size: int) -> tuple[onnx.ModelProto, dict]:
    """The fused graph and the number of fused nodes by type (types with zero left out)."""
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
