"""Beam search against transformers' `generate(num_beams=k, do_sample=False)`: identical sequences
for both architectures — EOS reached and not, early_stopping True / False / "never", length
penalties, several returned sequences, processors on log-probabilities, a left-padded batch — and
the decode state's `select` that beam search reorders its rows with.

Specification pinned: transformers 4.57.6, `GenerationMixin._beam_search` (generation/utils.py)."""

from __future__ import annotations

import pytest
import torch
from transformers import GenerationConfig

from ortgen.decode_state import left_padded
from ortgen.errors import InvalidOptionError

PROMPT = [5, 17, 42, 99, 7, 63, 12]
NEW_TOKENS = 24


def reference_beams(model, prompts, pad_id, eos, **settings) -> list[list[list[int]]]:
    """transformers' hypotheses per prompt, generated ids only (trailing fill removed)."""
    ids, mask = (torch.from_numpy(a) for a in left_padded(prompts, pad_id)[:2])
    config = GenerationConfig(do_sample=False, pad_token_id=pad_id, eos_token_id=eos, **settings)
    with torch.inference_mode():
        out = model.generate(ids, attention_mask=mask, generation_config=config)
    n = settings.get("num_return_sequences", 1)
    rows = [_cut(row[ids.shape[1] :], eos) for row in out.tolist()]
    return [rows[i : i + n] for i in range(0, len(rows), n)]


def _cut(row: list[int], eos: int | None) -> list[int]:
    """A hypothesis ends at its EOS; what follows is transformers' static-shape fill."""
    if eos is not None and eos in row:
        return row[: row.index(eos) + 1]
    return [t for t in row if t >= 0]


def frequent_token(generator) -> int:
    """A token the model emits early: as EOS, hypotheses finish at different lengths."""
    free = generator.generate_ids(PROMPT, max_new_tokens=12, ignore_eos=True)
    return free[2]


CASES = {
    "k2": dict(num_beams=2),
    "k4-early": dict(num_beams=4, early_stopping=True),
    "k4-never-lp2": dict(num_beams=4, early_stopping="never", length_penalty=2.0),
    "k3-lp-half-n3": dict(num_beams=3, length_penalty=0.5, num_return_sequences=3),
    "k4-negative-lp": dict(num_beams=4, length_penalty=-1.0, num_return_sequences=2),
    "k4-processors": dict(
        num_beams=4, no_repeat_ngram_size=2, repetition_penalty=1.3, num_return_sequences=2
    ),
    "k2-min-new": dict(num_beams=2, min_new_tokens=10),
}


@pytest.mark.parametrize("case", list(CASES))
def test_beam_search_equals_transformers(arch, case, generators, references):
    generator, settings = generators[arch], CASES[case]
    eos = frequent_token(generator)
    expected = reference_beams(
        references[arch], [PROMPT], generator.pad_id, eos, max_new_tokens=NEW_TOKENS, **settings
    )[0]
    got = generator.generate_ids(PROMPT, max_new_tokens=NEW_TOKENS, eos_token_id=eos, **settings)
    n = settings.get("num_return_sequences", 1)
    assert (got if n > 1 else [got]) == expected


def test_beam_cases_finish_hypotheses_at_eos_early(arch, generators):
    """The EOS chosen above ends hypotheses before max_new_tokens: the finishing, early-stop and
    length-penalty rules are all exercised."""
    generator = generators[arch]
    eos = frequent_token(generator)
    options = dict(max_new_tokens=NEW_TOKENS, eos_token_id=eos, num_beams=4)
    got = generator.generate_ids(PROMPT, num_return_sequences=4, **options)
    assert any(ids[-1] == eos and len(ids) < NEW_TOKENS for ids in got)


@pytest.mark.parametrize("early_stopping", [True, False, "never"])
def test_beam_search_without_eos_runs_to_max_new_tokens(
    arch, early_stopping, generators, references
):
    generator = generators[arch]
    settings = dict(num_beams=3, early_stopping=early_stopping, num_return_sequences=3)
    expected = reference_beams(
        references[arch], [PROMPT], generator.pad_id, None, max_new_tokens=16, **settings
    )[0]
    got = generator.generate_ids(PROMPT, max_new_tokens=16, ignore_eos=True, **settings)
    assert got == expected and all(len(ids) == 16 for ids in got)


def test_left_padded_batch_equals_transformers_and_one_by_one(arch, generators, references):
    generator = generators[arch]
    eos = frequent_token(generator)
    prompts = [PROMPT, [3, 1, 4, 1, 5, 9, 2, 6, 5, 3, 5, 8]]
    settings = dict(num_beams=3, num_return_sequences=2, max_new_tokens=20)
    expected = reference_beams(references[arch], prompts, generator.pad_id, eos, **settings)
    got = generator.generate_ids(prompts, eos_token_id=eos, **settings)
    assert got == expected
    assert got == [generator.generate_ids(p, eos_token_id=eos, **settings) for p in prompts]


def test_beam_search_with_max_length_equals_transformers(arch, generators, references):
    generator = generators[arch]
    settings = dict(num_beams=2, max_length=len(PROMPT) + 10, min_length=len(PROMPT) + 10)
    eos = frequent_token(generator)
    expected = reference_beams(references[arch], [PROMPT], generator.pad_id, eos, **settings)
    got = generator.generate_ids(PROMPT, eos_token_id=eos, **settings)
    assert got == expected[0][0] and len(got) == 10


def test_beam_text_is_the_decoded_ids(generators):
    generator = generators["gpt2"]
    options = dict(num_beams=3, max_new_tokens=12, num_return_sequences=2)
    texts = generator.generate("Once upon a time", **options)
    ids = generator.generate_ids(generator.encode("Once upon a time"), **options)
    assert texts == [generator.tokenizer.decode(i) for i in ids]
    full = generator.generate("Once upon a time", return_full_text=True, **options)
    assert full == ["Once upon a time" + t for t in texts]


@pytest.mark.parametrize(
    "options, message",
    [
        (dict(num_beams=2, do_sample=True), "beam sampling"),
        (dict(num_beams=2, num_return_sequences=3), "exceeds num_beams"),
        (dict(num_beams=2, stop=["x"]), "stop strings"),
        (dict(num_beams=2, early_stopping="sometimes"), "early_stopping"),
        (dict(num_beams=0), "num_beams"),
    ],
)
def test_beam_options_refused_in_one_clear_error(options, message, generators):
    with pytest.raises(InvalidOptionError, match=message):
        generators["gpt2"].generate("Once upon", **options)


def test_stream_refuses_beams(generators):
    with pytest.raises(InvalidOptionError, match="generate"):
        list(generators["gpt2"].stream("Once upon", num_beams=2))
