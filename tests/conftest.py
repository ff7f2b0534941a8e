"""Session fixtures: tiny checkpoints built once, exported once, shared by the tests."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).parent))  # checkpoints.py
sys.path.insert(0, str(Path(__file__).parent.parent))  # training/, bench/

from checkpoints import PRECISIONS, build_checkpoint  # noqa: E402

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
def quantized(checkpoints, tmp_path_factory) -> dict[tuple[str, str], object]:
    """Reduced-precision exports: built graph under (arch, p), traced under (arch, p, "traced")."""
    from ortgen_export import ExportOptions, export_model

    root = tmp_path_factory.mktemp("quantized")
    folders = {}
    for arch, checkpoint in checkpoints.items():
        for precision in PRECISIONS:
            for kind in ("built", "traced"):
                folder = root / f"{arch}-{precision}-{kind}"
                export_model(
                    str(checkpoint), folder, ExportOptions(precision=precision, graph=kind)
                )
                key = (arch, precision) if kind == "built" else (arch, precision, kind)
                folders[key] = folder
    return folders


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
    """Generators for every graph the runtime can drive: the built export's in-place KV graph
    (the default) and its portable model.onnx, and the traced export's model.onnx."""
    from ortgen import Generator

    generators = {}
    for arch in ARCHS:
        built, traced = exported_graphs[arch, "built"], exported_graphs[arch, "traced"]
        generators[arch, "built"] = Generator.from_dir(built, threads=1)
        generators[arch, "portable"] = Generator.from_dir(built, threads=1, graph="portable")
        generators[arch, "traced"] = Generator.from_dir(traced, threads=1)
    return generators


@pytest.fixture(scope="session")
def generators(graph_generators):
    return {arch: graph_generators[arch, "built"] for arch in ARCHS}


@pytest.fixture(params=ARCHS)
def arch(request) -> str:
    return request.param


@pytest.fixture(params=("built", "portable", "traced"))
def graph(request) -> str:
    """built: the in-place KV graph ortgen runs; portable: the same export's model.onnx, as
    optimum and transformers.js load it; traced: optimum's exporter."""
    return request.param
