"""Features from the decoder graph itself: the final hidden states (after ln_f, the LM head's
input) exposed as one more graph output, `last_hidden_state` [B, T, D]. Clients that read outputs
by name (optimum, transformers.js, the runtime's decode steps) ignore it; the runtime asks for it
in `DecodeState.prefill(..., hidden=True)`. It costs no weights and no second session."""

from __future__ import annotations

import onnx
from onnx import helper

HIDDEN_STATE = "last_hidden_state"  # graph output [B, T, D]: transformers' name for it


def expose_hidden_state(model: onnx.ModelProto, logits_name: str = "logits") -> bool:
    """Add the LM head's input as the graph output `last_hidden_state` (before any
    `logits_to_keep` slice: call this first). Returns whether the head was found."""
    graph = model.graph
    head = next((n for n in graph.node if n.op_type == "MatMul" and logits_name in n.output), None)
    if head is None:
        return False
    graph.node.append(helper.make_node("Identity", [head.input[0]], [HIDDEN_STATE]))
    logits = next(o for o in graph.output if o.name == logits_name)
    dims = [d.dim_param or d.dim_value for d in logits.type.tensor_type.shape.dim][:2]
    elem = logits.type.tensor_type.elem_type
    graph.output.append(helper.make_tensor_value_info(HIDDEN_STATE, elem, [*dims, "hidden_size"]))
    return True
