import numpy as np
import pytest

from xmdpt.metrics.stats import UNDECIDED, paired_comparison


def test_a_consistent_shift_is_decided_for_the_better_side_in_either_direction():
    rng = np.random.default_rng(0)
    b = rng.uniform(0.2, 0.8, 40)
    a = b + 0.05 + rng.normal(0, 0.01, 40)  # a is larger on every pair
    up = paired_comparison(a, b, names=("guided", "cond_only"), higher_is_better=True)
    assert up["better"] == "guided" and up["n"] == 40
    assert 0.04 < up["ci"][0] < up["diff"] < up["ci"][1] < 0.06
    assert up["mean_guided"] == pytest.approx(a.mean()) and up["mean_cond_only"] == pytest.approx(b.mean())
    # the same numbers as errors (lower is better): the other side wins
    down = paired_comparison(a, b, names=("guided", "cond_only"), higher_is_better=False)
    assert down["better"] == "cond_only" and down["ci"] == up["ci"]


def test_noise_larger_than_the_shift_is_undecided_and_pairing_matters():
    rng = np.random.default_rng(1)
    person = rng.uniform(0.0, 1.0, 32)  # per-pair difficulty, shared by both sides
    a = person + 0.02 + rng.normal(0, 0.2, 32)
    b = person + rng.normal(0, 0.2, 32)
    assert paired_comparison(a, b, names=("a", "b"), higher_is_better=True)["better"] == UNDECIDED
    # a small shift on pairs that differ a lot from each other is decided because the comparison is paired
    c = person + 0.02
    res = paired_comparison(c, person, names=("a", "b"), higher_is_better=True)
    assert res["better"] == "a" and res["ci"][0] == pytest.approx(0.02) and res["ci"][1] == pytest.approx(0.02)


def test_missing_values_drop_the_pair_and_too_few_pairs_give_none():
    res = paired_comparison([1.0, None, 3.0, float("nan"), 5.0], [0.0, 1.0, 2.0, 3.0, None],
                            names=("model", "source_image"), higher_is_better=True)
    assert res["n"] == 2 and res["diff"] == pytest.approx(1.0)
    assert paired_comparison([1.0, None], [0.0, 1.0], names=("a", "b"), higher_is_better=True) is None
    # seeded: the interval is reproducible
    a, b = np.arange(10.0), np.arange(10.0)[::-1]
    assert paired_comparison(a, b, names=("a", "b"), higher_is_better=True) == \
        paired_comparison(a, b, names=("a", "b"), higher_is_better=True)


def test_bad_arguments_are_rejected():
    with pytest.raises(ValueError, match="align"):
        paired_comparison([1.0, 2.0], [1.0], names=("a", "b"), higher_is_better=True)
    with pytest.raises(ValueError, match="distinct"):
        paired_comparison([1.0, 2.0], [1.0, 2.0], names=("a", "a"), higher_is_better=True)
    with pytest.raises(ValueError, match="level"):
        paired_comparison([1.0, 2.0], [1.0, 2.0], names=("a", "b"), higher_is_better=True, level=1.5)


def test_gap_closed_is_one_at_the_floor_zero_at_the_baseline_and_its_interval_brackets_it():
    from xmdpt.metrics.stats import gap_closed

    rng = np.random.default_rng(0)
    other = rng.uniform(0.3, 0.5, 60)
    floor = rng.uniform(0.0, 0.05, 60)
    assert gap_closed(floor, other, floor)["share"] == pytest.approx(1.0)
    assert gap_closed(other, other, floor)["share"] == pytest.approx(0.0)
    model = floor + 0.25 * (other - floor) + rng.normal(0, 0.02, 60)  # closes about 75 % of the gap
    res = gap_closed(model, other, floor)
    assert res["n"] == 60 and 0.7 < res["share"] < 0.8
    assert res["ci"][0] < res["share"] < res["ci"][1] and res["ci"][1] - res["ci"][0] < 0.15
    assert res["mean_floor"] == pytest.approx(floor.mean()) and res["mean_baseline"] == pytest.approx(other.mean())
    # a pair missing any of the three is left out; no gap (floor at or above the baseline) gives None
    assert gap_closed([0.1, None, 0.2], [0.4, 0.4, 0.5], [0.0, 0.0, 0.0])["n"] == 2
    assert gap_closed([0.1, 0.2], [0.1, 0.1], [0.2, 0.2]) is None
    with pytest.raises(ValueError, match="align"):
        gap_closed([0.1], [0.2, 0.3], [0.0])
