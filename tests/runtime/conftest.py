"""The runtime tier: tests that need `ortgen[cpu]` only — no torch, transformers or onnx — and
drive the bundled default model (a trained GPT-2, int8). CI also runs this directory alone in a
fresh environment without the export stage, proving the runtime install is enough."""

from __future__ import annotations

import pytest


@pytest.fixture(scope="session")
def bundled():
    from ortgen import Generator

    return Generator.from_dir(threads=2)  # no path: the bundled default model
