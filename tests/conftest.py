"""Session fixtures: tiny checkpoints built once, exported once, shared by the tests."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).parent))  # checkpoints.py
sys.path.insert(0, str(Path(__file__).parent.parent))  # training/, bench/

from checkpoints import build_checkpoint  # noqa: E402

ARCHS = ("gpt2", "gpt_neo")
GRAPHS = ("built", "traced")  # every graph kind the export can produce


@pytest.fixture(scope="session")
def checkpoints(tmp_path_factory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("checkpoints")
    return {arch: build_checkpoint(root / arch, arch) for arch in ARCHS}


@pytest.fixture(scope="session")
def exported_graphs(checkpoints, tmp_path_factory) -> dict[tuple[str, str], Path]:
    """fp32 exports of each architecture in each graph kind."""
    from ortgen_export import ExportOptions, export_model

    root = tmp_path_factory.mktemp("exported")
    folders = {}
    for arch, checkpoint in checkpoints.items():
        for kind in GRAPHS:
            folders[arch, kind] = root / f"{arch}-{kind}"
            export_model(str(checkpoint), folders[arch, kind], ExportOptions(graph=kind))
    return folders


@pytest.fixture(scope="session")
def exported(exported_graphs) -> dict[str, Path]:
    """The default export (built graph) of each architecture."""
    return {arch: exported_graphs[arch, "built"] for arch in ARCHS}


@pytest.fixture(scope="session")
def references(checkpoints):
    """transformers models (eager attention, fp32): the oracle."""
    import torch
    from transformers import AutoModelForCausalLM

    torch.set_num_threads(1)
    return {
        arch: AutoModelForCausalLM.from_pretrained(path, attn_implementation="eager").eval()
        for arch, path in checkpoints.items()
    }


@pytest.fixture(scope="session")
def graph_generators(exported_graphs):
    from ortgen import Generator

    return {key: Generator.from_dir(folder, threads=1) for key, folder in exported_graphs.items()}


@pytest.fixture(scope="session")
def generators(graph_generators):
    return {arch: graph_generators[arch, "built"] for arch in ARCHS}


@pytest.fixture(params=ARCHS)
def arch(request) -> str:
    return request.param


@pytest.fixture(params=GRAPHS)
def graph(request) -> str:
    return request.param
