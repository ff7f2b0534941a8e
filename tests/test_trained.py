"""The trained checkpoints (training/checkpoints) and the bundled default model: quantization
quality judged where it means something — perplexity on held-out text and greedy agreement — and
the training script itself, in a few steps."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from ortgen import Generator
from ortgen.decode_state import DecodeState
from ortgen.evaluation import evaluate
from ortgen_export import ExportOptions, export_model
from ortgen_export.parity import PURE_GREEDY  # argmax, whatever generation_config.json says

ROOT = Path(__file__).parent.parent
CHECKPOINTS = ROOT / "training" / "checkpoints"
PERPLEXITY_LIMIT = {"int8": 1.02, "int4": 1.05}  # × the fp32 export's held-out perplexity
GREEDY_PROMPTS, GREEDY_TOKENS, GREEDY_MIN = 10, 64, 0.95


@pytest.fixture(scope="module")
def held_out() -> str:
    from training.corpus import split

    return split()[1]


@pytest.fixture(scope="module")
def trained(tmp_path_factory) -> dict[tuple[str, str], Generator]:
    root = tmp_path_factory.mktemp("trained")
    generators = {}
    for arch in ("gpt2", "gpt_neo"):
        for precision in ("fp32", "int8", "int4"):
            folder = root / f"{arch}-{precision}"
            export_model(str(CHECKPOINTS / arch), folder, ExportOptions(precision=precision))
            generators[arch, precision] = Generator.from_dir(folder)
    return generators


@pytest.mark.parametrize("precision", ["int8", "int4"])
def test_quantized_perplexity_stays_close_to_fp32(arch, precision, trained, held_out):
    ids = trained[arch, "fp32"].encode(held_out)[:12_000]
    reference = evaluate(trained[arch, "fp32"], ids).perplexity
    quantized = evaluate(trained[arch, precision], ids).perplexity
    assert quantized <= reference * PERPLEXITY_LIMIT[precision], (quantized, reference)


def test_int8_greedy_agreement(arch, trained, held_out):
    """Along the fp32 model's 64-token greedy continuation of 10 held-out prompts, the int8
    model picks the same token ≥ 95 % of the time (teacher-forced, so one flip counts once)."""
    reference, quantized = trained[arch, "fp32"], trained[arch, "int8"]
    docs = [d for d in held_out.split("\n\n") if len(d) > 80][:GREEDY_PROMPTS]
    agree = total = 0
    for doc in docs:
        prompt = reference.encode(doc)[:24]
        path = reference.generate_ids(prompt, **{**PURE_GREEDY, "max_new_tokens": GREEDY_TOKENS})
        state = DecodeState.for_model(quantized.model)
        logits = state.prefill([prompt + path[:-1]], all_logits=True)[0]  # [T + G - 1, V]
        picks = logits[len(prompt) - 1 :].argmax(-1)  # [G]
        agree += int((picks == np.asarray(path)).sum())
        total += len(path)
    assert agree / total >= GREEDY_MIN, agree / total


def test_training_json_records_the_run():
    for arch in ("gpt2", "gpt_neo"):
        report = json.loads((CHECKPOINTS / arch / "training.json").read_text())
        assert report["held_out_perplexity"] > 1 and report["steps"] > 0


def test_training_script_runs_a_few_steps(tmp_path):
    from training.train import train

    text = (
        "Return the value of the named attribute of object. " * 40,
        "If the named attribute does not exist, default is returned. " * 10,
    )
    sizes = dict(layers=2, heads=2, width=32)
    report = train("gpt_neo", tmp_path / "neo", steps=3, batch=2, length=32, sizes=sizes, text=text)
    assert report["held_out_perplexity"] > 1
    assert {"config.json", "model.safetensors", "tokenizer.json"} <= {
        p.name for p in (tmp_path / "neo").iterdir()
    }


def test_bundled_default_model_generates_without_torch():
    """`ortgen generate` with no --model, in a process where torch cannot be imported."""
    code = (
        "import importlib.abc, sys\n"
        "class Forbid(importlib.abc.MetaPathFinder):\n"
        "    def find_spec(self, name, path=None, target=None):\n"
        "        if name.split('.')[0] in {'torch', 'transformers'}:\n"
        "            raise ImportError(name)\n"
        "sys.meta_path.insert(0, Forbid())\n"
        "from ortgen.cli import main\n"
        "sys.argv = ['ortgen', 'generate', 'Once upon a time', '--seed', '0', '--json']\n"
        "main()\n"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
    text = json.loads(result.stdout)[0]["generated_text"]
    assert text.startswith("Once upon a time") and len(text) > len("Once upon a time") + 20


@pytest.mark.parametrize("precision", ["fp32", "int8", "int4"])
def test_batch_is_invariant_on_trained_weights(arch, precision, trained, held_out):
    """Width 256: the real quantized kernels' paths (the tiny test models are narrower). Ten
    held-out prompts, greedy and seeded sampling: batched = alone, token for token."""
    generator = trained[arch, precision]
    docs = [d for d in held_out.split("\n\n") if len(d) > 80][:10]
    prompts = [generator.encode(d)[: 8 + 5 * i] for i, d in enumerate(docs)]
    for sampling in (False, True):
        options = dict(max_new_tokens=32, ignore_eos=True, do_sample=sampling, seed=3)
        batch = generator.generate_ids(prompts, **options)
        assert batch == [generator.generate_ids(p, **options) for p in prompts]
        assert batch[3:6] == generator.generate_ids(prompts[3:6], **options)


@pytest.mark.parametrize("precision", ["fp32", "int8", "int4"])
def test_decode_logits_are_bit_identical_alone_and_batched(arch, precision, trained):
    """The kernels' row paths: a row's logits in a batch of 3 (odd: a lone-row kernel could
    take one of them) equal its logits alone, exactly."""
    model = trained[arch, precision].model
    prompts = [[11, 12, 13], list(range(40, 71)), [7] * 9]
    alone = []
    for prompt in prompts:
        state = DecodeState.for_model(model)
        state.prefill([prompt])
        alone.append(state.step(np.asarray([5]))[0])
    state = DecodeState.for_model(model)
    state.prefill(prompts)
    batched = state.step(np.asarray([5, 5, 5]))
    for row, logits in enumerate(alone):
        assert np.array_equal(batched[row], logits), (row, np.abs(batched[row] - logits).max())
