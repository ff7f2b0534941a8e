"""Session fixtures: tiny checkpoints built once, exported once, shared by the tests."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).parent))

from checkpoints import build_checkpoint  # noqa: E402

ARCHS = ("gpt2", "gpt_neo")


@pytest.fixture(scope="session")
def checkpoints(tmp_path_factory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("checkpoints")
    return {arch: build_checkpoint(root / arch, arch) for arch in ARCHS}


@pytest.fixture(scope="session")
def exported(checkpoints, tmp_path_factory) -> dict[str, Path]:
    from ortgen_export import export_model

    root = tmp_path_factory.mktemp("exported")
    for arch, checkpoint in checkpoints.items():
        export_model(str(checkpoint), root / arch)
    return {arch: root / arch for arch in ARCHS}


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
def generators(exported):
    from ortgen import Generator

    return {arch: Generator.from_dir(folder, threads=1) for arch, folder in exported.items()}


@pytest.fixture(params=ARCHS)
def arch(request) -> str:
    return request.param
