"""Reduced-precision exports: every linear layer quantized in int8 / int4 (LM head included), the
tied embedding stored once, fp16 with its fp32 islands and no NaN, fusion recorded, fidelity
measured against transformers and enforced by thresholds."""

from __future__ import annotations

from collections import Counter
from dataclasses import asdict
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from checkpoints import PRECISIONS, QUANTIZED
from cpu import runs_native_kernels
from onnx import TensorProto, helper, numpy_helper

from ortgen import Generator, kernels
from ortgen.errors import ExportError, InvalidOptionError, ModelFolderError, ParityError
from ortgen.manifest import read_manifest
from ortgen_export import ExportOptions, export_model
from ortgen_export.parity import thresholds_for
from ortgen_export.quantize import QuantReport, pack_rows, require_complete


def dequantize(data: np.ndarray, scales: np.ndarray, bits: int) -> np.ndarray:
    """Reference decode of pack_rows' layout, written independently: [N, KB, blob] → [N, K]."""
    if bits == 4:
        low, high = data & 0x0F, data >> 4
        codes = np.stack([low, high], axis=-1).reshape(*data.shape[:2], -1)
    else:
        codes = data
    values = (codes.astype(np.float32) - 2 ** (bits - 1)) * scales[..., None]
    return values.reshape(data.shape[0], -1)


@pytest.mark.parametrize("bits", [8, 4])
def test_large_weights_pack_row_by_row_alike(bits):
    """pack_rows works through big weights a slice of rows at a time: every row comes out as it
    does packed alone, wherever the slices cut."""
    rng = np.random.default_rng(bits)
    rows = rng.normal(size=(2 * 1024 + 37, 64)).astype(np.float32)
    data, scales = pack_rows(rows, bits, 32)
    assert np.abs(dequantize(data, scales, bits) - rows).max() <= scales.max() / 2 + 1e-6
    for i in (0, 1023, 1024, 2047, len(rows) - 1):
        alone_data, alone_scales = pack_rows(rows[i : i + 1], bits, 32)
        assert np.array_equal(data[i], alone_data[0])
        assert np.array_equal(scales[i], alone_scales[0])


@pytest.mark.parametrize("bits", [8, 4])
def test_packed_weights_match_onnxruntime_matmulnbits(bits):
    rng = np.random.default_rng(bits)
    rows = rng.normal(size=(48, 96)).astype(np.float32)  # [N, K]
    data, scales = pack_rows(rows, bits, 32)
    restored = dequantize(data, scales, bits)
    assert np.abs(restored - rows).max() <= scales.max() / 2 + 1e-6  # round-to-nearest
    node = helper.make_node(
        "MatMulNBits",
        ["A", "B", "S"],
        ["Y"],
        domain="com.microsoft",
        K=96,
        N=48,
        bits=bits,
        block_size=32,
        accuracy_level=0,
    )
    graph = helper.make_graph(
        [node],
        "g",
        [helper.make_tensor_value_info("A", TensorProto.FLOAT, [None, 96])],
        [helper.make_tensor_value_info("Y", TensorProto.FLOAT, None)],
        [numpy_helper.from_array(data, "B"), numpy_helper.from_array(scales, "S")],
    )
    model = helper.make_model(
        graph,
        ir_version=10,
        opset_imports=[helper.make_opsetid("", 18), helper.make_opsetid("com.microsoft", 1)],
    )
    session = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    a = rng.normal(size=(5, 96)).astype(np.float32)
    np.testing.assert_allclose(session.run(None, {"A": a})[0], a @ restored.T, rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("precision", QUANTIZED)
def test_every_linear_layer_is_quantized(arch, precision, quantized, exported):
    folder = quantized[(arch, precision)]
    manifest = read_manifest(folder)
    report = manifest.export["quantization"]
    assert report["linear_layers"] > 0
    assert report["quantized_layers"] == report["linear_layers"]
    model = onnx.load(str(folder / "model.onnx"))
    inits = {t.name for t in model.graph.initializer}
    float_linear = [
        n for n in model.graph.node if n.op_type in ("MatMul", "Gemm") and n.input[1] in inits
    ]
    assert float_linear == []
    ops = Counter(n.op_type for n in model.graph.node)
    quantized_ops = ops["MatMulNBits"] + ops["DynamicQuantizeMatMul"]
    assert quantized_ops == report["linear_layers"] == linear_in(exported[arch])
    assert quantized_ops >= 4 * manifest.num_layers + 1  # at least qkv/o/fc/proj + head
    # Per-row (block) activation quantization everywhere: batch-invariant (FIELD trap 16).
    assert ops["DynamicQuantizeMatMul"] == 0 and ops["MatMulNBits"] == quantized_ops
    assert ops["GatherBlockQuantized"] == 2  # token and position embeddings


def linear_in(folder) -> int:
    """Constant-weight MatMul / Gemm nodes of the fp32 export of the same checkpoint."""
    model = onnx.load(str(folder / "model.onnx"))
    inits = {t.name for t in model.graph.initializer}
    return sum(n.op_type in ("MatMul", "Gemm") and n.input[1] in inits for n in model.graph.node)


@pytest.mark.parametrize("precision", QUANTIZED)
def test_tied_embedding_is_quantized_once(arch, precision, quantized):
    folder = quantized[(arch, precision)]
    model = onnx.load(str(folder / "model.onnx"))
    manifest = read_manifest(folder)
    head = next(
        n
        for n in model.graph.node
        if n.op_type == "MatMulNBits" and dict_attr(n)["N"] == manifest.vocab_size
    )
    gathers = [n for n in model.graph.node if n.op_type == "GatherBlockQuantized"]
    producers = {o: n for n in model.graph.node for o in n.output}
    assert any(producers[g.input[0]].input[0] == head.input[1] for g in gathers)
    vocab_sized = [
        t for t in model.graph.initializer if t.dims and t.dims[0] == manifest.vocab_size
    ]
    assert len([t for t in vocab_sized if t.data_type == TensorProto.UINT8]) == 1
    float_tables = [t for t in vocab_sized if t.data_type == TensorProto.FLOAT]
    assert [t.name.endswith(".scales") for t in float_tables] == [True]  # its scales, no float copy


def dict_attr(node) -> dict:
    return {a.name: helper.get_attribute_value(a) for a in node.attribute}


@pytest.mark.parametrize("graph", ["built", "traced"])
@pytest.mark.parametrize("precision", PRECISIONS)
def test_fidelity_report_is_recorded(arch, graph, precision, quantized):
    """What the check measured is in the manifest (that its thresholds fail an export is
    test_fidelity_threshold_fails_the_export's job)."""
    key = (arch, precision) if graph == "built" else (arch, precision, graph)
    report = read_manifest(quantized[key]).parity
    assert report["max_abs_diff"] > 0  # quantization really changed the numbers
    assert report["thresholds"] == asdict(thresholds_for(precision))
    assert {"mean_abs_diff", "batch_max_abs_diff", "prompts"} <= set(report)


@pytest.mark.parametrize("precision", PRECISIONS)
def test_quantized_model_generates_and_is_smaller(arch, precision, quantized, exported):
    folder = quantized[(arch, precision)]
    generator = Generator.from_dir(folder)
    assert len(generator.generate_ids([1, 2, 3, 4], max_new_tokens=10, ignore_eos=True)) == 10
    limit = 1.0 if precision == "fp16" else 0.5  # fp16 keeps the tied head / embedding fp32
    assert size(folder / "model.onnx") < size(exported[arch] / "model.onnx") * limit


def size(path) -> int:
    return path.stat().st_size


@pytest.mark.parametrize("precision", ["fp32", "int8", "int4"])
def test_in_place_graph_stores_no_weight_twice(arch, precision, quantized, exported):
    """inplace.onnx (and int8's native variant) points into model.onnx for every weight
    (graph.save leaves the graph referencing the bytes it wrote): none is embedded again."""
    folder = exported[arch] if precision == "fp32" else quantized[(arch, precision)]
    inplace = read_manifest(folder).inplace
    for name in [inplace["file"], *([inplace["native_file"]] if "native_file" in inplace else [])]:
        graph = onnx.load(str(folder / name), load_external_data=False).graph
        weights = [t for t in graph.initializer if t.data_location == onnx.TensorProto.EXTERNAL]
        assert len(weights) >= 4 * read_manifest(folder).num_layers
        assert [t.name for t in graph.initializer if len(t.raw_data) >= 1024] == []
        read = {i for n in graph.node for i in n.input}
        assert [t.name for t in graph.initializer if t.name not in read] == []  # no ORT warning
        made_by = {out: n.op_type for n in graph.node for out in n.output}
        attention = [n for n in graph.node if n.op_type == "GroupQueryAttention"]
        assert not [n.name for n in attention if made_by.get(n.input[0]) == "Split"]  # packed


@pytest.mark.skipif(not runs_native_kernels(), reason="this CPU lacks both AVX-512 VNNI and AVX2")
@pytest.mark.parametrize("precision, bits", [("int8", 8), ("int4", 4)])
def test_quantized_native_graph_is_parity_checked_and_runs_by_default(
    arch, quantized, precision, bits
):
    """Where ortgen's kernels run, a quantized export writes the in-place graph's native variant
    (every MatMulNBits → ortgen.Q8MatMul of the same bits, every GroupQueryAttention →
    ortgen.CachedAttentionQ8 over an int8 cache, every SkipLayerNormalization → ortgen.SkipNorm or,
    before a projection, into its Q8MatMul),
    proves it against transformers with the others, and the runtime picks it."""
    folder = quantized[(arch, precision)]
    manifest = read_manifest(folder)
    assert manifest.inplace["native_kv_dtype"] == "int8"
    native = onnx.load(str(folder / manifest.inplace["native_file"]), load_external_data=False)
    inplace = onnx.load(str(folder / manifest.inplace["file"]), load_external_data=False)
    ops = Counter(n.op_type for n in native.graph.node)
    assert ops["Q8MatMul"] == Counter(n.op_type for n in inplace.graph.node)["MatMulNBits"] > 0
    assert ops["MatMulNBits"] == 0
    widths = {
        next((helper.get_attribute_value(a) for a in n.attribute if a.name == "bits"), 8)
        for n in native.graph.node
        if n.op_type == "Q8MatMul"
    }
    assert widths == {bits}
    assert ops["CachedAttentionQ8"] == manifest.num_layers and ops["GroupQueryAttention"] == 0
    assert manifest.inplace["native_kv_layout"] == "BHLD"  # caches [B, H, L, D + 4]
    caches = [v for v in native.graph.input if v.name.startswith("past_key_values")]
    assert {v.type.tensor_type.shape.dim[1].dim_value for v in caches} == {manifest.num_heads}
    records = {v.type.tensor_type.shape.dim[3].dim_value for v in caches}
    assert records == {manifest.head_dim + kernels.KV_SCALE_BYTES}
    assert {v.type.tensor_type.elem_type for v in caches} == {TensorProto.INT8}
    made_by = {out: n.op_type for n in native.graph.node for out in n.output}
    adds = [n for n in native.graph.node if n.op_type == "Add"]
    assert not [n.name for n in adds if made_by.get(n.input[0]) == "Q8MatMul"]  # biases folded
    assert ops["FastGelu"] == 0  # folded into the MLP's first Q8MatMul
    norms = Counter(n.op_type for n in inplace.graph.node)["SkipLayerNormalization"]
    # each layer's two norms before a projection (attention's QKV, the MLP's first) fold into it
    matmuls = [n for n in native.graph.node if n.op_type == "Q8MatMul"]
    folded = [n for n in matmuls if any(a.name == "epsilon" for a in n.attribute)]
    assert len(folded) == 2 * manifest.num_layers
    assert ops["SkipNorm"] + len(folded) == norms and ops["SkipLayerNormalization"] == 0
    checked = Counter(p["graph"] for p in manifest.parity["prompts"])
    assert checked["native"] == checked["inplace"] > 0
    assert manifest.inplace["native_file"] in manifest.export["files"]
    assert Generator.from_dir(folder).model.graph == "native"


@pytest.mark.parametrize("precision", ["int8", "int4"])
def test_the_session_keeps_one_copy_of_the_tied_table(
    arch, quantized, precision, monkeypatch, tmp_path
):
    """The embedding gather views the LM head's quantized table through a Reshape: ONNX Runtime's
    constant folding would make that view a second, resident copy of the table (38 MB for gpt2
    int8). The graph ONNX Runtime runs keeps the Reshape and holds the table's bytes once."""
    from ortgen import session as sessions
    from ortgen.model import Model

    optimized = tmp_path / "optimized.onnx"
    plain = sessions.session_options

    def saving(*args, **kwargs):
        options = plain(*args, **kwargs)
        options.optimized_model_filepath = str(optimized)
        return options

    monkeypatch.setattr(sessions, "session_options", saving)
    Model.load(quantized[(arch, precision)])
    graph = onnx.load(str(optimized), load_external_data=False).graph  # the folder's data
    vocab = read_manifest(quantized[(arch, precision)]).vocab_size
    tables = [
        t for t in graph.initializer if t.data_type == TensorProto.UINT8 and t.dims[0] == vocab
    ]
    assert len(tables) == 1
    assert any(n.op_type == "Reshape" and n.input[0] == tables[0].name for n in graph.node)


def as_older_folder(new: Path, old: Path, kv_dtype: str, positions_first: bool) -> None:
    """A copy of native folder `new` (int8 caches [B, H, L, D + 4]) as earlier exports wrote it:
    int8 records [B, L, H, D + 4] (2026-12-04), float16 caches [B, L, H, D] (`positions_first`)
    or, before those, float16 [B, H, L, D] with no kv_layout attribute and no native_kv_layout in
    the manifest."""
    import json
    import shutil

    shutil.copytree(new, old)
    manifest = json.loads((old / "ortgen.json").read_text())
    manifest["inplace"]["native_kv_dtype"] = kv_dtype
    if positions_first:
        manifest["inplace"]["native_kv_layout"] = "BLHD"
    else:
        del manifest["inplace"]["native_kv_layout"]
    (old / "ortgen.json").write_text(json.dumps(manifest))
    path = old / manifest["inplace"]["native_file"]
    graph = onnx.load(str(path), load_external_data=False)  # weights stay in model.onnx
    for node in graph.graph.node:
        if node.op_type != "CachedAttentionQ8":
            continue
        if kv_dtype == "float16":
            node.op_type = "CachedAttention"
        kept = [a for a in node.attribute if a.name != "kv_layout"]
        del node.attribute[:]
        node.attribute.extend(kept)
        if positions_first:
            node.attribute.append(helper.make_attribute("kv_layout", 1))
    for value in [*graph.graph.input, *graph.graph.output]:
        if value.type.tensor_type.elem_type == TensorProto.INT8:
            if kv_dtype == "float16":
                value.type.tensor_type.elem_type = TensorProto.FLOAT16
                value.type.tensor_type.shape.dim[3].dim_value -= kernels.KV_SCALE_BYTES
            if positions_first:
                swap_heads_and_positions(value)  # [B, H, L, ·] → [B, L, H, ·]
    onnx.save(graph, str(path))


def swap_heads_and_positions(value: onnx.ValueInfoProto) -> None:
    """A cache tensor's declared dims 1 and 2 trade places: [B, H, L, D] ⇄ [B, L, H, D]."""
    dims = value.type.tensor_type.shape.dim
    first, second = onnx.TensorShapeProto.Dimension(), onnx.TensorShapeProto.Dimension()
    first.CopyFrom(dims[1])
    second.CopyFrom(dims[2])
    dims[1].CopyFrom(second)
    dims[2].CopyFrom(first)


def native_runs(folder: Path) -> list[np.ndarray]:
    """Logits of a two-row prefill and three decode steps through `folder`'s native graph."""
    from ortgen.decode_state import DecodeState

    generator = Generator.from_dir(folder)
    assert generator.model.graph == "native"
    state = DecodeState.for_model(generator.model)
    logits = [state.prefill([[5, 9, 2, 7, 1, 3], [4, 8]])]
    return logits + [state.step(np.array([11, 12])) for _ in range(3)]


@pytest.mark.skipif(not runs_native_kernels(), reason="this CPU lacks both AVX-512 VNNI and AVX2")
def test_native_folders_of_earlier_cache_layouts_still_run(arch, quantized, tmp_path):
    """Folders exported with int8 records [B, L, H, D + 4], or with a float16 cache, [B, L, H, D]
    or (before that) [B, H, L, D]: the runtime still runs their native graph, with the same numbers
    in either layout (only where the cache bytes sit differs); the int8 records' numbers stay close
    to the float16 cache's."""
    new = quantized[(arch, "int8")]
    kinds = [("int8", True), ("float16", True), ("float16", False)]
    for kv_dtype, positions_first in kinds:
        as_older_folder(new, tmp_path / f"{kv_dtype}-{positions_first}", kv_dtype, positions_first)
    records_blhd, half, half_bhld = (native_runs(tmp_path / f"{d}-{p}") for d, p in kinds)
    records = native_runs(new)
    assert Generator.from_dir(tmp_path / "int8-True").model.kv_positions_first
    assert not Generator.from_dir(new).model.kv_positions_first
    assert not Generator.from_dir(tmp_path / "float16-False").model.kv_positions_first
    assert Generator.from_dir(tmp_path / "float16-True").model.kv_dtype == "float16"
    assert all(np.array_equal(a, b) for a, b in zip(records, records_blhd, strict=True))
    assert all(np.array_equal(a, b) for a, b in zip(half, half_bhld, strict=True))
    for a, b in zip(records, half, strict=True):
        assert np.abs(a - b).max() < 0.05 * np.abs(b).max()


def test_native_graph_is_for_quantized_folders_and_can_be_switched_off(
    arch, quantized, exported, monkeypatch
):
    """fp32 folders keep ONNX Runtime's float32 cache: no native graph to load or refuse."""
    assert "native_file" not in read_manifest(exported[arch]).inplace
    with pytest.raises(ModelFolderError, match="no native graph"):
        Generator.from_dir(exported[arch], graph="native")
    monkeypatch.setenv("ORTGEN_NATIVE", "0")
    for precision in ("int8", "int4"):
        folder = quantized[(arch, precision)]
        assert Generator.from_dir(folder).model.graph == "inplace"
        if runs_native_kernels():  # elsewhere the export wrote no native graph to refuse
            with pytest.raises(ModelFolderError, match="ORTGEN_NATIVE=0"):
                Generator.from_dir(folder, graph="native")


def test_fusion_is_recorded_and_optional(checkpoints, exported, tmp_path):
    fused = read_manifest(exported["gpt2"]).export
    assert fused["optimized"] and fused["fused_nodes"].get("SkipLayerNormalization", 0) > 0
    plain = export_model(
        str(checkpoints["gpt2"]), tmp_path / "plain", ExportOptions(optimize=False)
    )
    assert not plain.export["optimized"] and "fused_nodes" not in plain.export
    ids, options = [5, 17, 42, 99], dict(max_new_tokens=16, ignore_eos=True)
    fused_ids = Generator.from_dir(exported["gpt2"]).generate_ids(ids, **options)
    assert Generator.from_dir(tmp_path / "plain").generate_ids(ids, **options) == fused_ids


def test_fidelity_threshold_fails_the_export(checkpoints, tmp_path):
    options = ExportOptions(precision="int4", min_agreement=1.0)
    with pytest.raises(ParityError, match="int4 parity check failed: top-1 agreement"):
        export_model(str(checkpoints["gpt_neo"]), tmp_path / "strict", options)
    assert list(tmp_path.iterdir()) == []


def test_partial_quantization_is_refused_unless_allowed():
    partial = QuantReport(linear_layers=9, quantized_layers=8, quantized_embeddings=[], config={})
    with pytest.raises(ExportError, match="8/9 linear layers.*--allow-partial"):
        require_complete(partial, allow_partial=False)
    require_complete(partial, allow_partial=True)


@pytest.mark.parametrize(
    "options, fragment",
    [
        (dict(precision="int3"), "precision"),
        (dict(precision="int4", block_size=24), "block-size"),
        (dict(precision="int8", accuracy_level=7), "accuracy-level"),
        (dict(precision="fp32", min_agreement=0.5), "min-agreement"),
        (dict(precision="int8", min_agreement=1.5), "min-agreement"),
    ],
)
def test_invalid_export_options_are_refused(options, fragment):
    with pytest.raises(InvalidOptionError, match=fragment):
        ExportOptions(**options)


def test_fp16_graph_keeps_the_cache_fp16_and_the_logits_fp32(arch, quantized):
    model = onnx.load(str(quantized[(arch, "fp16")] / "model.onnx"))
    types = {
        v.name: v.type.tensor_type.elem_type for v in [*model.graph.input, *model.graph.output]
    }
    assert types["past_key_values.0.key"] == TensorProto.FLOAT16
    assert types["present.0.value"] == TensorProto.FLOAT16
    assert types["logits"] == TensorProto.FLOAT
    manifest = read_manifest(quantized[(arch, "fp16")])
    kept = manifest.export["fp16_kept_fp32"]
    attention = kept.get("Softmax", 0) + kept.get("MultiHeadAttention", 0)  # traced / built
    assert attention >= manifest.num_layers and kept.get("SkipLayerNormalization", 0) >= 1


def test_fp16_has_no_nan_on_long_left_padded_prompts(arch, quantized):
    """Fully masked pad rows and GPT-Neo's unscaled scores with its mask value: no NaN / inf."""
    from ortgen.decode_state import DecodeState

    generator = Generator.from_dir(quantized[(arch, "fp16")])
    assert generator.model.graph == "portable" and generator.manifest.kv_dtype == "float16"
    limit = generator.manifest.max_positions
    prompts = [list(range(1, limit - 8)), [5, 6, 7]]  # the short one is left-padded a lot
    logits = DecodeState.for_model(generator.model).prefill(prompts, all_logits=True)
    assert np.isfinite(logits[0]).all() and np.isfinite(logits[1, -3:]).all()
    out = generator.generate_ids(prompts, max_new_tokens=8, ignore_eos=True)
    assert [len(o) for o in out] == [8, 8]


@pytest.mark.cuda
def test_fp16_runs_on_cuda(quantized):
    """Same graph, CUDA kernels: logits close to the CPU run's through a prompt, steps, a row
    leaving and one joining; the fp16 cache stays on the GPU between steps; no NaN."""
    from ortgen.decode_state import DecodeState

    if "CUDAExecutionProvider" not in ort.get_available_providers():
        pytest.skip("no CUDA execution provider on this machine")
    for arch in ("gpt2", "gpt_neo"):
        runs = []
        for device in ("cpu", "cuda"):
            generator = Generator.from_dir(quantized[(arch, "fp16")], device=device)
            state = DecodeState.for_model(generator.model)
            logits = [state.prefill([list(range(1, 40)), [5, 6, 7]], all_logits=True)]
            logits += [state.step(np.array([token, token + 1])) for token in (11, 12, 13)]
            state.keep([1])
            logits += [state.step(np.array([14])), state.prefill([[8, 9, 10, 11]])]
            logits += [state.step(np.array([15, 16]))]
            runs.append(logits)
        cache = state._cache  # after a step: where the last run left it
        assert {value.device_name().lower() for value in cache} == {"cuda"}
        assert {value.data_type() for value in cache} == {"tensor(float16)"}
        for cpu, cuda in zip(*runs, strict=True):
            assert np.isfinite(cuda).all()
            assert np.abs(cpu - cuda).max() < 5e-2


@pytest.mark.parametrize("precision", ["fp32", *QUANTIZED])
@pytest.mark.parametrize("sampling", [False, True], ids=["greedy", "seeded"])
def test_batch_is_invariant_at_every_precision(arch, precision, sampling, quantized, exported):
    """A prompt's tokens are the same alone and batched with other prompts of other lengths."""
    folder = exported[arch] if precision == "fp32" else quantized[(arch, precision)]
    generator = Generator.from_dir(folder, threads=2)
    rng = np.random.default_rng(1)
    prompts = [rng.integers(1, 300, n).tolist() for n in (2, 31, 7, 18, 5, 12)]
    options = dict(max_new_tokens=24, ignore_eos=True, do_sample=sampling, seed=9, top_k=0)
    batch = generator.generate_ids(prompts, **options)
    assert batch == [generator.generate_ids(p, **options) for p in prompts]
    assert batch[1:3] == generator.generate_ids(prompts[1:3], **options)  # other neighbours
