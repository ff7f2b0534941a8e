"""Every file the runtime reads is validated at load: a corrupt or mismatched model folder ends in
one line naming the file and the fix (exit 1), and the folder is left as it was."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
from test_cli import assert_one_line_error, run
from test_export_safety import snapshot

from ortgen.generator import DEFAULT_MODEL


@pytest.fixture
def folder(exported, tmp_path) -> Path:
    """A private copy of the tiny GPT-2 export, free to corrupt."""
    return Path(shutil.copytree(exported["gpt2"], tmp_path / "model"))


def manifest_with(folder: Path, **changes) -> str:
    data = json.loads((folder / "ortgen.json").read_text())
    return json.dumps({**data, **changes})


CORRUPTIONS = {
    "manifest null": ("ortgen.json", "null", "holds a JSON null, not an object"),
    "manifest list": ("ortgen.json", "[1, 2]", "holds a JSON list, not an object"),
    "manifest binary": ("ortgen.json", b"\x89PNG\r\n\x1a\n\x00\xff", "is not UTF-8 text"),
    "manifest bad JSON": ("ortgen.json", "{", "is not valid JSON"),
    "manifest wrong type": (
        "ortgen.json",
        lambda f: manifest_with(f, vocab_size="400"),
        "'vocab_size' must be int, got string",
    ),
    "manifest null size": (
        "ortgen.json",
        lambda f: manifest_with(f, num_layers=None),
        "'num_layers' must be int, got null",
    ),
    "manifest zero size": (
        "ortgen.json",
        lambda f: manifest_with(f, num_heads=0),
        "num_heads must be ≥ 1, got 0",
    ),
    "manifest EOS outside vocabulary": (
        "ortgen.json",
        lambda f: manifest_with(f, eos_token_id=400),
        "eos_token_id 400 is outside the vocabulary [0, 400)",
    ),
    "manifest tensors not an object": (
        "ortgen.json",
        lambda f: manifest_with(f, tensors=[]),
        "'tensors' must be TensorNames, got list",
    ),
    "tokenizer corrupt": ("tokenizer.json", '{"model": 3}', "is not a readable tokenizer"),
    "tokenizer binary": ("tokenizer.json", b"\xff\xfe\x00", "is not a readable tokenizer"),
    "tokenizer of a bigger model": (
        "tokenizer.json",
        lambda f: (DEFAULT_MODEL / "tokenizer.json").read_bytes(),
        "has 8192 ids but the model has 400 (vocab_size in ortgen.json)",
    ),
    "generation_config list": (
        "generation_config.json",
        "[]",
        "holds a JSON list, not an object ({...}): fix or delete the file",
    ),
    "generation_config wrong type": (
        "generation_config.json",
        '{"temperature": "hot"}',
        "'temperature' has the wrong type ('hot'): fix or delete the file",
    ),
    "generation_config bad value": (
        "generation_config.json",
        '{"top_p": 7}',
        "top_p must be in (0, 1], got 7: fix or delete the file",
    ),
}


@pytest.mark.parametrize("case", sorted(CORRUPTIONS))
def test_corrupt_folder_file_is_one_line_naming_it(case, folder):
    name, content, fragment = CORRUPTIONS[case]
    content = content(folder) if callable(content) else content
    data = content if isinstance(content, bytes) else content.encode()
    (folder / name).write_bytes(data)
    before = snapshot(folder)
    result = run("generate", "Once upon", "-m", str(folder), "--max-new-tokens", "3")
    assert_one_line_error(result, 1, fragment)
    assert str(folder / name) in result.output.splitlines()[-1]  # names the file
    assert snapshot(folder) == before


def test_model_onnx_of_another_export_is_refused(exported_graphs, tmp_path):
    folder = Path(shutil.copytree(exported_graphs["gpt2", "traced"], tmp_path / "model"))
    shutil.copyfile(DEFAULT_MODEL / "model.onnx", folder / "model.onnx")
    before = snapshot(folder)
    result = run("generate", "Once upon", "-m", str(folder), "--max-new-tokens", "3")
    message = f"{folder / 'model.onnx'} does not match ortgen.json (the graph has unexpected inputs"
    assert_one_line_error(result, 1, message)
    assert result.output.strip().endswith("re-export the model folder with `ortgen export`")
    assert snapshot(folder) == before


def test_model_file_instead_of_folder_says_pass_the_folder(folder):
    result = run("generate", "hi", "-m", str(folder / "model.onnx"))
    assert_one_line_error(result, 1, f"is a file: pass the folder that holds it ({folder})")


def test_graph_io_is_read_from_the_session(folder):
    """check_graph_io compares the session's own inputs and outputs with the manifest."""
    from ortgen.errors import ModelFolderError
    from ortgen.folder import check_graph_io
    from ortgen.manifest import read_manifest
    from ortgen.session import create_session

    manifest = read_manifest(folder)
    gpt2 = create_session(folder / "model.onnx")
    check_graph_io(manifest, gpt2, folder / "model.onnx")  # its own graph: accepted
    fewer_layers = json.loads(manifest_with(folder, num_layers=1))
    (folder / "ortgen.json").write_text(json.dumps(fewer_layers))
    with pytest.raises(ModelFolderError, match="has unexpected inputs past_key_values.1.key"):
        check_graph_io(read_manifest(folder), gpt2, folder / "model.onnx")
    wider = json.loads(manifest_with(folder, num_layers=manifest.num_layers, vocab_size=500))
    (folder / "ortgen.json").write_text(json.dumps(wider))
    with pytest.raises(ModelFolderError, match="has 400 logits per token, the manifest 500"):
        check_graph_io(read_manifest(folder), gpt2, folder / "model.onnx")
