"""The Python API: seeded sampling, top_k=1 = greedy, streaming that joins to generate(), options
validated, context limit enforced."""

from __future__ import annotations

import pytest

from ortgen import Generator
from ortgen.errors import ContextLengthError, InvalidOptionError, ModelFolderError
from ortgen.tokenizer import TextStream

PROMPT = "Once upon a time"


def test_same_seed_same_sample(arch, generators):
    generator = generators[arch]
    options = dict(do_sample=True, temperature=1.3, top_k=0, max_new_tokens=24, ignore_eos=True)
    first = generator.generate_ids(generator.encode(PROMPT), seed=11, **options)
    assert first == generator.generate_ids(generator.encode(PROMPT), seed=11, **options)
    samples = {
        tuple(generator.generate_ids(generator.encode(PROMPT), seed=s, **options))
        for s in range(12, 16)
    }
    assert len(samples) > 1  # the seed really drives the draws


def test_sampling_with_top_k_one_equals_greedy(arch, generators):
    generator = generators[arch]
    ids = generator.encode(PROMPT)
    greedy = generator.generate_ids(ids, max_new_tokens=24, ignore_eos=True)
    sampled = generator.generate_ids(
        ids, do_sample=True, top_k=1, temperature=2.0, seed=5, max_new_tokens=24, ignore_eos=True
    )
    assert sampled == greedy


def test_stream_joins_to_generate(arch, generators):
    generator = generators[arch]
    options = dict(do_sample=True, seed=3, max_new_tokens=40, ignore_eos=True)
    pieces = list(generator.stream(PROMPT, **options))
    assert len(pieces) > 1
    assert "".join(pieces) == generator.generate(PROMPT, **options)
    ids = generator.generate_ids(generator.encode(PROMPT), **options)
    assert "".join(pieces) == generator.tokenizer.decode(ids)


def test_text_stream_never_splits_a_character(generators):
    tokenizer = generators["gpt2"].tokenizer
    text = "Caf\u00e9 \U0001f600\U0001f680 \u65e5\u672c\u8a9e na\u00efve"
    ids = [i for ch in text for i in tokenizer.encode(ch)]  # byte-level pieces of each char
    stream = TextStream(tokenizer)
    pieces = [stream.push(i) for i in ids] + [stream.finish()]
    assert "".join(pieces) == text
    assert all("\ufffd" not in p for p in pieces)
    assert len([p for p in pieces if p]) > 5  # it really streamed


@pytest.mark.parametrize(
    "options",
    [
        dict(top_p=0.0),
        dict(top_p=1.5),
        dict(top_k=-1),
        dict(do_sample=True, temperature=0.0),
        dict(max_new_tokens=0),
        dict(beams=4),
    ],
)
def test_invalid_options_are_refused(generators, options):
    with pytest.raises(InvalidOptionError):
        generators["gpt2"].generate(PROMPT, **options)


def test_context_limit_is_enforced(generators):
    generator = generators["gpt2"]
    limit = generator.manifest.max_positions
    with pytest.raises(ContextLengthError, match="context of"):
        generator.generate_ids([1] * (limit - 3), max_new_tokens=4)
    assert len(generator.generate_ids([1] * (limit - 4), max_new_tokens=4, ignore_eos=True)) == 4


def test_defaults_come_from_generation_config(exported, tmp_path):
    import json
    import shutil

    folder = tmp_path / "model"
    shutil.copytree(exported["gpt2"], folder)
    (folder / "generation_config.json").write_text(json.dumps({"max_new_tokens": 7, "top_k": 3}))
    generator = Generator.from_dir(folder)
    assert generator.options().max_new_tokens == 7 and generator.options().top_k == 3
    assert generator.options(top_k=0).top_k == 0  # explicit options win
    assert len(generator.generate_ids([1, 2, 3], ignore_eos=True)) == 7


@pytest.mark.parametrize("spin", [-1, 2.5, "yes"])
def test_a_spin_that_is_neither_a_switch_nor_microseconds_is_refused(exported, spin):
    with pytest.raises(InvalidOptionError, match="spin must be True, False or a number of µs"):
        Generator.from_dir(exported["gpt2"], spin=spin)


def test_non_model_folder_is_refused(tmp_path):
    with pytest.raises(ModelFolderError, match="not an ortgen model folder"):
        Generator.from_dir(tmp_path)


def test_cuda_greedy_equals_cpu(exported):
    import onnxruntime as ort

    if "CUDAExecutionProvider" not in ort.get_available_providers():
        pytest.skip("no CUDA execution provider on this machine")
    ids = list(range(1, 20))
    for folder in exported.values():
        cpu = Generator.from_dir(folder).generate_ids(ids, max_new_tokens=16, ignore_eos=True)
        cuda = Generator.from_dir(folder, device="cuda")
        assert cuda.generate_ids(ids, max_new_tokens=16, ignore_eos=True) == cpu
