"""Quantization of every linear layer, the LM head included, as symmetric blocks along K in
`MatMulNBits` (8 or 4 bits; int8 compute on CPU). Activations are quantized per row and block, so
a row's result never depends on the rows batched with it. (ONNX Runtime's 8-bit kernels compute a
lone row differently from rows in pairs at blocks of 128 or more: int8 uses blocks of 64, where
both agree bit for bit — tests/test_trained.py checks it.) Embedding tables become
`GatherBlockQuantized`; a tied embedding shares the LM head's packed bytes, so it is stored once.
(`per_tensor_activations` keeps the older int8 format, `DynamicQuantizeMatMul`: faster prefill
GEMMs, but one activation scale per batch — batch-variant; for measurements only.)"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import numpy as np
import onnx
from onnx import helper, numpy_helper

from ortgen.errors import ExportError, InvalidOptionError

MS_DOMAIN = "com.microsoft"
_ROWS_AT_ONCE = 1024  # pack_rows' slice: a few MB of temporaries


@dataclass(frozen=True)
class QuantConfig:
    """How weights are quantized."""

    bits: int  # 8 or 4
    block_size: int = 32  # weights per scale along K: a power of two ≥ 16
    accuracy_level: int = 4  # MatMulNBits compute type: 4 = int8 activations (VNNI), 0 = as A
    # int8 only: DynamicQuantizeMatMul, one activation scale for the whole [B, T, D] input — a
    # row's result then depends on its batch neighbours (FIELD trap 16). Off: MatMulNBits, whose
    # activations are quantized per row and block, so every row is computed on its own.
    per_tensor_activations: bool = False

    def __post_init__(self) -> None:
        if self.bits not in (4, 8):
            raise InvalidOptionError(f"bits must be 4 or 8, got {self.bits}")
        size = self.block_size
        if size < 16 or size & (size - 1):
            raise InvalidOptionError(f"--block-size must be a power of two ≥ 16, got {size}")
        if self.accuracy_level not in (0, 1, 2, 3, 4):
            raise InvalidOptionError(
                f"--accuracy-level must be 0–4 (4: int8 compute), got {self.accuracy_level}"
            )


@dataclass
class QuantReport:
    linear_layers: int  # MatMul / Gemm nodes with a constant weight, before quantization
    quantized_layers: int  # of those, now MatMulNBits
    quantized_embeddings: list[str]  # Gather tables now GatherBlockQuantized
    config: dict  # the QuantConfig used

    @property
    def complete(self) -> bool:
        return self.quantized_layers == self.linear_layers


def pack_rows(rows: np.ndarray, bits: int, block: int) -> tuple[np.ndarray, np.ndarray]:
    """Symmetric block quantization of a [N, K] weight, codes packed low-first along K.

    → data uint8 [N, K_blocks, block * bits / 8], scales float32 [N, K_blocks]. Rows are packed
    a slice at a time: the temporaries stay small whatever the weight's size.
    """
    n, k = rows.shape
    width = -(-k // block)
    data = np.empty((n, width, block * bits // 8), dtype=np.uint8)
    scales = np.empty((n, width), dtype=np.float32)
    for start in range(0, n, _ROWS_AT_ONCE):
        part = slice(start, start + _ROWS_AT_ONCE)
        data[part], scales[part] = _pack_slice(rows[part], bits, block, width)
    return data, scales


def _pack_slice(rows: np.ndarray, bits: int, block: int, width: int) -> tuple:
    padded = np.zeros((len(rows), width * block), dtype=np.float32)
    padded[:, : rows.shape[1]] = rows
    blocks = padded.reshape(len(rows), width, block)  # [n, KB, block]
    top = 2 ** (bits - 1)  # codes are value / scale + top, in [0, 2 * top)
    scales = np.abs(blocks).max(axis=-1) / (top - 1)  # [n, KB]
    scales[scales == 0] = 1.0
    codes = np.clip(np.rint(blocks / scales[..., None]), -top, top - 1).astype(np.int16) + top
    codes = codes.astype(np.uint8)
    if bits == 4:
        codes = codes[..., 0::2] | (codes[..., 1::2] << 4)
    return codes, scales


def quantize(model: onnx.ModelProto, config: QuantConfig) -> QuantReport:
    """Rewrite `model` in place; returns what was quantized."""
    graph = model.graph
    inits = {t.name: t for t in graph.initializer}
    linear = [n for n in graph.node if _weight_rows(n, inits) is not None]
    gathered = {n.input[0] for n in graph.node if n.op_type == "Gather"}  # tied tables
    packed: dict[str, tuple[str, str, int]] = {}  # weight → (data, scales, N) for Gather sharing
    done = 0
    for node in linear:
        rows = _weight_rows(node, inits)()
        if config.bits == 8 and config.per_tensor_activations and node.input[1] not in gathered:
            done += _replace_per_channel(graph, node, rows)
        else:
            done += _replace_blocks(graph, node, rows, config, packed)
    embeddings = _quantize_embeddings(graph, inits, config, packed)
    _drop_unused(graph)
    _ensure_domain(model)
    return QuantReport(len(linear), done, embeddings, asdict(config))


def _weight_rows(node: onnx.NodeProto, inits: dict):
    """A callable giving the [N, K] weight of a linear node; None without a constant weight."""
    if len(node.input) < 2 or node.input[1] not in inits or len(inits[node.input[1]].dims) != 2:
        return None
    attrs = {a.name: helper.get_attribute_value(a) for a in node.attribute}
    weight = inits[node.input[1]]
    if node.op_type == "MatMul":
        return lambda: numpy_helper.to_array(weight).T
    if node.op_type == "Gemm" and not attrs.get("transA", 0):
        if attrs.get("alpha", 1.0) != 1.0 or attrs.get("beta", 1.0) != 1.0:
            return None
        trans_b = attrs.get("transB", 0)
        return lambda: numpy_helper.to_array(weight) if trans_b else numpy_helper.to_array(weight).T
    return None


def _bias(node: onnx.NodeProto) -> str:
    return node.input[2] if node.op_type == "Gemm" and len(node.input) > 2 else ""


def _replace_per_channel(graph, node, rows: np.ndarray) -> int:
    """int8 per output channel, activations quantized on the fly: DynamicQuantizeMatMul runs
    MLAS' int8 GEMM (VNNI), the fastest CPU path for prefill and batches."""
    weight = node.input[1]
    scales = np.abs(rows).max(axis=1) / 127  # [N]
    scales[scales == 0] = 1.0
    codes = np.clip(np.rint(rows / scales[:, None]), -127, 127).astype(np.int8).T  # [K, N]
    names = (f"{weight}.q8", f"{weight}.scales", f"{weight}.zero")
    graph.initializer.extend(
        [
            numpy_helper.from_array(np.ascontiguousarray(codes), names[0]),
            numpy_helper.from_array(scales.astype(np.float32), names[1]),
            numpy_helper.from_array(np.zeros(len(scales), dtype=np.int8), names[2]),
        ]
    )
    inputs = [node.input[0], *names] + ([_bias(node)] if _bias(node) else [])
    out = node.output[0]
    quantized = helper.make_node(
        "DynamicQuantizeMatMul", inputs, [out], name=f"{node.name or out}.q8", domain=MS_DOMAIN
    )
    _swap(graph, node, [quantized])
    return 1


def _fitting_block(k: int, block: int) -> int:
    """The configured block, halved until it divides K (tiny models), but not below 16."""
    while block > 16 and k % block:
        block //= 2
    return block


def _pack(graph, name: str, rows: np.ndarray, config: QuantConfig, packed: dict) -> tuple:
    """Pack a [N, K] weight once per initializer. → (data, scales, N, block)."""
    if name not in packed:
        block = _fitting_block(rows.shape[1], config.block_size)
        data, scales = pack_rows(np.asarray(rows, dtype=np.float32), config.bits, block)
        names = (f"{name}.q{config.bits}", f"{name}.scales")
        graph.initializer.extend(
            [numpy_helper.from_array(data, names[0]), numpy_helper.from_array(scales, names[1])]
        )
        packed[name] = (*names, rows.shape[0], block)
    return packed[name]


def _replace_blocks(graph, node, rows: np.ndarray, config: QuantConfig, packed: dict) -> int:
    """Block-wise weights (int4, or int8 for a tied LM head): MatMulNBits."""
    n, k = rows.shape
    data_name, scales_name, _, block = _pack(graph, node.input[1], rows, config, packed)
    bias = _bias(node)
    out = node.output[0]
    product = f"{out}.nobias" if bias else out
    new = [
        helper.make_node(
            "MatMulNBits",
            [node.input[0], data_name, scales_name],
            [product],
            name=f"{node.name or out}.nbits",
            domain=MS_DOMAIN,
            K=k,
            N=n,
            bits=config.bits,
            block_size=block,
            accuracy_level=config.accuracy_level,
        )
    ]
    if bias:
        new.append(helper.make_node("Add", [product, bias], [out]))
    _swap(graph, node, new)
    return 1


def _quantize_embeddings(graph, inits: dict, config: QuantConfig, packed: dict) -> list[str]:
    """Gather on a float table (wte, wpe) → GatherBlockQuantized, sharing the LM head's bytes
    when tied. Tables whose width is not a whole number of blocks stay float."""
    done = []
    for node in [n for n in graph.node if n.op_type == "Gather" and n.input[0] in inits]:
        table = inits[node.input[0]]
        axis = next((helper.get_attribute_value(a) for a in node.attribute if a.name == "axis"), 0)
        width = table.dims[1] if len(table.dims) == 2 else 0
        whole = width and width % _fitting_block(width, config.block_size) == 0
        if axis != 0 or not whole or table.data_type != onnx.TensorProto.FLOAT:
            continue
        rows = numpy_helper.to_array(table) if node.input[0] not in packed else None
        data_name, scales_name, rows_count, block = _pack(
            graph, node.input[0], rows, config, packed
        )
        shape, data = f"{data_name}.2d_shape", f"{node.output[0]}.data"
        if shape not in {t.name for t in graph.initializer}:
            graph.initializer.append(
                numpy_helper.from_array(np.array([rows_count, -1], dtype=np.int64), shape)
            )
        _swap(
            graph,
            node,
            [
                helper.make_node("Reshape", [data_name, shape], [data]),  # [N, KB, blob] → 2-D
                helper.make_node(
                    "GatherBlockQuantized",
                    [data, node.input[1], scales_name],
                    list(node.output),
                    domain=MS_DOMAIN,
                    bits=config.bits,
                    block_size=block,
                    gather_axis=0,
                    quantize_axis=1,
                ),
            ],
        )
        done.append(node.input[0])
    return done


def _swap(graph, old: onnx.NodeProto, new: list[onnx.NodeProto]) -> None:
    position = list(graph.node).index(old)
    graph.node.remove(old)
    for offset, node in enumerate(new):
        graph.node.insert(position + offset, node)


def _drop_unused(graph) -> None:
    used = {name for node in graph.node for name in node.input}
    for tensor in [t for t in graph.initializer if t.name not in used]:
        graph.initializer.remove(tensor)


def _ensure_domain(model: onnx.ModelProto) -> None:
    if not any(op.domain == MS_DOMAIN for op in model.opset_import):
        model.opset_import.append(helper.make_opsetid(MS_DOMAIN, 1))


def require_complete(report: QuantReport, allow_partial: bool) -> None:
    if not report.complete and not allow_partial:
        raise ExportError(
            f"only {report.quantized_layers}/{report.linear_layers} linear layers were quantized: "
            "re-run with --allow-partial to accept a partly quantized model"
        )
