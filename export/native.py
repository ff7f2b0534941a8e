"""The in-place graph's native variant, `inplace.native.onnx` (quantized folders): the same graph
and weights run by ortgen's own kernels (native/) — each `MatMulNBits` of 8 bits in blocks of 64 or
4 bits in blocks of 32 by `ortgen.Q8MatMul` (int8 activations per row and block), which reads
MatMulNBits' bytes as they are (the bias Add or FastGelu after it folded in), and each
`GroupQueryAttention` by `ortgen.CachedAttentionQ8`, each `SkipLayerNormalization` by
`ortgen.SkipNorm` or, where a projection alone reads its output, folded into that Q8MatMul. The
KV cache holds int8 codes with a float scale per position and head (KV_DTYPE: under a third of
the bytes a float32 cache makes a decode step read late in a long context, and of the memory it
takes). The runtime takes it where
the kernel library is built and the CPU has AVX-512 VNNI, else the plain in-place graph."""

from __future__ import annotations

import onnx
from onnx import helper

from ortgen.kernels import DOMAIN, KV_SCALE_BYTES

FILE = "inplace.native.onnx"
OP = "Q8MatMul"
ATTENTION = "CachedAttentionQ8"
NORM = "SkipNorm"
# the native graph's cache tensors (manifest inplace.native_kv_dtype): per position and head, D
# int8 codes and their float32 scale, D + KV_SCALE_BYTES bytes (folders written before hold
# "float16" caches, which the runtime still runs: CachedAttention)
KV_DTYPE = "int8"
# ... laid out [B, H, L, ·] (manifest inplace.native_kv_layout): each (row, head)'s records are one
# contiguous stream, which the hardware prefetcher follows; [B, L, H, ·] (exports of 2026-12-04,
# still run) puts a head's records H records apart, and a decode step late in a long context read
# them ~1.5x slower (gpt2-124M's 12 layers at past 900, 2 threads: ~2.0 against ~1.3 ms)
KV_LAYOUT = "BHLD"  # CachedAttention's kv_layout 0 (1: "BLHD")
_BLOCKS = {8: 64, 4: 32}  # the kernel's block for each width of code


def swap_kernels(model: onnx.ModelProto) -> int:
    """Rewrite a quantized `model` in place; → how many nodes ortgen's kernels took over (0: leave
    it unwritten: fp32 folders keep ONNX Runtime's float32 cache)."""
    if not any(n.op_type == "MatMulNBits" for n in model.graph.node):
        return 0
    swapped = swap_matmuls(model) + _swap_attention(model.graph) + _swap_norms(model.graph)
    _fold_norms(model.graph)
    if swapped and DOMAIN not in {o.domain for o in model.opset_import}:
        model.opset_import.append(helper.make_opsetid(DOMAIN, 1))
    return swapped


def _swap_attention(graph: onnx.GraphProto) -> int:
    """GroupQueryAttention → CachedAttentionQ8 (same inputs, outputs and attributes), and the
    cache tensors they read and write (graph inputs and outputs) become int8 records
    [B, H, L, D + 4] (KV_LAYOUT). → how many."""
    cache, swapped = set(), 0
    for position, node in enumerate(list(graph.node)):
        if node.op_type != "GroupQueryAttention":
            continue
        attrs = {a.name: helper.get_attribute_value(a) for a in node.attribute}
        if not _plain_attention(attrs):
            continue  # a feature CachedAttention lacks: ONNX Runtime's node stays
        swapped += 1
        cached = helper.make_node(
            ATTENTION,
            list(node.input),
            list(node.output),
            name=f"{node.name}.cached",
            domain=DOMAIN,
            num_heads=attrs["num_heads"],
            scale=float(attrs.get("scale", 0.0)),
            local_window_size=attrs.get("local_window_size", -1),
            kv_layout=0,  # KV_LAYOUT
        )
        graph.node.remove(node)
        graph.node.insert(position, cached)
        cache.update([node.input[3], node.input[4], node.output[1], node.output[2]])
    for value in [*graph.input, *graph.output]:
        if value.name in cache:
            value.type.tensor_type.elem_type = onnx.TensorProto.INT8
            record = value.type.tensor_type.shape.dim[3]
            record.dim_value += KV_SCALE_BYTES  # D codes, then the scale's bytes
    return swapped


def _swap_norms(graph: onnx.GraphProto) -> int:
    """SkipLayerNormalization → SkipNorm (same inputs; outputs: the normalized sum and the sum,
    without the mean and inverse deviation, which nothing reads). → how many."""
    read = {name for node in graph.node for name in node.input} | {o.name for o in graph.output}
    swapped = 0
    for position, node in enumerate(list(graph.node)):
        if node.op_type != "SkipLayerNormalization" or any(
            o and o in read for o in node.output[1:3]
        ):
            continue
        attrs = {a.name: helper.get_attribute_value(a) for a in node.attribute}
        outputs = [node.output[0], *[o for o in node.output[3:4] if o]]
        norm = helper.make_node(
            NORM,
            list(node.input),
            outputs,
            name=f"{node.name}.norm",
            domain=DOMAIN,
            epsilon=float(attrs.get("epsilon", 1e-12)),
        )
        graph.node.remove(node)
        graph.node.insert(position, norm)
        swapped += 1
    return swapped


def _fold_norms(graph: onnx.GraphProto) -> None:
    """Q8MatMul(SkipNorm(x, skip, gamma, beta[, b])) → Q8MatMul(x, W, scales, bias, skip, gamma,
    beta[, b]; epsilon) at the SkipNorm's place, its outputs (Y, SkipNorm's sum): the kernel
    normalizes each row just before quantizing it, with the same bits, and a decode step runs
    one node fewer per layer norm before a projection (~8 µs each at one row). Where the
    normalized sum feeds only that Q8MatMul."""
    kept = {o.name for o in graph.output}
    readers: dict[str, list[onnx.NodeProto]] = {}
    for node in graph.node:
        for name in node.input:
            readers.setdefault(name, []).append(node)
    for norm in [n for n in graph.node if n.op_type == NORM]:
        users = readers.get(norm.output[0], [])
        if norm.output[0] in kept or len(users) != 1:
            continue
        matmul = users[0]
        attrs = {a.name for a in matmul.attribute}
        if matmul.op_type != OP or matmul.input[0] != norm.output[0] or "epsilon" in attrs:
            continue
        bias = matmul.input[3] if len(matmul.input) > 3 else ""
        inputs = [norm.input[0], *matmul.input[1:3], bias, *norm.input[1:5]]
        fused = helper.make_node(
            OP,
            inputs,
            [matmul.output[0], *norm.output[1:2]],
            name=f"{norm.name}.{matmul.name}",
            domain=DOMAIN,
        )
        fused.attribute.extend(matmul.attribute)
        fused.attribute.extend(a for a in norm.attribute if a.name == "epsilon")
        graph.node.insert(list(graph.node).index(norm), fused)
        graph.node.remove(norm)
        graph.node.remove(matmul)


def _plain_attention(attrs: dict) -> bool:
    """GroupQueryAttention as ortgen's export writes it: as many KV heads as heads, no rotary
    embedding, no soft cap (what CachedAttention computes)."""
    return (
        attrs.get("kv_num_heads", attrs["num_heads"]) == attrs["num_heads"]
        and not attrs.get("do_rotary", 0)
        and not attrs.get("softcap", 0.0)
        and not attrs.get("smooth_softmax", 0)
    )


def swap_matmuls(model: onnx.ModelProto) -> int:
    """Rewrite `model` in place; → how many MatMulNBits became Q8MatMul (0: nothing written)."""
    swapped = 0
    for position, node in enumerate(list(model.graph.node)):
        attrs = {a.name: helper.get_attribute_value(a) for a in node.attribute}
        if not _runs_natively(node, attrs):
            continue
        bias = node.input[5] if len(node.input) > 5 else ""
        q8 = helper.make_node(
            OP,
            [*node.input[:3], *([bias] if bias else [])],
            list(node.output),
            name=f"{node.name}.q8",
            domain=DOMAIN,
            K=attrs["K"],
            N=attrs["N"],
            **({"bits": 4} if attrs["bits"] == 4 else {}),
        )
        model.graph.node.remove(node)
        model.graph.node.insert(position, q8)
        swapped += 1
    _fold_epilogues(model.graph)
    return swapped


# The node after a Q8MatMul that the kernel can do itself, given a constant [N] second input:
# Add (the bias, added last as Add did) or FastGelu (bias, then the tanh-form GELU).
_EPILOGUES = {"Add": {}, "FastGelu": {"activation": 1}}


def _fold_epilogues(graph: onnx.GraphProto) -> None:
    """Epilogue(Q8MatMul(x), b) → Q8MatMul(x, bias=b, **its attributes): one node less each,
    where the Q8MatMul's output feeds nothing else and it has no bias yet."""
    constants = {t.name: list(t.dims) for t in graph.initializer}
    producers = {out: node for node in graph.node for out in node.output}
    kept = {o.name for o in graph.output}
    uses: dict[str, int] = {}
    for node in graph.node:
        for name in node.input:
            uses[name] = uses.get(name, 0) + 1
    for after in [n for n in graph.node if n.op_type in _EPILOGUES and len(n.input) == 2]:
        matmul = producers.get(after.input[0])
        if matmul is None or matmul.op_type != OP or len(matmul.input) != 3:
            continue
        n = next(helper.get_attribute_value(a) for a in matmul.attribute if a.name == "N")
        if uses.get(after.input[0]) != 1 or after.input[0] in kept:
            continue
        if constants.get(after.input[1]) != [n]:
            continue
        matmul.input.append(after.input[1])
        for name, value in _EPILOGUES[after.op_type].items():
            matmul.attribute.append(helper.make_attribute(name, value))
        matmul.output[0] = after.output[0]
        graph.node.remove(after)


def _runs_natively(node: onnx.NodeProto, attrs: dict) -> bool:
    """8 bits in blocks of 64 or 4 in blocks of 32, no zero points or group indices (the export's
    symmetric int8 and int4)."""
    if node.op_type != "MatMulNBits":
        return False
    extras = [name for name in node.input[3:5] if name]
    int8_compute = attrs.get("accuracy_level") == 4  # the kernel's int8 activations
    return _BLOCKS.get(attrs.get("bits")) == attrs.get("block_size") and int8_compute and not extras
