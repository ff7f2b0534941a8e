"""Sampling is judged by its statistics and properties, not against another RNG."""

from __future__ import annotations

import numpy as np
import pytest

from ortgen import kernels, sampling
from ortgen.sampling import (
    apply_top_p,
    greedy,
    logits_to_probs,
    sample,
    sample_row,
    softmax,
    support,
)

LOGITS = np.array([[2.0, 1.5, 1.0, 0.5, 0.0, -0.5, -1.0, -3.0]])  # [1, 8]
DRAWS = 40_000


def chi_square_ok(counts: np.ndarray, probs: np.ndarray) -> bool:
    """Pearson's test at p ≈ 0.001 over the cells with non-zero expectation."""
    from scipy import stats  # noqa: PLC0415 - scipy is a test dependency only

    keep = probs > 0
    expected = probs[keep] * counts.sum()
    statistic = ((counts[keep] - expected) ** 2 / expected).sum()
    return statistic < stats.chi2.ppf(0.999, df=keep.sum() - 1)


def draw(probs: np.ndarray, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    batch = np.repeat(probs, DRAWS, axis=0)  # [N, V]: one row per draw
    return np.bincount(sample(batch, rng), minlength=probs.shape[-1])


def expected(temperature=1.0, top_k=None, top_p=1.0) -> np.ndarray:
    """The distribution written out by hand: scale, keep the k best, keep the nucleus."""
    scores = LOGITS[0] / temperature
    order = np.argsort(-scores)
    keep = np.zeros_like(scores, dtype=bool)
    keep[order[: top_k or len(scores)]] = True
    p = np.where(keep, np.exp(scores), 0)
    p /= p.sum()
    mass, nucleus = 0.0, np.zeros_like(keep)
    for i in np.argsort(-p):
        if mass >= top_p:
            break
        nucleus[i], mass = True, mass + p[i]
    p = np.where(nucleus, p, 0)
    return p / p.sum()


@pytest.mark.parametrize(
    "settings",
    [
        dict(),
        dict(temperature=0.5),
        dict(temperature=2.0),
        dict(top_k=3),
        dict(top_p=0.8),
        dict(temperature=1.5, top_k=5, top_p=0.9),
    ],
    ids=["plain", "cold", "hot", "top_k", "top_p", "combined"],
)
def test_sampled_frequencies_match_the_distribution(settings):
    probs = logits_to_probs(LOGITS, **settings)
    np.testing.assert_allclose(probs[0], expected(**settings), rtol=2e-6, atol=1e-8)  # float32
    counts = draw(probs)
    assert chi_square_ok(counts, probs[0])
    assert counts[probs[0] == 0].sum() == 0


def test_top_k_never_emits_outside_the_k_best():
    rng = np.random.default_rng(1)
    logits = rng.normal(size=(64, 1000))
    picks = sample(logits_to_probs(logits, top_k=5), rng)
    best = np.argsort(-logits, axis=-1)[:, :5]
    assert all(p in row for p, row in zip(picks, best, strict=True))


def test_top_p_keeps_the_smallest_set_reaching_p():
    probs = np.array([[0.5, 0.3, 0.15, 0.05]])
    np.testing.assert_allclose(apply_top_p(probs, 0.8), [[0.625, 0.375, 0, 0]])  # 0.5+0.3 ≥ 0.8
    np.testing.assert_allclose(apply_top_p(probs, 0.81), [[0.5, 0.3, 0.15, 0]] / np.float64(0.95))
    np.testing.assert_allclose(apply_top_p(probs, 1e-6), [[1, 0, 0, 0]])  # never empty


def test_top_k_one_equals_greedy():
    rng = np.random.default_rng(2)
    logits = rng.normal(size=(32, 500))
    picks = sample(logits_to_probs(logits, temperature=0.7, top_k=1), rng)
    assert (picks == greedy(logits)).all()


def test_softmax_rows_sum_to_one_with_masked_entries():
    scores = np.array([[0.0, -np.inf, 1.0], [1000.0, 999.0, -np.inf]])
    probs = softmax(scores)
    np.testing.assert_allclose(probs.sum(-1), 1.0)
    assert probs[0, 1] == 0 and probs[1, 2] == 0


@pytest.mark.parametrize(
    "temperature, top_k, top_p",
    [(1.0, 50, 1.0), (0.8, 0, 0.9), (0.7, 40, 0.95), (1.3, 0, 0.5), (1.0, 1, 1.0), (2.0, 0, 1.0)],
)
@pytest.mark.parametrize("shape", ["flat", "peaked", "ties"])
@pytest.mark.parametrize("native", ["1", "0"], ids=["native", "numpy"])
def test_fast_path_keeps_the_reference_support_and_draws(
    temperature, top_k, top_p, shape, native, monkeypatch
):
    """`sample_row` (the loop's path: thresholds, partial sorts) keeps exactly the ids and
    probabilities the whole-vocabulary reference keeps, and draws what it draws from one RNG
    state — on flat (random-weight) and peaked (trained) logits, and with tied values; with the
    native helpers and with their numpy fallback."""
    monkeypatch.setenv(kernels.SWITCH, native)
    rng = np.random.default_rng(7)
    for _ in range(20):
        logits = rng.standard_normal(5000).astype(np.float32)
        logits *= {"flat": 1.0, "peaked": 12.0, "ties": 1.0}[shape]
        if shape == "ties":
            logits = np.round(logits, 1)  # many equal values, also at the nucleus boundary
        reference = logits_to_probs(logits[None], temperature, top_k, top_p)[0]
        ids, probs = support(logits, temperature, top_k, top_p)
        assert np.array_equal(ids, np.flatnonzero(reference))
        np.testing.assert_allclose(probs, reference[ids], rtol=1e-5)
        seed = int(rng.integers(1 << 30))
        fast = sample_row(logits, np.random.default_rng(seed), temperature, top_k, top_p)
        full = sample(reference[None], np.random.default_rng(seed))[0]
        assert fast == full


def adversarial_rows(rng: np.random.Generator):
    """Rows the selection code must not get wrong: ties (also at the cut), zeros, −0, −inf, one
    huge value, values across 40 decades, tiny and single-element rows."""
    yield np.round(rng.standard_normal(3000), 1)
    yield np.zeros(100)
    yield np.array([0.0, -0.0, 1.0, -1.0, -0.0, 0.0] * 50)
    yield np.where(rng.random(2000) < 0.5, -np.inf, rng.standard_normal(2000))
    yield np.concatenate([[1e30], rng.random(500)])
    yield rng.standard_normal(4000) * 10.0 ** rng.uniform(-20, 20, 4000)
    yield rng.random(3)
    yield np.array([0.25])
    for _ in range(40):
        yield rng.standard_normal(int(rng.integers(1, 6000))) * rng.uniform(0.01, 30)


def test_native_helpers_compute_what_the_numpy_code_computes():
    """The C helpers (radix sort and selection, sequential float32 sums) give the numpy code's
    results bit for bit: the same kept positions, k-th largest value, CDF total and draw."""
    helpers = kernels.sampling()
    assert helpers is not None, "ortgen's native library is not built: install a C compiler"
    rng = np.random.default_rng(11)
    for row in adversarial_rows(rng):
        scores = row.astype(np.float32)
        for k in {1, min(2, len(scores)), len(scores) // 3 + 1, len(scores)}:
            want = np.partition(scores, len(scores) - k)[len(scores) - k]
            assert helpers.kth_largest(scores, k) == want
        finite = np.nan_to_num(scores, neginf=-50.0, posinf=50.0)
        probs = np.exp(np.minimum(finite - finite.max(), 0)).astype(np.float32)
        probs /= probs.sum()
        for top_p in (1e-6, 0.3, 0.9, 0.999, 1.0):
            want = sampling._nucleus_numpy(probs, np.float32(top_p))
            assert np.array_equal(helpers.nucleus(probs, np.float32(top_p)), want)
        cdf = np.cumsum(probs)
        assert helpers.cdf_last(probs) == cdf[-1]
        for u in (np.float32(0), cdf[0], cdf[-1] * np.float32(rng.random()), cdf[-1]):
            assert helpers.cdf_search(probs, u) == np.searchsorted(cdf, u, side="right")
