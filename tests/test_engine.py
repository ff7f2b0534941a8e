"""The serving engine: requests batched as they arrive give exactly the tokens each gives alone
(both architectures, every precision, prompts fed whole or in parts between steps); cancellation
(prefill included), queue limits and timeouts; the asyncio API; one Generator shared by many
threads."""

from __future__ import annotations

import asyncio
import shutil
import threading
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import pytest

from ortgen import Generator
from ortgen.decode_state import DecodeState
from ortgen.engine import Engine, EngineLimits
from ortgen.errors import OverloadedError, RequestCancelledError, RequestTimeoutError

PRECISIONS = ("fp32", "int8", "int4")
LONG = dict(max_new_tokens=2000, do_sample=False, ignore_eos=True)  # seconds on `long_model`


def build_long_model(checkpoints, base) -> Path:
    """A random 4-layer GPT-2 with a 2048-token context (the tests' tokenizer) whose greedy output
    is one plain-text token over and over: requests that run for seconds and stream from their
    first token, so a test can act while one is in flight. Built once per session."""
    folder = base / "long-model"
    if (folder / "ortgen.json").is_file():
        return folder
    import torch
    from tokenizers import Tokenizer
    from transformers import GPT2Config, GPT2LMHeadModel

    from ortgen_export import ExportOptions, export_model

    source = base / "long-checkpoint"
    source.mkdir(exist_ok=True)
    for name in ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json"):
        if (checkpoints["gpt2"] / name).is_file():
            shutil.copy(checkpoints["gpt2"] / name, source / name)
    tiny = GPT2Config.from_pretrained(checkpoints["gpt2"])
    torch.manual_seed(0)
    config = GPT2Config(
        n_layer=4,
        n_head=4,
        n_embd=256,
        n_positions=2048,
        vocab_size=tiny.vocab_size,
        bos_token_id=tiny.bos_token_id,
        eos_token_id=tiny.eos_token_id,
    )
    model = GPT2LMHeadModel(config)
    token = Tokenizer.from_file(str(source / "tokenizer.json")).encode("a").ids[0]
    with torch.no_grad():  # final hidden state = that token's embedding: logits peak on it
        model.transformer.ln_f.weight.zero_()
        model.transformer.ln_f.bias.copy_(10 * model.transformer.wte.weight[token])
    model.save_pretrained(source)
    export_model(str(source), folder, ExportOptions())
    return folder


@pytest.fixture(scope="session")
def long_generator(checkpoints, tmp_path_factory) -> Generator:
    folder = build_long_model(checkpoints, tmp_path_factory.getbasetemp())
    return Generator.from_dir(folder, threads=1)


@pytest.fixture(scope="session")
def precision_folders(exported, checkpoints, tmp_path_factory):
    """(arch, precision) → model folder: the fp32 export and int8 / int4 exports."""
    from ortgen_export import ExportOptions, export_model

    root = tmp_path_factory.mktemp("engine-precisions")
    folders = {(arch, "fp32"): folder for arch, folder in exported.items()}
    for arch, checkpoint in checkpoints.items():
        for precision in ("int8", "int4"):
            folder = root / f"{arch}-{precision}"
            export_model(
                str(checkpoint), folder, ExportOptions(precision=precision, min_agreement=0.0)
            )
            folders[arch, precision] = folder
    return folders


def mixed_requests(generator: Generator, count: int = 16) -> list[tuple[list[int], dict]]:
    """Prompts of mixed lengths; greedy and seeded sampling; mixed output lengths."""
    rng = np.random.default_rng(7)
    vocab = generator.manifest.vocab_size
    requests = []
    for i in range(count):
        prompt = rng.integers(1, vocab - 1, int(rng.integers(2, 40))).tolist()
        options = dict(max_new_tokens=int(rng.integers(3, 30)))
        if i % 2:
            options |= dict(do_sample=True, seed=i, top_k=20, top_p=0.9, temperature=0.8)
        else:
            options |= dict(do_sample=False, repetition_penalty=1.0 + (i % 3) * 0.2)
        requests.append((prompt, options))
    return requests


def rows_seen(engine: Engine) -> int:
    """Most rows a decode step has run together so far (from the step histogram)."""
    registry = engine.metrics.registry
    buckets = [
        (s.labels["le"], s.value)
        for m in registry.collect()
        if m.name == "ortgen_step_batch_rows"
        for s in m.samples
        if s.name.endswith("_bucket")
    ]
    total = buckets[-1][1]
    return min(float(le) for le, count in buckets if count == total)


@pytest.mark.parametrize("precision", PRECISIONS)
def test_sixteen_concurrent_requests_give_the_tokens_each_gives_alone(
    arch, precision, precision_folders
):
    generator = Generator.from_dir(precision_folders[arch, precision], threads=1)
    requests = mixed_requests(generator)
    alone = [generator.generate_ids(prompt, **options) for prompt, options in requests]
    # half wait, then join while the others decode: their prompts go in parts of ≤ 5 tokens
    engine = Engine(generator, EngineLimits(max_batch=8, max_queue=16, prefill_chunk=5))
    try:
        handles = [engine.submit(prompt, **options) for prompt, options in requests]
        together = [h.result().choices[0].ids for h in handles]
    finally:
        engine.close()
    assert rows_seen(engine) >= 4  # the requests really ran side by side
    parts = engine.metrics.registry.get_sample_value("ortgen_prefill_parts_total")
    assert parts > len(requests) // 2  # and prompts went in parts between steps
    for i, (want, got) in enumerate(zip(alone, together, strict=True)):
        assert got == want, f"request {i} ({requests[i][1]}) changed when batched"


def test_portable_graph_takes_whole_prompts_and_gives_the_tokens_each_gives_alone(
    precision_folders,
):
    # model.onnx (a growing cache, no parts): the engine's prompts go in whole
    generator = Generator.from_dir(precision_folders["gpt2", "fp32"], threads=1, graph="portable")
    requests = mixed_requests(generator)[:6]
    alone = [generator.generate_ids(prompt, **options) for prompt, options in requests]
    engine = Engine(generator, EngineLimits(max_batch=3, prefill_chunk=2))
    try:
        handles = [engine.submit(prompt, **options) for prompt, options in requests]
        together = [h.result().choices[0].ids for h in handles]
    finally:
        engine.close()
    assert rows_seen(engine) >= 2
    assert not engine.metrics.registry.get_sample_value("ortgen_prefill_parts_total")
    assert together == alone


def test_generator_shared_by_eight_threads_matches_sequential_calls(generators):
    generator = generators["gpt2"]
    prompts = [f"The old fisherman {word}" for word in "abcdefgh"]
    options = [dict(max_new_tokens=12, do_sample=i % 2 == 1, seed=i) for i in range(8)]
    sequential = [generator.generate(p, **o) for p, o in zip(prompts, options, strict=True)]
    with ThreadPoolExecutor(8) as pool:
        for _ in range(3):  # several rounds: interleavings differ
            calls = [
                pool.submit(generator.generate, p, **o)
                for p, o in zip(prompts, options, strict=True)
            ]
            shared = [call.result() for call in calls]
            assert shared == sequential


def test_stop_strings_and_several_sequences_match_the_generator(generators):
    generator = generators["gpt2"]
    prompt = "The old fisherman"
    greedy = generator.generate(prompt, max_new_tokens=20, do_sample=False)
    stop = greedy.split()[2]  # a word the greedy continuation reaches
    engine = Engine(generator)
    try:
        stopped = engine.generate(prompt, max_new_tokens=20, do_sample=False, stop=[stop])
        assert stopped.choices[0].finish_reason == "stop"
        assert stopped.text == generator.generate(prompt, max_new_tokens=20, stop=[stop])
        sampled = dict(max_new_tokens=10, do_sample=True, seed=3, num_return_sequences=3)
        got = engine.generate(prompt, **sampled)
        assert [c.text for c in got.choices] == generator.generate(prompt, **sampled)
        assert "".join(engine.stream(prompt, max_new_tokens=20, do_sample=False)) == greedy
    finally:
        engine.close()


def first_piece(request) -> None:
    """Block until the request has produced text: it holds a row."""
    for piece in request:
        if piece.text:
            return


def wait_for(condition, what: str, tries: int = 2000) -> None:
    """Poll `condition` (bounded): the worker thread acts on its own schedule."""
    event = threading.Event()
    for _ in range(tries):
        if condition():
            return
        event.wait(0.005)
    raise AssertionError(f"timed out waiting for {what}")


def test_cancelled_request_leaves_within_one_step(long_generator):
    engine = Engine(long_generator, EngineLimits(max_batch=2))
    try:
        request = engine.submit("The old fisherman", **LONG)
        first_piece(request)
        sequence = request.sequences[0]
        at_cancel = len(sequence.ids)
        request.cancel()
        with pytest.raises(RequestCancelledError):
            request.result()
        assert len(sequence.ids) <= at_cancel + 1
        wait_for(lambda: gauge(engine, "ortgen_batch_rows") == 0, "the row to leave")
    finally:
        engine.close()


def test_request_cancelled_during_its_prefill_leaves_and_the_others_go_on(long_generator):
    generator = long_generator
    engine = Engine(generator, EngineLimits(max_batch=4, prefill_chunk=16))
    try:
        running = engine.submit("The old fisherman", **LONG)
        first_piece(running)
        long_prompt = generator.encode("The sea was calm. " * 300)[:1500]
        doomed = engine.submit(long_prompt, max_new_tokens=5)  # ~90 parts of 16 tokens
        wait_for(lambda: 0 < gauge(engine, "ortgen_prefill_tokens") < len(long_prompt), "parts")
        doomed.cancel()
        with pytest.raises(RequestCancelledError):
            doomed.result()
        wait_for(lambda: gauge(engine, "ortgen_prefill_tokens") == 0, "the prompt to leave")
        assert outcomes(engine, "cancelled") == 1
        prompt = long_prompt[:200]  # reuses the slot the cancelled prompt was filling
        want = generator.generate_ids(prompt, max_new_tokens=8, do_sample=False)
        got = engine.generate(prompt, max_new_tokens=8, do_sample=False)
        assert got.choices[0].ids == want
        assert not running.cancelled and gauge(engine, "ortgen_batch_rows") == 1
    finally:
        engine.close(cancel=True)


def gauge(engine: Engine, name: str) -> float:
    return engine.metrics.registry.get_sample_value(name)


def outcomes(engine: Engine, outcome: str) -> float | None:
    """Requests that ended this way so far (None: none yet)."""
    return engine.metrics.registry.get_sample_value("ortgen_requests_total", {"outcome": outcome})


def test_full_queue_refuses_and_cancelled_requests_free_their_places(long_generator):
    engine = Engine(long_generator, EngineLimits(max_batch=1, max_queue=1))
    try:
        running = engine.submit("The old fisherman", **LONG)
        first_piece(running)
        waiting = engine.submit("A small child", max_new_tokens=3)
        with pytest.raises(OverloadedError, match="max_queue 1"):
            engine.submit("My neighbour", max_new_tokens=3)
        running.cancel()
        assert len(waiting.result().choices[0].ids) == 3
        assert outcomes(engine, "refused") == 1
    finally:
        engine.close()


def test_timeout_ends_running_and_queued_requests(long_generator):
    engine = Engine(long_generator, EngineLimits(max_batch=1, timeout=0.2))
    try:
        running, queued = (engine.submit("The old fisherman", **LONG) for _ in range(2))
        for request in (running, queued):
            with pytest.raises(RequestTimeoutError, match="more than 0.2 s"):
                request.result()
        assert 0 < len(running.sequences[0].ids) < LONG["max_new_tokens"]
        # the queued one waited almost all its time (it may get in for the last instant)
        assert len(queued.sequences[0].ids) < len(running.sequences[0].ids)
    finally:
        engine.close()


def test_asyncio_api_matches_and_task_cancel_frees_the_row(long_generator):
    generator = long_generator
    prompt = "The lighthouse keeper"
    want = generator.generate(prompt, max_new_tokens=15, do_sample=False)
    engine = Engine(generator, EngineLimits(max_batch=4))

    async def main() -> None:
        got = await engine.aio.generate(prompt, max_new_tokens=15, do_sample=False)
        assert got.text == want
        pieces = [p async for p in engine.aio.stream(prompt, max_new_tokens=15, do_sample=False)]
        assert "".join(pieces) == want
        started = asyncio.Event()

        async def long_stream() -> None:
            async for _ in engine.aio.stream(prompt, **LONG):
                started.set()

        task = asyncio.create_task(long_stream())
        await started.wait()
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task

    try:
        asyncio.run(main())
        wait_for(lambda: outcomes(engine, "cancelled") == 1, "the cancellation to be counted")
        assert gauge(engine, "ortgen_batch_rows") == 0
    finally:
        engine.close()


def test_asyncio_streams_of_one_loop_get_every_piece_in_order(long_generator):
    """Eight streams in one event loop: each step's pieces reach the loop together (one wake-up);
    every stream still gets its own text, whole and in order."""
    generator = long_generator
    prompts = [f"The lighthouse keeper {i}" for i in range(8)]
    want = [generator.generate(p, max_new_tokens=12, do_sample=False) for p in prompts]
    engine = Engine(generator, EngineLimits(max_batch=8))

    async def collect(prompt: str) -> str:
        pieces = [p async for p in engine.aio.stream(prompt, max_new_tokens=12, do_sample=False)]
        return "".join(pieces)

    async def main() -> list[str]:
        return await asyncio.gather(*(collect(p) for p in prompts))

    try:
        assert asyncio.run(main()) == want
        assert rows_seen(engine) >= 4
    finally:
        engine.close()


def test_requests_of_a_closed_event_loop_are_cancelled_and_a_new_loop_is_served(long_generator):
    generator = long_generator
    prompt = "The lighthouse keeper"
    engine = Engine(generator, EngineLimits(max_batch=4))

    async def leave() -> None:  # submit and return: the loop closes while the request runs
        engine.aio.submit(prompt, **LONG)

    async def again() -> str:
        return (await engine.aio.generate(prompt, max_new_tokens=8, do_sample=False)).text

    try:
        asyncio.run(leave())
        wait_for(lambda: outcomes(engine, "cancelled") == 1, "the orphaned request to be cancelled")
        wait_for(lambda: gauge(engine, "ortgen_batch_rows") == 0, "its row to be freed")
        assert asyncio.run(again()) == generator.generate(prompt, max_new_tokens=8, do_sample=False)
    finally:
        engine.close()


def test_a_burst_hears_each_first_token_as_soon_as_its_prompt_is_cached(
    long_generator, monkeypatch
):
    """Four requests arriving together: each row chooses its first token right after its own
    prompt is cached, not after all four (time to first token of the first ≈ one prompt's)."""
    generator = long_generator
    prompts = [f"The lighthouse keeper {i}" for i in range(4)]
    want = [generator.generate(p, max_new_tokens=3, do_sample=False) for p in prompts]
    state_class = type(DecodeState.for_model(generator.model))
    original = state_class.prefill_part
    handles: list = []
    first_tokens_before: list[int] = []  # at each prompt's prefill: requests with a token

    def counting(self, prompt, end):
        first_tokens_before.append(sum(1 for h in handles if h.sequences[0].ids))
        return original(self, prompt, end)

    monkeypatch.setattr(state_class, "prefill_part", counting)
    engine = Engine(generator, EngineLimits(max_batch=4))
    try:
        with engine._wake:  # all four are queued before the worker admits any: one burst
            handles += [engine.submit(p, max_new_tokens=3, do_sample=False) for p in prompts]
        assert [h.result().choices[0].text for h in handles] == want
    finally:
        engine.close()
    assert first_tokens_before == [0, 1, 2, 3]


def test_a_steps_pieces_reach_their_callers_before_the_next_model_run(long_generator, monkeypatch):
    """Pieces and endings are held while the worker's Python work for a step runs (a caller woken
    mid-step contends for the GIL), then handed over before the next prefill or decode step."""
    generator = long_generator
    state_class = type(DecodeState.for_model(generator.model))
    step, prefill_part = state_class.step, state_class.prefill_part
    engine = Engine(generator, EngineLimits(max_batch=2))
    held: list[int] = []  # undelivered items at each model run

    def stepping(self, tokens):
        held.append(len(engine._outbox))
        return step(self, tokens)

    def prefilling(self, prompt, end):
        held.append(len(engine._outbox))
        return prefill_part(self, prompt, end)

    monkeypatch.setattr(state_class, "step", stepping)
    monkeypatch.setattr(state_class, "prefill_part", prefilling)
    try:
        with engine._wake:
            handles = [
                engine.submit(f"Harbour {i}", max_new_tokens=4 + i, do_sample=False)
                for i in range(2)
            ]
        pieces = [list(handle) for handle in handles]
    finally:
        engine.close()
    assert len(held) >= 2 + 4 and set(held) == {0}
    assert all(pieces) and all(p[-1].finish_reason == "length" for p in pieces)
