"""The model folder contract and the export stage's guarantees: names, manifest, tied weights stored
once, the parity check that can fail, atomic writes, clear refusals."""

from __future__ import annotations

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


def test_fp32_parity_check_fails_on_another_model(exported, references):
    """The check really compares: GPT-2's folder against the GPT-Neo reference (same tokenizer
    and vocabulary, other weights) is refused."""
    from ortgen_export.parity import THRESHOLDS, check_parity, reference_outputs

    prompts = [[5, 17, 42, 99, 7], list(range(30, 60))]
    other = reference_outputs(references["gpt_neo"], prompts)
    with pytest.raises(ParityError, match="fp32 parity check failed"):
        check_parity(other, exported["gpt2"], "fp32", THRESHOLDS["fp32"])


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
