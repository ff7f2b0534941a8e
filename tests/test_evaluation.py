"""`ortgen eval`: perplexity equal to transformers' on the fp32 export, windows that score every
token once within the context limit."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from checkpoints import training_text
from typer.testing import CliRunner

from ortgen.cli import app
from ortgen.errors import InvalidOptionError
from ortgen.evaluation import evaluate, windows


def reference_perplexity(model, ids: list[int], window: int, stride: int) -> float:
    """transformers' logits over the same windows, scored with torch."""
    total, count = 0.0, 0
    with torch.inference_mode():
        for begin, end, scored in windows(len(ids), window, stride):
            chunk = torch.tensor([ids[begin:end]])
            logits = model(chunk).logits[0].double()  # [L, V]
            first = scored - begin
            logp = torch.log_softmax(logits[first - 1 : -1], dim=-1)
            total += logp.gather(1, chunk[0, first:, None]).sum().item()
            count += end - scored
    return float(np.exp(-total / count))


@pytest.mark.parametrize("length, window, stride", [(300, 128, 64), (300, 50, 17), (40, 128, 64)])
def test_windows_score_every_token_once(length, window, stride):
    spans = windows(length, window, stride)
    scored = [i for begin, end, first in spans for i in range(first, end)]
    assert scored == list(range(1, length))
    assert all(end - begin <= window and first > begin for begin, end, first in spans)


def test_perplexity_equals_transformers(arch, generators, references):
    generator = generators[arch]
    ids = generator.encode(training_text(sentences=40, seed=3))
    limit = generator.manifest.max_positions
    assert len(ids) > limit  # the sliding window is exercised
    result = evaluate(generator, ids)
    expected = reference_perplexity(references[arch], ids, limit, limit // 2)
    assert result.perplexity == pytest.approx(expected, rel=1e-3)
    assert result.tokens == len(ids) - 1 and result.windows > 1


def test_eval_command_prints_perplexity(exported, tmp_path):
    text = tmp_path / "text.txt"
    text.write_text(training_text(sentences=20, seed=5), encoding="utf-8")
    result = CliRunner().invoke(app, ["eval", str(exported["gpt2"]), "--text", str(text), "--json"])
    assert result.exit_code == 0, result.output
    record = json.loads(result.output)
    assert record["precision"] == "fp32" and record["perplexity"] > 1
    assert record["tokens_per_s"] > 0


def test_eval_rejects_bad_windows(generators):
    with pytest.raises(InvalidOptionError, match="window"):
        evaluate(generators["gpt2"], list(range(10)), window=10_000)
    with pytest.raises(InvalidOptionError, match="stride"):
        evaluate(generators["gpt2"], list(range(10)), window=8, stride=8)
    with pytest.raises(InvalidOptionError, match="two tokens"):
        evaluate(generators["gpt2"], [5])
