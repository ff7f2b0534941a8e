"""The model folder contract and the export stage's guarantees: names, manifest, tied weights stored
once, the parity check that can fail, atomic writes, clear refusals."""

from __future__ import annotations

import dataclasses
import json

import numpy as np
import onnx
import pytest
from onnx import numpy_helper

from ortgen.errors import ExportError, ParityError, UnsupportedModelError
from ortgen.manifest import read_manifest
from ortgen_export import export_model, parity


def test_folder_has_the_contract_files(arch, exported):
    folder = exported[arch]
    names = {p.name for p in folder.iterdir()}
    assert {"model.onnx", "ortgen.json", "config.json", "tokenizer.json"} <= names
    assert not any(n.startswith(".") for n in names)


def test_graph_uses_optimums_tensor_names(arch, exported):
    manifest = read_manifest(exported[arch])
    model = onnx.load(str(exported[arch] / "model.onnx"), load_external_data=False)
    defaults = {t.name for t in model.graph.initializer}
    inputs = {i.name: i for i in model.graph.input if i.name not in defaults}  # required ones
    outputs = [o.name for o in model.graph.output]
    expected_inputs = {"input_ids", "attention_mask", "position_ids"}
    for i in range(manifest.num_layers):
        expected_inputs |= {f"past_key_values.{i}.key", f"past_key_values.{i}.value"}
        assert f"present.{i}.key" in outputs and f"present.{i}.value" in outputs
    assert set(inputs) == expected_inputs
    assert outputs[0] == "logits"
    dims = inputs["past_key_values.0.key"].type.tensor_type.shape.dim
    assert [d.dim_value for d in dims][1::2] == [manifest.num_heads, manifest.head_dim]


def test_manifest_describes_the_model(arch, exported, checkpoints):
    manifest = read_manifest(exported[arch])
    config = json.loads((checkpoints[arch] / "config.json").read_text())
    assert manifest.architecture == arch
    assert manifest.num_layers == config.get("n_layer", config.get("num_layers"))
    assert manifest.vocab_size == config["vocab_size"]
    assert manifest.eos_token_id == config["eos_token_id"]
    assert manifest.precision == "fp32"
    # The report covers what other clients load and what ortgen runs (the thresholds
    # themselves are enforced by the export: test_fp32_parity_check_fails_on_another_model).
    graphs = [p["graph"] for p in manifest.parity["prompts"]]
    assert graphs.count("portable") == graphs.count("inplace") >= 3
    assert all(len(p["step_max_abs_diff"]) >= 4 for p in manifest.parity["prompts"])
    assert {"torch", "transformers", "onnx", "onnxruntime"} <= set(manifest.versions)


def test_gpt_neo_parity_covers_a_prompt_longer_than_the_window(exported, checkpoints):
    window = json.loads((checkpoints["gpt_neo"] / "config.json").read_text())["window_size"]
    lengths = [p["tokens"] for p in read_manifest(exported["gpt_neo"]).parity["prompts"]]
    assert max(lengths) > window


def test_tied_embedding_is_stored_once(arch, exported):
    manifest = read_manifest(exported[arch])
    model = onnx.load(str(exported[arch] / "model.onnx"))
    v, d = manifest.vocab_size, manifest.hidden_size
    big = [t for t in model.graph.initializer if sorted(t.dims) == sorted([v, d])]
    assert len(big) == 1
    assert manifest.export["tied_weights_stored_once"]


def test_existing_output_is_refused_without_force(checkpoints, exported):
    before = (exported["gpt2"] / "ortgen.json").read_text()
    with pytest.raises(ExportError, match="--force"):
        export_model(str(checkpoints["gpt2"]), exported["gpt2"])
    assert (exported["gpt2"] / "ortgen.json").read_text() == before


def test_force_replaces_the_folder(checkpoints, tmp_path):
    out = tmp_path / "model"
    out.mkdir()
    (out / "ortgen.json").write_text("{}")  # an earlier model folder: --force may replace it
    (out / "stale.txt").write_text("old")
    export_model(str(checkpoints["gpt2"]), out, force=True)
    assert not (out / "stale.txt").exists() and (out / "ortgen.json").is_file()
    assert [p.name for p in tmp_path.iterdir()] == ["model"]


def test_failed_export_leaves_no_folder(checkpoints, tmp_path, monkeypatch):
    def failing_check(*args, **kwargs):
        raise ParityError("parity check failed: injected")

    monkeypatch.setattr(parity, "check_parity", failing_check)
    with pytest.raises(ParityError):
        export_model(str(checkpoints["gpt_neo"]), tmp_path / "out")
    assert list(tmp_path.iterdir()) == []


def test_parity_check_fails_on_a_wrong_graph(checkpoints, references, exported, tmp_path):
    import shutil

    broken = tmp_path / "broken"
    shutil.copytree(exported["gpt2"], broken)
    model = onnx.load(str(broken / "model.onnx"))
    weight = next(t for t in model.graph.initializer if len(t.dims) == 2 and "attn" in t.name)
    array = numpy_helper.to_array(weight).copy()
    array[0, :] += 0.05  # a small corruption in one attention weight
    weight.CopyFrom(numpy_helper.from_array(array, weight.name))
    onnx.save(model, str(broken / "model.onnx"))
    # Only the portable graph: the in-place one would refuse the changed file before any check.
    manifest = json.loads((broken / "ortgen.json").read_text())
    (broken / "ortgen.json").write_text(json.dumps({**manifest, "inplace": {}}))
    prompts = [np.arange(1, 20).tolist()] * 3
    with pytest.raises(ParityError, match="parity check failed"):
        parity.check_parity(
            parity.reference_outputs(references["gpt2"], prompts),
            broken,
            "fp32",
            parity.thresholds_for("fp32"),
        )


def test_unsupported_architecture_is_refused(tmp_path):
    from transformers import LlamaConfig

    LlamaConfig(
        hidden_size=32,
        num_hidden_layers=1,
        num_attention_heads=2,
        intermediate_size=64,
        vocab_size=100,
    ).save_pretrained(tmp_path / "llama")
    with pytest.raises(UnsupportedModelError, match="unsupported architecture 'llama'"):
        export_model(str(tmp_path / "llama"), tmp_path / "out")
    assert not (tmp_path / "out").exists()


def test_folder_without_config_is_refused(tmp_path):
    with pytest.raises(ExportError, match="no config.json"):
        export_model(str(tmp_path), tmp_path / "out")


def test_logits_to_keep_is_optional_and_exact(arch, exported):
    """Clients that don't know `logits_to_keep` (optimum's) get every position; ortgen asks for
    the last one during the prefill and gets exactly that row."""
    import onnxruntime as ort

    manifest = read_manifest(exported[arch])
    assert manifest.tensors.logits_to_keep == "logits_to_keep"
    session = ort.InferenceSession(str(exported[arch] / "model.onnx"))
    ids = np.arange(3, 20, dtype=np.int64)[None]  # [1, 17]
    mask = np.ones_like(ids)
    feeds = {
        "input_ids": ids,
        "attention_mask": mask,
        "position_ids": np.arange(17, dtype=np.int64)[None],
    }
    empty = np.zeros((1, manifest.num_heads, 0, manifest.head_dim), dtype=np.float32)  # no past
    for i in range(manifest.num_layers):
        feeds |= {f"past_key_values.{i}.key": empty, f"past_key_values.{i}.value": empty}
    full = session.run(["logits"], feeds)[0]
    last = session.run(["logits"], {**feeds, "logits_to_keep": np.array([1])})[0]
    assert full.shape == (1, 17, manifest.vocab_size) and last.shape == (1, 1, manifest.vocab_size)
    np.testing.assert_allclose(last[0, 0], full[0, -1], rtol=1e-5, atol=1e-5)
    # the present keys and values still cover every position
    names = [o.name for o in session.get_outputs() if o.name.startswith("present.")]
    presents = session.run(names, {**feeds, "logits_to_keep": np.array([1])})
    assert len(presents) == 2 * manifest.num_layers and all(p.shape[2] == 17 for p in presents)


def test_built_graphs_keep_the_last_positions_from_the_last_attention_on(exported):
    """The slice comes right after the last layer's attention, on its output and the residual
    stream: that layer's projection, MLP and the head run on the kept positions only."""
    import onnx

    model = onnx.load(str(exported["gpt2"] / "model.onnx"), load_external_data=False)
    nodes = list(model.graph.node)
    last = max(i for i, n in enumerate(nodes) if n.op_type == "MultiHeadAttention")
    sliced = [n for n in nodes[last + 1 :] if n.op_type == "Slice"]
    assert nodes[last].output[0] in [n.input[0] for n in sliced] and len(sliced) >= 2
    kept = {n.output[0] for n in sliced}
    after = {name for n in nodes[last + 1 :] if n.op_type != "Slice" for name in n.input}
    assert nodes[last].output[0] not in after  # every later use reads the kept positions
    assert kept <= after


def test_fp32_parity_check_fails_on_another_model(exported, references):
    """The check really compares: GPT-2's folder against the GPT-Neo reference (same tokenizer
    and vocabulary, other weights) is refused."""
    from ortgen_export.parity import THRESHOLDS, check_parity, reference_outputs

    prompts = [[5, 17, 42, 99, 7], list(range(30, 60))]
    other = reference_outputs(references["gpt_neo"], prompts)
    with pytest.raises(ParityError, match="fp32 parity check failed"):
        check_parity(other, exported["gpt2"], "fp32", THRESHOLDS["fp32"])


def test_float64_reference_is_transformers_forward_one_module_at_a_time(arch, references):
    """The fp32 bound's float64 logits: transformers' own forward with each module's weights cast
    up only while it runs; the model keeps its own float32 tensors (same memory), ties intact."""
    import torch

    model = references[arch]
    before = {name: (p.detach().clone(), p.data_ptr()) for name, p in model.named_parameters()}
    largest = max(sum(p.numel() for p in m.parameters(recurse=False)) for m in model.modules())
    in_float64 = []  # float64 weights while each module finishes (before it is cast back)

    def count(*_):
        in_float64.append(sum(p.numel() for p in model.parameters() if p.dtype == torch.float64))

    handles = [m.register_forward_hook(count) for m in model.modules()]
    ids = list(range(5, 40))
    try:
        exact, why = parity._exact_logits(model, ids)
    finally:
        for handle in handles:
            handle.remove()
    with torch.inference_mode():
        fp32 = model(torch.tensor([ids])).logits[0].numpy()
    assert why is None and exact.dtype == np.float64 and exact.shape == fp32.shape
    assert 0 < np.abs(exact - fp32).max() <= 1e-5  # fp32 rounding, nothing more
    assert 0 < max(in_float64) <= largest
    assert all(p.dtype == torch.float32 for p in model.parameters())
    for name, p in model.named_parameters():
        assert torch.equal(p, before[name][0]) and p.data_ptr() == before[name][1]
    assert model.get_output_embeddings().weight is model.get_input_embeddings().weight


def _moved(references, exact_by: float, fp32_by: float, keep_exact: bool = True):
    """References whose float64 logits are moved by `exact_by` and whose transformers fp32 logits
    sit `fp32_by` from those (what transformers' rounding error looks like on a large model)."""
    from dataclasses import replace

    prompts = [
        replace(
            ref,
            exact=ref.exact + exact_by if keep_exact else None,
            logits=(ref.exact + exact_by + fp32_by).astype(np.float32),
        )
        for ref in references.prompts
    ]
    return replace(
        references, prompts=prompts, batch_logits=references.batch_logits + exact_by + fp32_by
    )


def test_fp32_bound_beyond_tolerance_is_transformers_own_rounding(exported, references):
    """Past 1e-4 from transformers fp32, an export passes only when, prompt by prompt, it is within
    ROUNDING_FACTOR × transformers fp32's own distance from the float64 logits, and that distance
    is rounding-sized; without float64 logits, 1e-4 is final."""
    prompts = [[5, 17, 42, 99, 7], list(range(30, 60))]
    real = parity.reference_outputs(references["gpt2"], prompts)
    limits = parity.thresholds_for("fp32")
    folder = exported["gpt2"]
    # transformers fp32 3e-4 from float64, ONNX (really) within rounding of float64: passes
    report = parity.check_parity(_moved(real, 0.0, 3e-4), folder, "fp32", limits)
    assert report.max_abs_diff > limits.max_abs_diff
    assert report.reference_error == pytest.approx(3e-4, rel=1e-2)
    assert report.exact_max_abs_diff < 1e-5 and report.rounding_ratio < 0.1
    # ONNX 1e-3 from float64 with transformers fp32 1e-4 from it: 10×, refused
    with pytest.raises(ParityError, match=r"up to 1\d\.\d× as far from the float64 result"):
        parity.check_parity(_moved(real, 1e-3, 1e-4), folder, "fp32", limits)
    # a float64 forward 2e-3 from transformers fp32 is not rounding: it vouches for nothing
    with pytest.raises(ParityError, match=r"float64 forward is 2\.\d+e-03 from its fp32 one"):
        parity.check_parity(_moved(real, 0.0, 2e-3), folder, "fp32", limits)
    # one prompt's large rounding does not cover another's excess: only the second prompt moves
    lopsided = _moved(real, 0.0, 3e-4)
    first, second = real.prompts[0], lopsided.prompts[1]
    shifted = dataclasses.replace(first, exact=first.exact + 1e-3, logits=first.logits + 1e-3)
    one_off = dataclasses.replace(lopsided, prompts=[shifted, second])
    with pytest.raises(ParityError, match="as far from the float64 result"):
        parity.check_parity(one_off, folder, "fp32", limits)
    # a prompt within 1e-4 of float64 is not held to a ratio (ratios of rounding noise are noise):
    # here transformers fp32 sits exactly on its float64 logits and ONNX 5e-5 away
    exact_first = dataclasses.replace(
        first, exact=first.exact + 5e-5, logits=(first.exact + 5e-5).astype(np.float32)
    )
    noisy = dataclasses.replace(lopsided, prompts=[exact_first, second])
    assert parity.check_parity(noisy, folder, "fp32", limits).rounding_ratio < 0.1
    # the same 3e-4 without float64 logits: the tolerance alone decides, and says why
    with pytest.raises(ParityError, match=r"3\.\d+e-04 > 1e-04 \(no float64 logits"):
        parity.check_parity(_moved(real, 0.0, 3e-4, keep_exact=False), folder, "fp32", limits)


def test_float64_reference_unavailable_is_said_and_leaves_the_model_as_it_was():
    """transformers' reorder_and_upcast_attn fills a float32 buffer: no float64 logits, a reason,
    and the weights back in float32, in their own memory."""
    import torch
    from transformers import GPT2Config, GPT2LMHeadModel

    config = GPT2Config(
        n_layer=2, n_embd=32, n_head=2, vocab_size=100, reorder_and_upcast_attn=True
    )
    config._attn_implementation = "eager"
    model = GPT2LMHeadModel(config).eval()
    pointers = {name: p.data_ptr() for name, p in model.named_parameters()}
    exact, why = parity._exact_logits(model, list(range(10)))
    assert exact is None and why.startswith("transformers' forward failed in float64")
    assert all(p.dtype == torch.float32 for p in model.parameters())
    assert {name: p.data_ptr() for name, p in model.named_parameters()} == pointers
    references = parity.reference_outputs(model, [list(range(10))])
    assert references.exact_unavailable == why and references.prompts[0].exact is None


def test_float64_pass_restores_a_weight_entered_twice():
    """A module whose forward calls itself (or nested modules sharing a weight): the weight is
    float64 throughout and comes back as it was on the last exit."""
    import torch

    class Twice(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.weight = torch.nn.Parameter(torch.randn(4, 4))

        def forward(self, x, again=True):
            y = x @ self.weight
            return self(y, again=False) if again else y

    module = Twice()
    original = module.weight.data
    with parity._in_float64(module), torch.inference_mode():
        out = module(torch.randn(2, 4, dtype=torch.float64))
    assert out.dtype == torch.float64
    assert module.weight.data is original or module.weight.data_ptr() == original.data_ptr()
    assert module.weight.dtype == torch.float32


def test_in_place_graph_refuses_a_replaced_weights_file(exported, tmp_path):
    """inplace.onnx reads its weights by offset inside model.onnx: another export's model.onnx
    must be refused, not computed with."""
    import shutil

    from ortgen import Generator
    from ortgen.errors import ModelFolderError

    folder = tmp_path / "swapped"
    shutil.copytree(exported["gpt2"], folder)
    shutil.copyfile(exported["gpt_neo"] / "model.onnx", folder / "model.onnx")
    with pytest.raises(ModelFolderError, match="not the file this folder was exported with"):
        Generator.from_dir(folder)


def test_streamed_model_file_is_the_model(arch, exported, tmp_path):
    """model.onnx is written one initializer at a time (no whole-model bytes in memory): the file
    parses to the same model, byte count for byte count, and ONNX Runtime runs it."""
    import onnxruntime as ort

    from ortgen_export import graph

    model = onnx.load(str(exported[arch] / "model.onnx"))
    path = tmp_path / "model.onnx"
    graph.write_streamed(model, path)
    assert path.stat().st_size == model.ByteSize()
    assert onnx.load(str(path)) == model
    onnx.checker.check_model(str(path))
    assert ort.InferenceSession(str(path)).get_outputs()[0].name == "logits"


def test_streamed_writer_keeps_every_field(tmp_path):
    """Functions, metadata, sparse initializers, value infos and an empty initializer list come
    back as written; a model without a graph gets none."""
    from onnx import TensorProto, helper

    from ortgen_export import graph

    add = helper.make_node("Add", ["x", "w"], ["y"])
    body = helper.make_graph(
        [add],
        "g",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [2])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [2])],
        initializer=[numpy_helper.from_array(np.array([1.0, 2.0], np.float32), "w")],
        sparse_initializer=[
            helper.make_sparse_tensor(
                numpy_helper.from_array(np.array([3.0], np.float32), "s"),
                numpy_helper.from_array(np.array([1], np.int64), "s_idx"),
                [4],
            )
        ],
        value_info=[helper.make_tensor_value_info("w", TensorProto.FLOAT, [2])],
    )
    double = helper.make_function(
        "local",
        "Double",
        ["a"],
        ["b"],
        [helper.make_node("Add", ["a", "a"], ["b"])],
        [helper.make_opsetid("", 18)],
    )
    model = helper.make_model(body, opset_imports=[helper.make_opsetid("", 18)], functions=[double])
    helper.set_model_props(model, {"source": "test", "x": "1"})
    model.graph.metadata_props.add(key="graph", value="meta")
    for case in (
        model,
        helper.make_model(helper.make_graph([], "empty", [], [])),
        onnx.ModelProto(),
    ):
        path = tmp_path / "m.onnx"
        graph.write_streamed(case, path)
        back = onnx.load(str(path))
        assert back == case and path.stat().st_size == case.ByteSize()
        assert back.HasField("graph") == case.HasField("graph")


@pytest.mark.parametrize("threshold", [None, 0], ids=["embedded", "data-file"])
def test_saved_graph_points_at_the_bytes_it_wrote(exported, tmp_path, threshold):
    """After graph.save, every weight of ≥ 1 KB in the in-memory graph is a reference to its own
    bytes in the written file (model.onnx, or model.onnx.data past the threshold) — what the
    in-place graph is made from; smaller ones stay embedded."""
    from ortgen_export import graph

    model = onnx.load(str(exported["gpt2"] / "model.onnx"))
    arrays = {t.name: numpy_helper.to_array(t).copy() for t in model.graph.initializer}
    options = {} if threshold is None else {"threshold": threshold}
    files = graph.save(model, tmp_path, **options)
    assert files == (["model.onnx"] if threshold is None else ["model.onnx", "model.onnx.data"])
    referenced = 0
    for tensor in model.graph.initializer:
        if arrays[tensor.name].nbytes < 1024:
            assert tensor.data_location != onnx.TensorProto.EXTERNAL
            continue
        entry = {e.key: e.value for e in tensor.external_data}
        assert tensor.data_location == onnx.TensorProto.EXTERNAL and entry["location"] == files[-1]
        with open(tmp_path / entry["location"], "rb") as file:
            file.seek(int(entry["offset"]))
            stored = file.read(int(entry["length"]))
        assert stored == arrays[tensor.name].tobytes()
        referenced += 1
    assert referenced >= 4 * read_manifest(exported["gpt2"]).num_layers
