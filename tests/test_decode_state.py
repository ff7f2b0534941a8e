"""The decode state, the one owner of the KV cache: rows that join a running batch, rows that leave
it, and rows run alone see the same numbers — bit for bit on the in-place graph, within fp32
rounding on the portable one (its softmax runs over the batch's padded width)."""

from __future__ import annotations

import numpy as np
import pytest

from ortgen.decode_state import DecodeState, GrowingCache, SlotCache

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
