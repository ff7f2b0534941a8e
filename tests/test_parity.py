"""Exported graphs and ortgen's loop against transformers: logits within the fp32 tolerance for the
prefill and cached steps, and identical greedy tokens — for prompts shorter and longer than
GPT-Neo's local window, alone and in left-padded batches."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from checkpoints import WINDOW
from transformers import GenerationConfig

from ortgen.decode_state import DecodeState, left_padded
from ortgen_export.parity import THRESHOLDS

ATOL = THRESHOLDS["fp32"].max_abs_diff  # the one tolerance table: the export's
SHORT, LONG = 5, 3 * WINDOW + 5  # prompt lengths on both sides of the local window


def prompt(length: int, seed: int) -> list[int]:
    return np.random.default_rng(seed).integers(1, 300, size=length).tolist()


def reference_greedy(model, prompts: list[list[int]], new_tokens: int, pad_id: int) -> list:
    ids, mask, _ = left_padded(prompts, pad_id)
    config = GenerationConfig(
        max_new_tokens=new_tokens, do_sample=False, eos_token_id=None, pad_token_id=pad_id
    )
    with torch.inference_mode():
        out = model.generate(
            torch.from_numpy(ids), attention_mask=torch.from_numpy(mask), generation_config=config
        )
    return out[:, ids.shape[1] :].tolist()


@pytest.mark.parametrize("length", [SHORT, LONG])
def test_logits_match_transformers_prefill_and_cached_steps(
    arch, graph, length, graph_generators, references
):
    generator, model = graph_generators[arch, graph], references[arch]
    ids = prompt(length, seed=length)
    state = DecodeState.for_model(generator.model)
    logits = state.prefill([ids], all_logits=True)  # [1, T, V]
    with torch.inference_mode():
        out = model(torch.tensor([ids]), use_cache=True)
        assert np.abs(logits - out.logits.numpy()).max() <= ATOL
        for _ in range(6):  # cached steps, crossing the window for LONG prompts
            next_id = out.logits[:, -1].argmax(-1, keepdim=True)  # [1, 1]
            out = model(next_id, past_key_values=out.past_key_values, use_cache=True)
            logits = state.step(next_id.numpy()[:, 0])  # [1, V]
            assert logits.shape == (1, generator.manifest.vocab_size)
            assert np.abs(logits - out.logits.numpy()[:, -1]).max() <= ATOL


@pytest.mark.parametrize("length", [SHORT, LONG])
def test_compare_generation_to_transformers(arch, graph, length, graph_generators, references):
    generator = graph_generators[arch, graph]
    ids = prompt(length, seed=100 + length)
    expected = reference_greedy(references[arch], [ids], 32, generator.pad_id)[0]
    got = generator.generate_ids(ids, max_new_tokens=32, do_sample=False, ignore_eos=True)
    assert got == expected


def test_left_padded_batch_equals_transformers_and_one_by_one(
    arch, graph, graph_generators, references
):
    generator = graph_generators[arch, graph]
    prompts = [prompt(n, seed=n) for n in (SHORT, LONG, WINDOW + 1, 2)]
    options = dict(max_new_tokens=20, do_sample=False, ignore_eos=True)
    batch = generator.generate_ids(prompts, **options)
    alone = [generator.generate_ids(p, **options) for p in prompts]
    assert batch == alone
    assert batch == reference_greedy(references[arch], prompts, 20, generator.pad_id)


def test_generation_stops_at_eos_like_transformers(arch, generators):
    generator = generators[arch]
    ids = prompt(SHORT, seed=7)
    free = generator.generate_ids(ids, max_new_tokens=12, ignore_eos=True)
    stop = free[4]  # pretend the fifth token is EOS
    stopped = generator.generate_ids(ids, max_new_tokens=12, eos_token_id=stop)
    assert stopped == free[: free.index(stop) + 1]  # EOS included, nothing after it
