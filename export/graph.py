"""Checkpoint → ONNX graph with KV cache (traced through optimum's exporter, optimum's tensor
names), then graph surgery: the tied embedding / LM-head weight stored once."""

from __future__ import annotations

import contextlib
import io
import logging
import tempfile
import warnings
from collections import Counter
from pathlib import Path
from typing import Any

import numpy as np
import onnx
from onnx import helper, numpy_helper

from ortgen.errors import ExportError, first_line
from ortgen_export.folder import umask

OPSET = 18
# Weights beyond this many bytes go to `model.onnx.data`: a protobuf file cannot exceed 2 GB, and
# the graph's own nodes and small constants need room beside the weights.
EXTERNAL_DATA_THRESHOLD = 2**31 - 64 * 2**20


def trace(model: Any) -> onnx.ModelProto:
    """One graph for prefill and decode: inputs input_ids, attention_mask, position_ids,
    past_key_values.{i}.key|value; outputs logits, present.{i}.key|value."""
    from optimum.exporters.onnx import onnx_export_from_model

    with tempfile.TemporaryDirectory(prefix="ortgen-trace-") as work, _no_stdout():
        try:
            onnx_export_from_model(
                model,
                output=work,
                task="text-generation-with-past",
                opset=OPSET,
                do_validation=False,  # ortgen's own parity check follows, against transformers
            )
        except Exception as err:  # the tracer raises anything; keep one readable line
            raise ExportError(f"ONNX export failed: {first_line(err)}") from None
        return onnx.load(str(Path(work) / "model.onnx"))


@contextlib.contextmanager
def _no_stdout():
    """optimum prints progress of its own; `ortgen export` reports stages itself."""
    with contextlib.redirect_stdout(io.StringIO()):
        yield


@contextlib.contextmanager
def quiet():
    """Tracer warnings and library logs are for developers, not for `ortgen export` users."""
    from optimum.utils import logging as optimum_logging
    from transformers.utils import logging as transformers_logging

    libraries = (optimum_logging, transformers_logging)
    levels = [lib.get_verbosity() for lib in libraries]
    torch_onnx = logging.getLogger("torch.onnx")
    torch_level = torch_onnx.level
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        for lib in libraries:
            lib.set_verbosity_error()
        torch_onnx.setLevel(logging.ERROR)
        try:
            yield
        finally:
            for lib, level in zip(libraries, levels, strict=True):
                lib.set_verbosity(level)
            torch_onnx.setLevel(torch_level)


LOGITS_TO_KEEP = "logits_to_keep"  # graph input: logits for the last N positions, 0 = all


def keep_last_logits(model: onnx.ModelProto, logits_name: str = "logits") -> bool:
    """Add an optional input `logits_to_keep` ([1] int64, default 0 = every position): the LM
    head then runs on the last N positions only. Generation asks for 1 during the prefill — the
    head is the largest matmul — while parity checks and perplexity keep every position.
    Clients that don't know the input (optimum's) get the full logits as before.

    In a built graph the slice comes earlier, right after the last layer's attention: that
    layer's keys and values still cover every position (the cache needs them), but its output
    projection, MLP and the final norm run on the kept positions only — of a prompt's matmul
    work, 10 / 12 of one layer (gpt2: ~7 % of a 12-layer prefill)."""
    graph = model.graph
    head = next((n for n in graph.node if n.op_type == "MatMul" and logits_name in n.output), None)
    if head is None:
        return False
    hidden, kept = head.input[0], f"{head.input[0]}.kept"  # [B, T, D] → [B, N or T, D]
    graph.initializer.extend(
        [
            numpy_helper.from_array(np.array([0], dtype=np.int64), LOGITS_TO_KEEP),
            numpy_helper.from_array(np.array([2**62], dtype=np.int64), f"{kept}.end"),
            numpy_helper.from_array(np.array([1], dtype=np.int64), f"{kept}.axis"),
        ]
    )
    graph.input.append(helper.make_tensor_value_info(LOGITS_TO_KEEP, onnx.TensorProto.INT64, [1]))
    start = helper.make_node("Neg", [LOGITS_TO_KEEP], [f"{kept}.start"])  # -0 = 0: every position

    def sliced(name: str) -> onnx.NodeProto:
        return helper.make_node(
            "Slice", [name, f"{kept}.start", f"{kept}.end", f"{kept}.axis"], [f"{name}.kept"]
        )

    crossing = _last_attention_outputs(graph)
    if crossing is None:  # the head's input alone
        nodes = [start, sliced(hidden)]
        position = list(graph.node).index(head)
        head.input[0] = f"{hidden}.kept"
    else:
        attention, names = crossing
        nodes = [start, *(sliced(name) for name in names)]
        position = list(graph.node).index(attention) + 1
        for node in list(graph.node)[position:]:
            node.input[:] = [f"{n}.kept" if n in names else n for n in node.input]
    for offset, node in enumerate(nodes):
        graph.node.insert(position + offset, node)
    return True


def _last_attention_outputs(graph) -> tuple[onnx.NodeProto, list[str]] | None:
    """(the last MultiHeadAttention, the two per-position tensors that cross it: its output and
    the residual stream) in a built graph; None elsewhere (traced graphs, or any other shape)."""
    nodes = list(graph.node)
    found = [i for i, n in enumerate(nodes) if n.op_type == "MultiHeadAttention"]
    if not found:
        return None
    index = found[-1]
    produced = {out for node in nodes[: index + 1] for out in node.output}
    produced |= {i.name for i in graph.input}
    produced -= {o.name for o in graph.output}
    names = []
    for node in nodes[index + 1 :]:
        names += [n for n in node.input if n in produced and n not in names]
    attended = nodes[index].output[0]
    if len(names) != 2 or attended not in names:
        return None
    return nodes[index], names


def store_tied_weights_once(model: onnx.ModelProto, logits_name: str = "logits") -> bool:
    """The exporter folds lm_head's transpose of the tied embedding into a second [D, V] copy.
    Rewrite `MatMul(x, Eᵀ)` as `Gemm(x, E, transB=1)` on the embedding itself and drop the copy.
    Returns whether a copy was removed."""
    graph = model.graph
    inits = {t.name: t for t in graph.initializer}
    head = next((n for n in graph.node if n.op_type == "MatMul" and logits_name in n.output), None)
    if head is None or head.input[1] not in inits:
        return False
    transposed = numpy_helper.to_array(inits[head.input[1]])  # [D, V]
    embedding = _find_transpose_of(transposed, inits, exclude=head.input[1])
    if embedding is None:
        return False
    vocab, width = transposed.shape[1], transposed.shape[0]
    x, name = head.input[0], head.name or "lm_head"
    graph.initializer.extend(
        [
            numpy_helper.from_array(np.array([-1, width], dtype=np.int64), f"{name}/flat_shape"),
            numpy_helper.from_array(np.array([vocab], dtype=np.int64), f"{name}/vocab"),
        ]
    )
    new_nodes = [
        helper.make_node("Reshape", [x, f"{name}/flat_shape"], [f"{name}/x2d"]),  # [B*T, D]
        helper.make_node("Gemm", [f"{name}/x2d", embedding, ""], [f"{name}/y2d"], transB=1),
        helper.make_node("Shape", [x], [f"{name}/lead"], start=0, end=2),  # [2] = (B, T)
        helper.make_node("Concat", [f"{name}/lead", f"{name}/vocab"], [f"{name}/shape"], axis=0),
        helper.make_node("Reshape", [f"{name}/y2d", f"{name}/shape"], [logits_name]),  # [B, T, V]
    ]
    position = list(graph.node).index(head)
    graph.node.remove(head)
    for offset, node in enumerate(new_nodes):
        graph.node.insert(position + offset, node)
    graph.initializer.remove(inits[head.input[1]])
    return True


def _find_transpose_of(
    transposed: np.ndarray, inits: dict[str, onnx.TensorProto], exclude: str
) -> str | None:
    """Name of the initializer equal to `transposed.T`, if any."""
    want = tuple(reversed(transposed.shape))
    for name, tensor in inits.items():
        same_shape = name != exclude and tuple(tensor.dims) == want
        if same_shape and np.array_equal(numpy_helper.to_array(tensor), transposed.T):
            return name
    return None


def node_counts(model: onnx.ModelProto) -> dict[str, int]:
    return dict(sorted(Counter(n.op_type for n in model.graph.node).items()))


def save(
    model: onnx.ModelProto,
    folder: Path,
    file_name: str = "model.onnx",
    threshold: int = EXTERNAL_DATA_THRESHOLD,
) -> list[str]:
    """Write the graph; weights go to `<file>.data` only when they exceed `threshold` bytes (the
    protobuf limit by default). Returns the files written. Either way `model` is left pointing
    at the bytes just written (each weight of ≥ 1 KB an external reference into the file that
    holds it, its own bytes dropped), so a graph made from it next shares them."""
    size = sum(t.ByteSize() for t in model.graph.initializer)
    if size < threshold:
        write_streamed(model, folder / file_name, refer=True)
        return [file_name]
    onnx.save_model(  # (which turns the written weights into references itself)
        model,
        str(folder / file_name),
        save_as_external_data=True,
        all_tensors_to_one_file=True,
        location=f"{file_name}.data",
        size_threshold=_REFERENCED_FROM,
    )
    # onnx creates the data file private (0600): give it the mode of every other file written.
    (folder / f"{file_name}.data").chmod(0o666 & ~umask())
    return [file_name, f"{file_name}.data"]


def write_streamed(model: onnx.ModelProto, path: Path, refer: bool = False) -> None:
    """`model` serialized to `path` one initializer at a time. onnx.save_model serializes the whole
    model into one bytes object first — a second copy of every embedded weight; here the file is
    written as protobuf's wire format lays it out (fields may come in any order, a repeated field
    is its entries one after another), so only the largest weight is ever copied at once. Fields
    unknown to this onnx version are not carried over (the graphs written here have none). With
    `refer`, each initializer of ≥ 1 KB becomes a reference to its bytes in the file."""
    with open(path, "wb") as file:
        file.write(_without(model, "graph").SerializeToString())
        if not model.HasField("graph"):
            return
        graph = model.graph
        shell = _without(graph, "initializer")  # nodes, inputs, outputs: small
        entries = [(t, t.ByteSize()) for t in graph.initializer]
        initializer_tag = _tag(onnx.GraphProto, "initializer")
        graph_size = shell.ByteSize() + sum(
            len(initializer_tag) + len(_varint(size)) + size for _, size in entries
        )
        file.write(_tag(onnx.ModelProto, "graph") + _varint(graph_size))
        file.write(shell.SerializeToString())
        for tensor, size in entries:
            file.write(initializer_tag + _varint(size))
            serialized = tensor.SerializeToString()
            start = file.tell()
            file.write(serialized)
            raw = _payload(serialized, _RAW_DATA)  # (offset, length) of its bytes
            if refer and raw is not None and raw[1] >= _REFERENCED_FROM:
                _refer(tensor, path.name, start + raw[0], raw[1])


_REFERENCED_FROM = 1024  # bytes: smaller initializers stay embedded in every graph
_RAW_DATA = onnx.TensorProto.DESCRIPTOR.fields_by_name["raw_data"].number


def _refer(tensor: onnx.TensorProto, location: str, offset: int, length: int) -> None:
    tensor.ClearField("raw_data")
    tensor.data_location = onnx.TensorProto.EXTERNAL
    for key, value in (("location", location), ("offset", offset), ("length", length)):
        tensor.external_data.add(key=key, value=str(value))


def _payload(message: bytes, number: int) -> tuple[int, int] | None:
    """(offset, length) of the length-delimited field `number` in a serialized message, found by
    stepping over the fields before it (their payloads are skipped, not read)."""
    at = 0
    while at < len(message):
        key, at = _read_varint(message, at)
        kind = key & 7
        if kind == 0:
            _, at = _read_varint(message, at)
        elif kind in (1, 5):
            at += 8 if kind == 1 else 4
        elif kind == 2:
            length, at = _read_varint(message, at)
            if key >> 3 == number:
                return at, length
            at += length
        else:
            return None  # groups: not in ONNX's messages
    return None


def _read_varint(data: bytes, at: int) -> tuple[int, int]:
    value = shift = 0
    while True:
        byte = data[at]
        value |= (byte & 0x7F) << shift
        at, shift = at + 1, shift + 7
        if not byte & 0x80:
            return value, at


def _without(message: Any, skipped: str) -> Any:
    """A copy of `message` without the field `skipped` (the others are small)."""
    copy = type(message)()
    for field, value in message.ListFields():
        if field.name == skipped:
            continue
        if hasattr(value, "extend"):  # a repeated field
            getattr(copy, field.name).extend(value)
        elif field.message_type is not None:
            getattr(copy, field.name).CopyFrom(value)
        else:
            setattr(copy, field.name, value)
    return copy


def _tag(message_type: Any, field_name: str) -> bytes:
    """The key of a length-delimited field: field number << 3 | wire type 2."""
    return _varint(message_type.DESCRIPTOR.fields_by_name[field_name].number << 3 | 2)


def _varint(value: int) -> bytes:
    out = bytearray()
    while True:
        low, value = value & 0x7F, value >> 7
        out.append(low | (0x80 if value else 0))
        if not value:
            return bytes(out)
