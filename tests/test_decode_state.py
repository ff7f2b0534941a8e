"""The decode state, the one owner of the KV cache: rows that join a running batch, rows that leave
it, and rows run alone see the same numbers — bit for bit on the in-place graph, within fp32
rounding on the portable one (its softmax runs over the batch's padded width). A prompt fed in
parts (chunked prefill) gives the numbers of the whole prompt, bit for bit."""

from __future__ import annotations

import numpy as np
import pytest

from ortgen.decode_state import DecodeState, GrowingCache, SlotCache, left_padded, part_end

EXACT = {"built": 0.0, "portable": 1e-5}  # max |Δ logits| allowed vs the row alone


def alone(generator, prompt: list[int], tokens: list[int]) -> list[np.ndarray]:
    """Logits after the prefill and after each forced token, the row by itself. → [V] each."""
    state = DecodeState.for_model(generator.model)
    rows = [state.prefill([prompt])[0]]
    rows += [state.step(np.asarray([t]))[0] for t in tokens]
    return rows


@pytest.mark.parametrize("graph", ["built", "portable"])
def test_rows_joining_and_leaving_see_what_they_see_alone(arch, graph, graph_generators):
    generator = graph_generators[arch, graph]
    expected_kind = SlotCache if graph == "built" else GrowingCache
    rng = np.random.default_rng(0)
    prompts = [rng.integers(1, 300, n).tolist() for n in (3, 17, 9, 25)]
    forced = [rng.integers(1, 300, 12).tolist() for _ in prompts]
    want = [alone(generator, p, f) for p, f in zip(prompts, forced, strict=True)]

    state = DecodeState.for_model(generator.model)
    assert isinstance(state, expected_kind)
    got: dict[int, list[np.ndarray]] = {}
    live: list[int] = []  # request index per state row
    for step in range(14):
        if step in (0, 3, 5):  # requests arrive while others decode
            joining = {0: [0, 1], 3: [2], 5: [3]}[step]
            logits = state.prefill([prompts[i] for i in joining])
            for i, row in zip(joining, logits, strict=True):
                got[i] = [row]
        if step == 7:  # request 1 is cancelled, request 0 finished: both leave
            kept = [r for r, i in enumerate(live) if i not in (0, 1)]
            state.keep(kept)
            live = [live[r] for r in kept]
        if step in (0, 3, 5):
            live += {0: [0, 1], 3: [2], 5: [3]}[step]
        decoding = [i for i in live if len(got[i]) <= len(forced[i])]
        if len(decoding) < len(live):  # rows that used up their forced tokens leave too
            kept = [r for r, i in enumerate(live) if i in decoding]
            state.keep(kept)
            live = decoding
        if not live:
            break
        tokens = np.asarray([forced[i][len(got[i]) - 1] for i in live])
        for i, row in zip(live, state.step(tokens), strict=True):
            got[i].append(row)
    for i, rows in got.items():
        assert len(rows) >= 2
        diff = max(float(np.abs(a - b).max()) for a, b in zip(rows, want[i], strict=False))
        assert diff <= EXACT[graph], (i, diff)


def test_state_starts_empty_and_counts_rows(generators):
    state = DecodeState.for_model(generators["gpt2"].model)
    assert state.rows == 0
    state.prefill([[1, 2, 3], [4, 5]])
    assert state.rows == 2
    state.step(np.asarray([6, 7]))
    state.keep([1])
    assert state.rows == 1
    assert state.step(np.asarray([8])).shape == (1, generators["gpt2"].manifest.vocab_size)


@pytest.mark.parametrize("graph", ["built", "portable"])
def test_select_with_repeats_gives_the_logits_of_the_rows_it_copies(arch, graph, graph_generators):
    generator, exact = graph_generators[arch, graph], EXACT[graph]
    prompts = [[1, 2, 3], [4, 5, 6, 7, 8, 9, 10], [11, 12]]
    state = DecodeState.for_model(generator.model)
    state.prefill(prompts)
    first = state.step(np.asarray([20, 21, 22]))  # [3, V]
    rows = [2, 0, 0, 1, 2]  # reordered, repeated, grown past the old count
    state.select(rows)
    assert state.rows == len(rows)
    tokens = np.asarray([30, 31, 32, 33, 34])
    after = state.step(tokens)  # [5, V]
    for j, source in enumerate(rows):
        alone = DecodeState.for_model(generator.model)
        alone.prefill([prompts[source]])
        assert np.abs(alone.step(np.asarray([20 + source]))[0] - first[source]).max() <= exact
        want = alone.step(tokens[j : j + 1])[0]
        assert np.abs(after[j] - want).max() <= exact, (j, source)
    state.select([4, 1])  # shrinking, out of order
    assert state.step(np.asarray([40, 41])).shape[0] == 2


@pytest.mark.parametrize("graph", ["built", "portable"])
def test_compact_fills_holes_from_the_end_and_every_row_goes_on_as_alone(
    arch, graph, graph_generators
):
    """compact (rows leaving the engine's batch): on the in-place graph the last rows move into
    the slots of those that left (one copy each), a row being added in parts follows; each kept
    row's next logits, and the added row's, are those of the row alone."""
    generator, exact = graph_generators[arch, graph], EXACT[graph]
    prompts = [[1, 2, 3], [4, 5, 6, 7, 8], [9, 10], [11, 12, 13, 14], [15, 16, 17], [18]]
    joining = list(range(30, 70))
    state = DecodeState.for_model(generator.model)
    state.prefill(prompts)
    state.step(np.asarray([20 + r for r in range(len(prompts))]))
    if state.chunked:  # a row being added, 16 of its 40 tokens cached
        assert state.prefill_part(joining, 16) is None
    order = state.compact([0, 2, 3, 5])
    assert order == ([0, 5, 2, 3] if graph == "built" else [0, 2, 3, 5])
    assert state.rows == 4
    if state.chunked:
        last = state.prefill_part(joining, len(joining))
        assert np.abs(last - alone(generator, joining, [])[0]).max() <= exact
    tokens = np.asarray([40 + r for r in order] + [41] * (state.rows - len(order)))
    after = state.step(tokens)
    for j, source in enumerate(order):
        want = alone(generator, prompts[source], [20 + source, 40 + source])[-1]
        assert np.abs(after[j] - want).max() <= exact, (j, source)
    if state.chunked:
        want = alone(generator, joining, [41])[-1]
        assert np.abs(after[4] - want).max() <= exact


def test_portable_prompt_runs_compute_the_last_logits_only(arch, graph_generators):
    """logits_to_keep (an overridable initializer: no IO binding takes it) reaches the graph."""
    generator = graph_generators[arch, "portable"]
    m = generator.manifest
    state = DecodeState.for_model(generator.model)
    ids, mask, positions = left_padded([[1, 2, 3, 4, 5]], generator.model.pad_id)
    empty = [np.zeros((1, m.num_heads, 0, m.head_dim), m.kv_dtype)] * (2 * m.num_layers)
    assert state._run(ids, mask, positions, empty)[0].shape[:2] == (1, 1)
    assert state._run(ids, mask, positions, empty, all_logits=True)[0].shape[:2] == (1, 5)


def parts(length: int, budget: int) -> list[int]:
    """The ends of the parts a `length`-token prompt is fed in at `budget` tokens a time."""
    ends = [part_end(length, 0, budget)]
    while ends[-1] < length:
        ends.append(part_end(length, ends[-1], budget))
    return ends


@pytest.mark.parametrize("length", [1, 2, 3, 16, 17, 33, 40])
@pytest.mark.parametrize("budget", [2, 3, 15, 16, 64])
def test_prompt_parts_cover_it_and_are_never_one_token_of_a_longer_prompt(length, budget):
    ends = parts(length, budget)
    sizes = np.diff([0, *ends])
    assert ends[-1] == length and (sizes > 0).all()
    assert (sizes <= budget + 1).all()  # a part grows by one rather than leave one token
    assert length == 1 or (sizes >= 2).all()


def test_prompt_fed_in_parts_gives_the_numbers_of_the_whole_prompt(arch, generators):
    """Parts of 2, 3, 7 and 16 tokens (odd splits included), while another row decodes, leaves
    (its slot moves the part-cached row down) and the slots grow: every logit as alone."""
    generator = generators[arch]
    rng = np.random.default_rng(3)
    max_positions = generator.manifest.max_positions
    for budget in (2, 3, 7, 16):
        prompt = rng.integers(1, 300, max_positions // 2 + 3).tolist()  # past GPT-Neo's window
        forced = rng.integers(1, 300, 6).tolist()
        want = alone(generator, prompt, forced)
        state = DecodeState.for_model(generator.model)
        assert state.chunked
        state.prefill([[5, 6, 7], [8, 9]])  # neighbours: the second leaves mid-prompt
        got, ends = None, parts(len(prompt), budget)
        for k, end in enumerate(ends):
            state.step(np.asarray([1] * state.rows))
            if k == 1:
                state.keep([0])
            got = state.prefill_part(prompt, end)
            assert (got is None) == (end < len(prompt))
        rows = [got]
        for token in forced:
            rows.append(state.step(np.asarray([4, token]))[1])
        for k, (a, b) in enumerate(zip(rows, want, strict=True)):
            assert np.array_equal(a, b), (budget, k, float(np.abs(a - b).max()))


def test_a_long_prompt_runs_in_parts_with_the_numbers_of_one_run(arch, generators, monkeypatch):
    """SlotCache.prefill feeds a prompt longer than PREFILL_PART in parts (its activations stay
    small): the logits, and the steps after, are those of the prompt run whole."""
    from ortgen import decode_state

    generator = generators[arch]
    prompt = np.random.default_rng(5).integers(1, 300, 40).tolist()
    whole = DecodeState.for_model(generator.model)
    want = [whole.prefill([prompt], all_logits=True)[0, -1]]  # all logits: one run, whole
    want += [whole.step(np.asarray([t]))[0] for t in (7, 8)]
    runs = []
    monkeypatch.setattr(decode_state, "PREFILL_PART", 6)
    state = DecodeState.for_model(generator.model)
    monkeypatch.setattr(state, "_feed", lambda *a, **k: runs.append(a[1:3]) or feed(*a, **k))
    feed = type(state)._feed.__get__(state)
    got = [state.prefill([prompt])[0]]
    got += [state.step(np.asarray([t]))[0] for t in (7, 8)]
    assert runs == [(s, min(s + 6, 40)) for s in range(0, 40, 6)]
    assert all(np.array_equal(a, b) for a, b in zip(got, want, strict=True))


def test_dropped_part_leaves_no_trace(generators):
    generator = generators["gpt2"]
    prompt, other = list(range(10, 40)), list(range(50, 70))
    want = alone(generator, other, [3, 4])
    state = DecodeState.for_model(generator.model)
    assert state.prefill_part(prompt, 16) is None
    state.drop_part()
    assert state.rows == 0
    rows = [state.prefill_part(other, len(other))]
    rows += [state.step(np.asarray([t]))[0] for t in (3, 4)]
    assert all(np.array_equal(a, b) for a, b in zip(rows, want, strict=True))
    with pytest.raises(ValueError):
        state.prefill_part(prompt, 1)  # one token of a longer prompt


@pytest.mark.parametrize("graph", ["built", "portable"])
def test_logits_a_step_returned_survive_the_next_steps(arch, graph, graph_generators):
    """A decode state reuses its IO binding from step to step: the logits it handed out before
    must not be overwritten by the runs after."""
    state = DecodeState.for_model(graph_generators[(arch, graph)].model)
    first = state.prefill([[5, 17, 42], [7, 7]])
    kept, copies = [first], [first.copy()]
    for token in (3, 9, 11):
        kept.append(state.step(np.array([token, token + 1])))
        copies.append(kept[-1].copy())
    assert not np.array_equal(copies[1], copies[2])  # the steps did produce new logits
    for handed, copy in zip(kept, copies, strict=True):
        assert np.array_equal(handed, copy)
