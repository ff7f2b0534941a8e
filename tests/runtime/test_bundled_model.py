"""The bundled default model through the runtime alone: golden tokens (a regression guard, as
onnxruntime-genai keeps them — parity with transformers is proven in the export tier), batch
invariance of greedy and seeded sampling, rows joining and leaving a running decode state, the
portable and in-place graphs agreeing, streaming, and the CLI."""

from __future__ import annotations

import json

import numpy as np
import pytest
from typer.testing import CliRunner

from ortgen import kernels
from ortgen.cli import app
from ortgen.decode_state import DecodeState, SlotCache
from ortgen.generator import Generator

# Greedy continuations (24 tokens, no penalties) recorded from this export of
# training/checkpoints/gpt2 (int8) with onnxruntime 1.32 on its in-place graph (every machine has
# it; the native graph's float16 cache may flip a near-tie, see below); re-record after
# `make default-model`.
GOLDEN = {
    "The built-in function": [288, 259, 457, 288, 259, 457, 404, 14, 0, 10, 288, 259]
    + [457, 404, 14, 0, 10, 288, 259, 457, 404, 14, 0, 10],
    "class": [63, 1746, 743, 452, 14, 0, 257, 2016, 295, 756, 264, 456]
    + [404, 14, 0, 257, 2016, 295, 756, 264, 456, 404, 14, 0],
}
PURE_GREEDY = dict(do_sample=False, repetition_penalty=1.0, min_new_tokens=0, ignore_eos=True)
PROMPTS = [
    "Return a new list",
    "The built-in function",
    "If the value is None, the default encoding",
    "class",
    "This module provides access to some objects used or maintained by the interpreter",
]


def test_bundled_model_is_int8_on_the_in_place_graph(bundled):
    assert bundled.manifest.precision == "int8" and bundled.manifest.inplace
    assert isinstance(DecodeState.for_model(bundled.model), SlotCache)


@pytest.fixture(scope="module")
def in_place():
    return Generator.from_dir(threads=2, graph="inplace")


@pytest.mark.parametrize("prompt", sorted(GOLDEN))
def test_golden_greedy_tokens(in_place, prompt):
    ids = in_place.generate_ids(in_place.encode(prompt), max_new_tokens=24, **PURE_GREEDY)
    assert ids == GOLDEN[prompt]


NEAR_TIE = 0.05  # logit gap under which a float16 cache may pick the other token


@pytest.mark.parametrize("prompt", sorted(GOLDEN))
def test_default_graph_picks_the_golden_tokens_but_at_near_ties(bundled, in_place, prompt):
    """The graph a user gets by default (native where the CPU runs ortgen's kernels: float16
    cache) reads the golden continuation as the in-place graph does: at every position it picks
    the same next token, or the in-place graph had the two within NEAR_TIE."""
    assert bundled.model.graph == ("native" if kernels.library() else "inplace")
    ids = [*bundled.encode(prompt), *GOLDEN[prompt]]
    logits = {
        name: DecodeState.for_model(g.model).prefill([ids], all_logits=True)[0, -25:-1]
        for name, g in (("default", bundled), ("inplace", in_place))
    }
    np.testing.assert_allclose(logits["default"], logits["inplace"], atol=0.1)
    pairs = zip(logits["default"], logits["inplace"], strict=True)
    for position, (mine, theirs) in enumerate(pairs):
        pick, golden = int(np.argmax(mine)), GOLDEN[prompt][position]
        assert pick == golden or theirs[golden] - theirs[pick] < NEAR_TIE, position


@pytest.mark.parametrize(
    "options", [PURE_GREEDY, dict(do_sample=True, seed=5)], ids=["greedy", "seeded"]
)
def test_batch_equals_each_prompt_alone(bundled, options):
    ids = [bundled.encode(p) for p in PROMPTS]
    batch = bundled.generate_ids(ids, max_new_tokens=20, **options)
    assert batch == [bundled.generate_ids(p, max_new_tokens=20, **options) for p in ids]
    texts = bundled.generate(PROMPTS[:3], max_new_tokens=20, **options)
    assert texts == [bundled.generate(p, max_new_tokens=20, **options) for p in PROMPTS[:3]]


def test_rows_joining_a_running_batch_see_exactly_what_they_see_alone(bundled):
    prompts = [bundled.encode(p) for p in PROMPTS]
    alone = []  # per prompt: prefill logits, then logits after feeding token 7
    for prompt in prompts:
        state = DecodeState.for_model(bundled.model)
        alone.append([state.prefill([prompt])[0], state.step(np.asarray([7]))[0]])
    state = DecodeState.for_model(bundled.model)
    state.prefill(prompts[:2])  # two rows decode a token …
    state.step(np.asarray([7, 7]))
    late = state.prefill(prompts[2:])  # … three join …
    state.keep([1, 2, 3, 4])  # … the first leaves; the rest step together
    logits = state.step(np.asarray([3, 7, 7, 7]))
    for row, i in enumerate([2, 3, 4]):
        assert np.array_equal(late[row], alone[i][0])
        assert np.array_equal(logits[row + 1], alone[i][1])


def test_portable_and_in_place_graphs_agree(bundled):
    from ortgen import Generator

    portable = Generator.from_dir(graph="portable", threads=2)
    ids = bundled.encode(PROMPTS[4])
    a = DecodeState.for_model(portable.model).prefill([ids], all_logits=True)
    b = DecodeState.for_model(bundled.model).prefill([ids], all_logits=True)
    # Same weights; the attention kernels round differently (the in-place graph's scores are
    # integer dots of int8 keys and queries), and int8 activation quantization can turn an ulp into
    # a step of its grid: close (the five prompts, 2026-12-06: largest difference 0.045-0.063, mean
    # 0.006-0.008; before the integer scores 0.044-0.058), the same top-1 at nearly every position.
    difference = np.abs(a - b)
    assert difference.max() < 0.1 and difference.mean() < 0.015
    assert (a.argmax(-1) == b.argmax(-1)).mean() >= 0.9


def test_stream_joins_to_generate(bundled):
    options = dict(max_new_tokens=30, do_sample=True, seed=2)
    pieces = list(bundled.stream(PROMPTS[0], **options))
    assert len(pieces) > 1 and "".join(pieces) == bundled.generate(PROMPTS[0], **options)


def test_cli_generates_with_the_bundled_model():
    result = CliRunner().invoke(
        app, ["generate", "class", "--greedy", "--json", "--max-new-tokens", "8"]
    )
    assert result.exit_code == 0, result.output
    [record] = json.loads(next(ln for ln in result.output.splitlines() if ln.startswith("[")))
    assert record["generated_text"].startswith("class") and len(record["generated_text"]) > 5


def test_sleeping_threads_give_the_same_tokens(bundled):
    """spin=False (idle ONNX Runtime threads sleep: shared cores) changes scheduling only."""
    from ortgen import Generator

    sleeping = Generator.from_dir(threads=2, spin=False)
    options = dict(max_new_tokens=12, **PURE_GREEDY)
    ids = bundled.encode(PROMPTS[2])
    assert sleeping.generate_ids(ids, **options) == bundled.generate_ids(ids, **options)
