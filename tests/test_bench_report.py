"""bench.report's arithmetic: a ratio compares measurements made side by side (the same round), and
a goal's row says whether it holds at the precision that decides it."""

from __future__ import annotations

from bench.report import goal_lines, goals, ratio, scaling


def runs(*values: float) -> list[dict]:
    return [{"value": v, "peak_rss_mb": 200.0} for v in values]


def test_a_ratio_is_the_median_of_the_rounds_ratios():
    # rounds' ratios 2.0, 0.5, 0.9 → 0.9; the medians' ratio (100 / 100) would say 1.0
    results = {"mine": {"w1": runs(100, 200, 90)}, "peer": {"w1": runs(50, 400, 100)}}
    assert ratio(results, "mine", "peer", "w1") == 0.9
    # another workload of the peer, or another model's results, paired by round alike
    results["mine"]["past900"] = runs(6.0, 5.0, 12.0)
    results["mine"]["past16"] = runs(5.0, 5.0, 6.0)
    assert ratio(results, "mine", "mine", "past900", "past16") == 1.2
    other_model = {"mine": {"w1": runs(200, 100, 90)}}
    assert ratio(results, "mine", "mine", "w1", peer_results=other_model) == 1.0


def test_runs_of_unequal_counts_compare_their_medians_and_missing_sides_give_none():
    results = {"mine": {"w1": runs(100, 300)}, "peer": {"w1": runs(50, 100, 400)}}
    assert ratio(results, "mine", "peer", "w1") == 2.0
    assert ratio(results, "mine", "absent", "w1") is None
    assert ratio(results, "mine", "peer", "w2") is None


def test_the_gpt_neo_goal_holds_per_workload_with_w2_a_time():
    gpt2 = {"ortgen-int8": {"w1": runs(200, 200), "w2": runs(200, 200)}}
    neo = {"ortgen-int8": {"w1": runs(170, 170), "w2": runs(215, 215)}}
    rows = [line for line in goals(gpt2, None, None, neo) if "gpt_neo" in line]
    assert rows == [
        "| gpt_neo int8 W1 ≥ 0.9× gpt2 int8 | 0.85 | no |",
        "| gpt_neo int8 W2 ≤ 1.1× gpt2 int8 | 1.07 | yes |",
    ]


def test_a_value_next_to_its_bound_shows_the_digit_that_decides_it():
    lines = goal_lines([("share", 0.598, 0.6, True), ("speed", 1.54, 1.5, True)])
    assert lines[2:] == ["| share | 0.598 | no |", "| speed | 1.54 | yes |"]


def test_flatness_is_the_alternated_measurement_where_a_run_has_it():
    """The past 900 ÷ past 16 goal: the rounds' median of the one-process alternated ratio; older
    results without it: the separate processes' per-round ratio."""
    results = {"ortgen-int8": {"past16": runs(4.0, 4.0, 4.0), "past900": runs(6.0, 4.0, 5.2)}}
    assert scaling(results)[1] == 1.3
    results["ortgen-int8"]["flat"] = runs(1.1, 1.3, 1.15)
    lines, flat = scaling(results)
    assert flat == 1.15
    assert "alternated in one process (32 each): 1.15 (1.10–1.30)" in lines[-1]
    assert lines[-1].endswith("from the separate processes above: 1.30.")
