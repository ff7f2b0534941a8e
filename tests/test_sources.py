"""Checkpoints as people have them: sharded safetensors and pytorch_model.bin, fp16 / bf16 stored
weights, a tokenizer given only as vocab.json + merges.txt, no generation_config.json, a hub id
read offline from the local Hugging Face cache; weights written as external data; and the oldest
onnxruntime that runs the graphs, recorded and enforced."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import types
from pathlib import Path

import pytest
import torch
from checkpoints import random_checkpoint, train_tokenizer
from reference import assert_equal_to_transformers

from ortgen import session
from ortgen.errors import ExportError, OrtgenError
from ortgen.manifest import MIN_ONNXRUNTIME, read_manifest
from ortgen_export import ExportOptions, export_model
from ortgen_export.source import locate

ROOT = Path(__file__).parent.parent


@pytest.fixture(scope="session")
def tokenizer():
    return train_tokenizer(397)


@pytest.fixture(scope="session")
def sources_root(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("sources")


def export(checkpoint: Path, options: ExportOptions | None = None) -> Path:
    out = checkpoint.parent / f"{checkpoint.name}-model"
    export_model(str(checkpoint), out, options)
    assert read_manifest(out).export["graph"] == "built"
    return out


@pytest.mark.parametrize(
    ("arch", "save", "weights"),
    [
        ("gpt2", dict(safe_serialization=False, max_shard_size="50KB"), "pytorch_model"),
        ("gpt_neo", dict(max_shard_size="50KB"), "model"),
    ],
    ids=["gpt2-sharded-bin", "gpt_neo-sharded-safetensors"],
)
def test_sharded_checkpoints_export(arch, save, weights, sources_root, tokenizer):
    checkpoint = random_checkpoint(sources_root / f"{arch}-sharded", arch, tokenizer, save=save)
    suffix = ".bin" if weights == "pytorch_model" else ".safetensors"
    index = json.loads((checkpoint / f"{weights}{suffix}.index.json").read_text())
    assert len(set(index["weight_map"].values())) > 1
    assert_equal_to_transformers(export(checkpoint), checkpoint)


@pytest.mark.parametrize(
    ("arch", "dtype"), [("gpt2", torch.float16), ("gpt_neo", torch.bfloat16)], ids=str
)
def test_half_stored_weights_export_the_fp32_graph(arch, dtype, sources_root, tokenizer):
    """The graph computes in fp32 from the upcast weights; the oracle loads them the same way."""
    checkpoint = random_checkpoint(sources_root / f"{arch}-{dtype}", arch, tokenizer, dtype=dtype)
    stored = json.loads((checkpoint / "config.json").read_text())
    assert stored.get("dtype", stored.get("torch_dtype")) == str(dtype).removeprefix("torch.")
    folder = export(checkpoint)
    assert read_manifest(folder).precision == "fp32"
    assert_equal_to_transformers(folder, checkpoint)


def test_vocab_and_merges_only_without_generation_config(sources_root, tokenizer):
    checkpoint = random_checkpoint(sources_root / "gpt2-vocab-merges", "gpt2", tokenizer)
    for name in ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json"):
        (checkpoint / name).unlink(missing_ok=True)
    (checkpoint / "generation_config.json").unlink()
    tokenizer.model.save(str(checkpoint))  # vocab.json + merges.txt
    folder = export(checkpoint)
    assert (folder / "tokenizer.json").is_file()  # written for the runtime
    from ortgen import Generator

    text = "The old fisherman walked along the harbour at night."
    assert Generator.from_dir(folder).tokenizer.encode(text) == tokenizer.encode(text).ids
    assert_equal_to_transformers(folder, checkpoint)


def fake_hub_cache(home: Path, repo_id: str, checkpoint: Path) -> None:
    """What huggingface_hub leaves after a download: a snapshot folder and refs/main."""
    org, name = repo_id.split("/")
    entry = home / "hub" / f"models--{org}--{name}"
    commit = "0123456789abcdef0123456789abcdef01234567"
    shutil.copytree(checkpoint, entry / "snapshots" / commit)
    (entry / "refs").mkdir()
    (entry / "refs" / "main").write_text(commit)


def test_hub_id_resolves_from_the_local_cache_offline(sources_root, tokenizer, tmp_path):
    checkpoint = random_checkpoint(sources_root / "gpt_neo-hub", "gpt_neo", tokenizer)
    fake_hub_cache(tmp_path / "hf", "tiny-org/tiny-neo", checkpoint)
    env = {k: v for k, v in os.environ.items() if not k.startswith(("HF_", "HUGGINGFACE_"))}
    env.update(HF_HOME=str(tmp_path / "hf"), HF_HUB_OFFLINE="1")
    out = tmp_path / "model"
    command = [sys.executable, "-m", "ortgen", "export", "tiny-org/tiny-neo", str(out)]
    run = subprocess.run(command, env=env, capture_output=True, text=True, timeout=600)
    assert run.returncode == 0, run.stderr
    manifest = read_manifest(out)
    assert manifest.source == "tiny-org/tiny-neo" and manifest.export["graph"] == "built"
    assert_equal_to_transformers(out, checkpoint)


def test_hub_id_missing_from_the_cache_offline_is_one_line(monkeypatch, tmp_path):
    from huggingface_hub import constants

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(tmp_path))
    with pytest.raises(ExportError, match="not in the local Hugging Face cache") as err:
        locate("tiny-org/absent")
    assert "\n" not in str(err.value)


def test_external_data_loads_and_generates(sources_root, tokenizer):
    """The > 2 GB path, forced on a tiny model: weights in model.onnx.data, both graphs load."""
    checkpoint = random_checkpoint(sources_root / "gpt2-external", "gpt2", tokenizer)
    folder = export(checkpoint, ExportOptions(external_data_threshold=0))
    manifest = read_manifest(folder)
    assert manifest.export["files"][:2] == ["model.onnx", "model.onnx.data"]
    data, graph = (folder / "model.onnx.data").stat().st_size, (folder / "model.onnx").stat()
    assert data > 10 * graph.st_size  # the weights live in the data file
    mode = (folder / "model.onnx.data").stat().st_mode & 0o777
    assert mode == graph.st_mode & 0o777  # as readable as the graph (onnx writes it 0600)
    assert manifest.min_onnxruntime == MIN_ONNXRUNTIME
    assert_equal_to_transformers(folder, checkpoint)


def test_old_onnxruntime_is_refused_in_one_line(monkeypatch):
    import onnxruntime

    monkeypatch.setattr(onnxruntime, "__version__", "1.21.1")
    with pytest.raises(OrtgenError, match=r"onnxruntime 1\.21\.1 is too old.*>= 1\.23") as err:
        session.create_session(ROOT / "ortgen/models/default/model.onnx")
    assert "\n" not in str(err.value)
    session.require_onnxruntime(types.SimpleNamespace(__version__="1.24.0.dev20260101"))
    with pytest.raises(OrtgenError, match="1.24"):  # a folder may ask for more than the floor
        session.require_onnxruntime(types.SimpleNamespace(__version__="1.23.2"), "1.24")


def test_package_pins_the_same_minimum():
    pyproject = (ROOT / "pyproject.toml").read_text()  # (tomllib is Python 3.11+)
    assert f'cpu = ["onnxruntime>={MIN_ONNXRUNTIME}"]' in pyproject
    assert f'cuda = ["onnxruntime-gpu>={MIN_ONNXRUNTIME}"]' in pyproject
    assert '"torch==' not in pyproject  # the exact CPU build is the Makefile's business
