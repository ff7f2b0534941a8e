"""Features against transformers: the final hidden states as `pipeline("feature-extraction")`
returns them (within 1e-4, fp32), mean / last pooling against transformers' padded batch, L2
normalisation, both graphs, folders without the output, and `ortgen embed`."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from transformers import AutoTokenizer, pipeline

from ortgen.errors import InvalidOptionError

ATOL = 1e-4  # fp32, the bound
TEXTS = [
    "Once upon a time",
    "The old fisherman told stories about the stormy sea, and the lighthouse keeper listened.",
    "Numbers",
]


def gpt2_tokenizer(checkpoint):
    """The fixture's tokenizer with GPT2TokenizerFast's inputs: the generic class would also
    send token_type_ids, which GPT-2 adds as wte[0] to every position."""
    tokenizer = AutoTokenizer.from_pretrained(checkpoint)
    tokenizer.model_input_names = ["input_ids", "attention_mask"]
    return tokenizer


def pipeline_features(model, checkpoint, texts: list[str]) -> list[np.ndarray]:
    """transformers' feature-extraction pipeline on the base model (GPT2Model / GPTNeoModel)."""
    tokenizer = gpt2_tokenizer(checkpoint)
    extract = pipeline("feature-extraction", model=model.base_model, tokenizer=tokenizer)
    return [np.asarray(extract(text))[0] for text in texts]  # [T, D] each


def padded_hidden(model, checkpoint, texts: list[str]) -> tuple[np.ndarray, np.ndarray]:
    """One right-padded transformers batch. → hidden [N, T, D], mask [N, T]."""
    tokenizer = gpt2_tokenizer(checkpoint)
    tokenizer.pad_token = tokenizer.eos_token
    batch = tokenizer(texts, return_tensors="pt", padding=True)
    with torch.inference_mode():
        hidden = model.base_model(**batch).last_hidden_state
    return hidden.numpy(), batch["attention_mask"].numpy()


@pytest.mark.parametrize("graph", ["built", "portable", "traced"])
def test_features_equal_the_feature_extraction_pipeline(
    arch, graph, graph_generators, references, checkpoints
):
    expected = pipeline_features(references[arch], checkpoints[arch], TEXTS)
    got = graph_generators[arch, graph].embed(TEXTS)  # a batch with padding
    assert [g.shape for g in got] == [e.shape for e in expected]
    for g, e in zip(got, expected, strict=True):
        assert g.dtype == np.float32 and np.abs(g - e).max() <= ATOL
    alone = graph_generators[arch, graph].embed(TEXTS[1])
    assert np.abs(alone - expected[1]).max() <= ATOL


def test_mean_and_last_pooling_equal_transformers_padded_batch(
    arch, generators, references, checkpoints
):
    hidden, mask = padded_hidden(references[arch], checkpoints[arch], TEXTS)
    weights = mask[..., None].astype(np.float32)
    mean = (hidden * weights).sum(axis=1) / weights.sum(axis=1)  # [N, D]
    last = hidden[np.arange(len(TEXTS)), mask.sum(axis=1) - 1]  # [N, D]
    generator = generators[arch]
    assert np.abs(generator.embed(TEXTS, pooling="mean") - mean).max() <= ATOL
    assert np.abs(generator.embed(TEXTS, pooling="last") - last).max() <= ATOL
    unit = generator.embed(TEXTS, pooling="mean", normalize=True)
    want = mean / np.linalg.norm(mean, axis=-1, keepdims=True)
    assert unit.shape == mean.shape and np.abs(unit - want).max() <= ATOL
    tokens = generator.embed(TEXTS[0], normalize=True)  # [T, D], each token unit length
    assert np.allclose(np.linalg.norm(tokens, axis=-1), 1.0, atol=1e-5)


def test_embed_refuses_what_it_cannot_do(generators, tmp_path):
    generator = generators["gpt2"]
    with pytest.raises(InvalidOptionError, match="pooling"):
        generator.embed(TEXTS, pooling="max")
    with pytest.raises(InvalidOptionError, match="empty"):
        generator.embed("")


def test_folder_without_the_output_says_to_reexport(exported, tmp_path):
    import dataclasses
    import shutil

    from ortgen import Generator
    from ortgen.errors import ModelFolderError
    from ortgen.manifest import MANIFEST_NAME, read_manifest

    folder = tmp_path / "old"
    shutil.copytree(exported["gpt2"], folder)
    manifest = read_manifest(folder)
    old = dataclasses.replace(manifest.tensors, hidden_state=None)
    (folder / MANIFEST_NAME).write_text(dataclasses.replace(manifest, tensors=old).to_json())
    with pytest.raises(ModelFolderError, match="re-export"):
        Generator.from_dir(folder, threads=1).embed("Once upon a time")


def test_cli_embed_prints_json_and_writes_npy(exported, generators, tmp_path):
    from typer.testing import CliRunner

    from ortgen.cli import app

    runner = CliRunner()
    folder, generator = exported["gpt2"], generators["gpt2"]
    result = runner.invoke(app, ["embed", *TEXTS[:2], "-m", str(folder), "--pooling", "mean"])
    assert result.exit_code == 0, result.output
    got = np.asarray(json.loads(result.stdout), dtype=np.float32)
    assert np.abs(got - generator.embed(TEXTS[:2], pooling="mean")).max() <= 1e-6
    path = tmp_path / "features.npy"
    args = ["embed", TEXTS[0], "-m", str(folder), "--normalize", "--output", str(path)]
    assert runner.invoke(app, args).exit_code == 0
    assert np.array_equal(np.load(path), generator.embed(TEXTS[:1], normalize=True)[0])
    result = runner.invoke(app, ["embed", *TEXTS[:2], "-m", str(folder), "-o", str(path)])
    assert result.exit_code != 0 and "pooling" in result.output


def test_optimum_runs_the_folder_with_the_extra_output(arch, exported, generators):
    """The hidden-state output is harmless to clients that read outputs by name."""
    from optimum.onnxruntime import ORTModelForCausalLM

    model = ORTModelForCausalLM.from_pretrained(
        exported[arch], file_name="model.onnx", use_cache=True, use_io_binding=False
    )
    assert "last_hidden_state" in [o.name for o in model.session.get_outputs()]
    ids = [5, 17, 42, 99, 7, 63, 12]
    out = model.generate(
        torch.tensor([ids]),
        attention_mask=torch.ones(1, len(ids), dtype=torch.long),
        max_new_tokens=12,
        do_sample=False,
        eos_token_id=None,
        pad_token_id=0,
    )
    want = generators[arch].generate_ids(ids, max_new_tokens=12, ignore_eos=True)
    assert out[0, len(ids) :].tolist() == want
