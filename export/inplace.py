"""The in-place KV graph, written beside the portable `model.onnx` from the same saved graph: each
`MultiHeadAttention` (growing past → longer present, additive mask bias) becomes a
`GroupQueryAttention` over preallocated [B, H, L, D] buffers that the runtime binds as both past and
present, with per-row lengths (`seqlens_k`) instead of an attention mask. Its weights are not a
second copy: it is made from the graph just saved, in memory and consumed, whose weights
`graph.save` left as references to their bytes in `model.onnx` (or `model.onnx.data`), so it
points at the same bytes (ONNX external data, by byte offset). Quantized folders also get its native
variant (export/native.py) where ortgen's kernels run, so the export's parity check proves it."""

from __future__ import annotations

import re
from pathlib import Path

import onnx
from onnx import TensorProto, helper, numpy_helper

from ortgen import kernels
from ortgen_export import native
from ortgen_export.builder import MS

FILE = "inplace.onnx"
SEQLENS, TOTAL = "seqlens_k", "total_sequence_length"
_WINDOW = re.compile(r"attn_mask/window(\d+)$")


def write(folder: Path, model: onnx.ModelProto, model_file: str = "model.onnx") -> dict[str, str]:
    """Write `folder/inplace.onnx` from `model`, the graph `graph.save` just wrote as
    `folder/model_file` (rewritten in place: the caller's copy is used up). → the manifest
    entry."""
    windows = _windows_by_bias(model.graph)
    for node in [n for n in model.graph.node if n.op_type == "MultiHeadAttention"]:
        _swap_attention(model.graph, node, windows[node.input[5]])
    _prune(model.graph)
    _rewrite_inputs(model.graph)
    onnx.save_model(model, str(folder / FILE))
    entry = {
        "file": FILE,
        "seqlens_k": SEQLENS,
        "total_length": TOTAL,
        "weights": fingerprint(folder / model_file),  # the bytes its offsets point into
    }
    if kernels.library() and native.swap_kernels(model):  # only where the check can run it
        onnx.save_model(model, str(folder / native.FILE))
        entry["native_file"] = native.FILE
        entry["native_kv_dtype"] = native.KV_DTYPE
        entry["native_kv_layout"] = native.KV_LAYOUT
    return entry


def fingerprint(path: Path) -> str:
    """Size and a digest of 16 spread 64 KiB samples: cheap to check at every load, and no
    other export's graph matches it."""
    from ortgen.model import weights_fingerprint

    return weights_fingerprint(path)


def _windows_by_bias(graph) -> dict[str, int | None]:
    """Attention-bias tensor → the local window it encodes (None: global), found by walking up
    from the bias to the builder's `attn_mask/window{w}` constant."""
    producers = {out: node for node in graph.node for out in node.output}
    found = {}
    for bias in {n.input[5] for n in graph.node if n.op_type == "MultiHeadAttention"}:
        seen, todo, window = set(), [bias], None
        while todo:
            name = todo.pop()
            match = _WINDOW.search(name)
            if match:
                window = int(match.group(1))
            if name in producers and name not in seen:
                seen.add(name)
                todo.extend(producers[name].input)
        found[bias] = window
    return found


def _swap_attention(graph, node, window: int | None) -> None:
    attrs = {a.name: helper.get_attribute_value(a) for a in node.attribute}
    q, k, v, past_key, past_value = (node.input[i] for i in (0, 1, 2, 6, 7))
    packed = _packed_qkv(graph, q, k, v)
    if packed:  # the Split is left unused (pruned): GroupQueryAttention splits it itself
        q, k, v = packed, "", ""
    gqa = helper.make_node(
        "GroupQueryAttention",
        [q, k, v, past_key, past_value, SEQLENS, TOTAL],
        list(node.output),
        name=node.name.replace("MultiHeadAttention", "GroupQueryAttention"),
        domain=MS,
        num_heads=attrs["num_heads"],
        kv_num_heads=attrs["num_heads"],
        scale=attrs.get("scale", 0.0),
        # GPT-Neo's local layers attend to `window` keys, the query's own included; so does
        # ONNX Runtime's CPU kernel with local_window_size = window (measured; the export's
        # parity check proves it for every local layer, and older kernels kept window + 1).
        local_window_size=-1 if window is None else window,
    )
    position = list(graph.node).index(node)
    graph.node.remove(node)
    graph.node.insert(position, gqa)


def _packed_qkv(graph, q: str, k: str, v: str) -> str | None:
    """The tensor q, k and v were split from, when they are its three equal parts along the last
    axis, in that order (GroupQueryAttention's packed QKV input); else None."""
    split = next((n for n in graph.node if list(n.output) == [q, k, v]), None)
    if split is None or split.op_type != "Split" or len(split.input) != 2:
        return None
    axis = next((helper.get_attribute_value(a) for a in split.attribute if a.name == "axis"), 0)
    sizes = next((t for t in graph.initializer if t.name == split.input[1]), None)
    if axis not in (-1, 2) or sizes is None or sizes.data_location == TensorProto.EXTERNAL:
        return None
    parts = numpy_helper.to_array(sizes).tolist()
    used = sum(name in (q, k, v) for n in graph.node for name in n.input)
    if len(parts) != 3 or len(set(parts)) != 1 or used != 3:
        return None
    return split.input[0]


def _prune(graph) -> None:
    """Drop nodes whose outputs nothing uses (the mask-bias subgraph, packed QKV's Splits), then
    the constants no node reads (onnxruntime warns about each)."""
    while True:
        used = {name for n in graph.node for name in n.input} | {o.name for o in graph.output}
        dead = [n for n in graph.node if not any(out in used for out in n.output)]
        if not dead:
            break
        for node in dead:
            graph.node.remove(node)
    unread = [t for t in graph.initializer if t.name not in used]
    for tensor in unread:
        graph.initializer.remove(tensor)


def _rewrite_inputs(graph) -> None:
    """attention_mask → seqlens_k [B] + total_sequence_length []; cache axes name the buffer."""
    kept = [i for i in graph.input if i.name != "attention_mask"]
    del graph.input[:]
    graph.input.extend(kept)
    graph.input.extend(
        [
            helper.make_tensor_value_info(SEQLENS, TensorProto.INT32, ["batch_size"]),
            helper.make_tensor_value_info(TOTAL, TensorProto.INT32, []),
        ]
    )
    for value in [*graph.input, *graph.output]:
        if value.name.startswith(("past_key_values.", "present.")):
            value.type.tensor_type.shape.dim[2].dim_param = "max_sequence_length"
    # Defaults for optional inputs (logits_to_keep) become required: IO binding binds graph
    # inputs only, and the runtime always feeds them.
    inputs = {i.name for i in graph.input}
    used = {name for n in graph.node for name in n.input} - inputs
    for tensor in [t for t in graph.initializer if t.name not in used]:
        graph.initializer.remove(tensor)
