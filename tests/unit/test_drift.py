"""Drift math (common/drift.py): bins, counts, PSI/JS, the noise level and the verdict."""

import json
import time

import numpy as np
import pytest
from inferq.common import drift


# ----- bins and counts --------------------------------------------------------------------
def test_numeric_counts_put_edges_up_nan_in_missing_inf_outside():
    fb = drift.numeric_bins("x", np.arange(100.0), n_bins=4)  # edges at data values
    assert fb.edges == (25.0, 50.0, 75.0)
    assert fb.labels() == ["< 25", "[25, 50)", "[50, 75)", ">= 75", "missing"]
    values = np.array([0, 24.9, 25, 49, 50, 75, 99, 1e9, np.inf, -np.inf, np.nan, np.nan])
    counts = drift.bin_counts(fb, values)
    assert counts.tolist() == [3, 2, 1, 4, 2]  # -inf low, 25 -> [25, 50), +inf high
    assert counts.dtype == np.int64 and counts.sum() == len(values)
    # Same counts from a list and from a strided column of a row-major block.
    block = np.column_stack([values, values])
    assert drift.bin_counts(fb, block[:, 1]).tolist() == counts.tolist()
    assert drift.bin_counts(fb, values.tolist()).tolist() == counts.tolist()


def test_counts_match_searchsorted_for_many_bins_too():
    rng = np.random.default_rng(0)
    ref = rng.normal(size=3000)
    for n_bins in (10, 50):  # 50 bins: the binary-search path
        fb = drift.numeric_bins("x", ref, n_bins)
        y = np.r_[rng.normal(size=500), fb.edges, np.nan, np.inf]
        want = np.searchsorted(np.array(fb.edges), y, side="right")
        want[np.isnan(y)] = fb.n_bins - 1
        assert drift.bin_counts(fb, y).tolist() == np.bincount(want, minlength=fb.n_bins).tolist()


def test_reference_shares_and_nan():
    x = np.r_[np.random.default_rng(1).normal(size=990), [np.nan] * 10]
    fb = drift.numeric_bins("x", x)
    assert fb.n_bins == 11 and len(fb.ref_share) == 11
    assert sum(fb.ref_share) == pytest.approx(1.0)
    assert fb.ref_share[-1] == pytest.approx(0.01)
    assert min(fb.ref_share[:-1]) > 0.09  # quantile bins hold ~10% each


def test_few_distinct_values_give_fewer_bins_and_none_empty():
    flags = np.array([0.0] * 70 + [1.0] * 30)  # a boolean feature, as 0/1
    fb = drift.numeric_bins("flag", flags)
    assert fb.edges == (1.0,)
    assert fb.ref_share == pytest.approx((0.7, 0.3, 0.0))
    const = drift.numeric_bins("c", np.full(50, 3.0))  # any change from 3 must be seen
    assert drift.bin_counts(const, [2.0, 3.0, 3.0, 4.0]).tolist() == [1, 2, 1, 0]
    zeros = drift.numeric_bins("z", np.r_[np.zeros(95), np.arange(1.0, 6.0)])  # 95% zero
    assert zeros.ref_share == pytest.approx((0.0, 0.95, 0.05, 0.0))
    empty = drift.numeric_bins("e", np.full(5, np.nan))
    assert empty.labels() == ["any value", "missing"]
    assert drift.bin_counts(empty, [1.0, np.nan]).tolist() == [1, 1]


def test_categorical_counts_unknown_missing_and_numbers_given_for_text():
    values = ["b", "a", "b", "c", "a", "b", None, "d"]
    fb = drift.categorical_bins("city", values, top_k=2)
    assert fb.categories == ("b", "a")  # most frequent first
    assert fb.labels() == ["b", "a", "other", "missing"]
    assert fb.ref_share == pytest.approx((3 / 8, 2 / 8, 2 / 8, 1 / 8))
    window = ["a", "zz", None, float("nan"), np.nan, "b", 7, ["unhashable"]]
    counts = drift.bin_counts(fb, window)
    assert counts.tolist() == [1, 1, 3, 3]
    assert counts.sum() == len(window)
    nums = drift.categorical_bins("code", [7, 7, 8])  # categories are text
    assert nums.categories == ("7", "8")
    assert drift.bin_counts(nums, ["7", 8, np.array(["8"], dtype=object)[0]]).tolist() == [
        1,
        2,
        0,
        0,
    ]


def test_categorical_ties_are_broken_by_text():
    fb = drift.categorical_bins("c", ["z", "y", "x", "x", "y", "z", "w"], top_k=3)
    assert fb.categories == ("x", "y", "z")


def test_bin_counts_5000_rows_by_20_features_is_fast():
    rng = np.random.default_rng(2)
    x = rng.normal(size=(5000, 10))  # row-major, as a batch's float block
    text = [rng.choice([f"c{i}" for i in range(30)], 5000).tolist() for _ in range(10)]
    num = [drift.numeric_bins(f"n{j}", x[:, j]) for j in range(10)]
    cat = [drift.categorical_bins(f"t{j}", text[j]) for j in range(10)]

    def once():
        for j, fb in enumerate(num):
            drift.bin_counts(fb, x[:, j])
        for j, fb in enumerate(cat):
            drift.bin_counts(fb, text[j])

    best = min(_timed(once) for _ in range(20))
    print(f"bin_counts 5000 rows x (10 numeric + 10 text): {best * 1000:.2f} ms")
    # Measured ~2.7 ms here (numeric ~45 us/column, text ~220 us); the bound only catches a
    # per-row Python loop (~10x), not machine noise.
    assert best < 0.015


def _timed(fn):
    started = time.perf_counter()
    fn()
    return time.perf_counter() - started


# ----- PSI, JS and the noise level --------------------------------------------------------
def test_psi_and_js_basics():
    ref = [0.25, 0.25, 0.25, 0.25]
    assert drift.psi(ref, [25, 25, 25, 25]) == pytest.approx(0.0)
    assert drift.js_distance(ref, [25, 25, 25, 25]) == pytest.approx(0.0)
    assert drift.psi(ref, [0, 0, 0, 0]) == 0.0  # no rows: nothing to compare
    moved = drift.psi(ref, [100, 0, 0, 0])
    assert np.isfinite(moved) and moved > 1
    assert drift.js_distance([1.0, 0.0], [0, 10]) == pytest.approx(1.0)  # disjoint: 1 bit
    assert 0 < drift.js_distance(ref, [40, 20, 20, 20]) < 0.05
    # PSI is symmetric in its two shares.
    assert drift.psi([0.4, 0.6], [60, 40]) == pytest.approx(drift.psi([0.6, 0.4], [40, 60]))


def _no_drift_windows(n, m, windows, rng):
    """PSI and verdict of ``windows`` windows of ``n`` rows against fresh m-row references,
    all from one distribution (a numeric feature, 10 bins)."""
    psis, flagged = [], 0
    for _ in range(windows):
        fb = drift.numeric_bins("x", rng.normal(size=m))
        value = drift.psi(fb.ref_share, drift.bin_counts(fb, rng.normal(size=n)))
        psis.append(value)
        flagged += drift.verdict(value, n, m, fb.n_bins) in ("warn", "drift")
    return np.array(psis), flagged / windows


@pytest.mark.parametrize("m", [100, 5000])
def test_no_drift_raw_psi_often_above_0_1_but_verdict_rarely_flags(m):
    rng = np.random.default_rng(3)
    small, small_flags = _no_drift_windows(100, m, 200, rng)
    _, large_flags = _no_drift_windows(5000, m, 200, rng)
    share = float((small > 0.1).mean())
    print(f"m={m}: psi > 0.1 in {share:.0%} of 100-row windows; flagged "
          f"{small_flags:.1%} (100 rows), {large_flags:.1%} (5000 rows)")  # fmt: skip
    # Measured: ~85% against a 100-row reference, ~40% against 5,000 rows; flags 0-2.5%.
    assert share > (0.5 if m == 100 else 0.25)
    assert small_flags <= 0.03 and large_flags <= 0.03


def test_no_drift_categorical_rarely_flags():
    rng = np.random.default_rng(4)
    cats, p = np.array(list("abcde")), [0.2] * 5
    fb = drift.categorical_bins("c", rng.choice(cats, 5000, p=p).tolist())
    for n in (100, 5000):
        flags = sum(
            drift.verdict(drift.psi(fb.ref_share, drift.bin_counts(fb, w)), n, 5000, fb.n_bins)
            != "ok"
            for w in (rng.choice(cats, n, p=p).tolist() for _ in range(200))
        )
        assert flags <= 6  # 3%


def test_real_shifts_are_flagged():
    rng = np.random.default_rng(5)
    fb = drift.numeric_bins("x", rng.normal(size=5000))
    counts = drift.bin_counts(fb, rng.normal(0.5, 1.0, size=5000))  # mean + 0.5 sd
    value = drift.psi(fb.ref_share, counts)
    assert drift.verdict(value, 5000, 5000, fb.n_bins) in ("warn", "drift")
    cats = np.array(list("abcde"))
    cb = drift.categorical_bins("c", rng.choice(cats, 5000, p=[0.2] * 5).tolist())
    moved = rng.choice(cats, 5000, p=[0.5, 0.125, 0.125, 0.125, 0.125]).tolist()  # a: 20 -> 50%
    value = drift.psi(cb.ref_share, drift.bin_counts(cb, moved))
    assert drift.verdict(value, 5000, 5000, cb.n_bins) in ("warn", "drift")


def test_too_few_rows_and_small_windows_need_psi_above_noise():
    assert drift.verdict(5.0, 29, 5000, 11) == "too few rows"
    assert drift.min_rows(11) == 100  # 10 rows per value bin
    assert drift.verdict(5.0, 99, 5000, 11) == "too few rows"
    # 0.2 > PSI_WARN but below the noise of 100 rows (~0.24): not a flag.
    assert drift.psi_noise(100, 5000, 11) > 0.2
    assert drift.verdict(0.2, 100, 5000, 11) == "ok"
    assert drift.verdict(0.2, 5000, 5000, 11) == "warn"
    assert drift.verdict(0.3, 5000, 5000, 11) == "drift"
    assert drift.verdict(0.05, 100_000, 5000, 11) == "ok"  # above noise, below 0.1


def test_psi_noise_matches_a_simulation():
    rng = np.random.default_rng(6)
    n, m, sims = 1000, 5000, 1000
    psis = []
    for _ in range(sims):
        ref = rng.normal(size=m)
        ref[rng.random(m) < 0.05] = np.nan  # so the missing bin is live: B = 11
        window = rng.normal(size=n)
        window[rng.random(n) < 0.05] = np.nan
        fb = drift.numeric_bins("x", ref)
        psis.append(drift.psi(fb.ref_share, drift.bin_counts(fb, window)))
    assert fb.n_bins == 11
    simulated, formula = float(np.quantile(psis, 0.99)), drift.psi_noise(n, m, 11)
    print(f"99th percentile of PSI: simulated {simulated:.4f}, formula {formula:.4f}")
    assert simulated == pytest.approx(formula, rel=0.3)
    assert float(np.mean(psis)) == pytest.approx((1 / n + 1 / m) * 10, rel=0.15)


# ----- confidence and calibration ---------------------------------------------------------
def test_confidence_of_matrices_and_binary_probabilities():
    assert drift.confidence(np.array([[0.2, 0.5, 0.3], [0.9, 0.05, 0.05]])).tolist() == [0.5, 0.9]
    assert drift.confidence(np.array([0.2, 0.5, 0.9])) == pytest.approx([0.8, 0.5, 0.9])


def test_calibrate_interpolates_and_clips():
    cal = {"x": [0.5, 0.8, 1.0], "y": [0.4, 0.7, 0.95]}
    got = drift.calibrate(cal, np.array([0.3, 0.5, 0.65, 1.0, 1.2]))
    assert got == pytest.approx([0.4, 0.4, 0.55, 0.95, 0.95])
    assert drift.calibrate(None, np.array([0.5])) is None


def test_baseline_json_round_trip():
    rng = np.random.default_rng(7)
    base = drift.Baseline(
        features=(
            drift.numeric_bins("age", np.r_[rng.normal(40, 9, 500), np.nan]),
            drift.categorical_bins("city", ["lyon", "oslo", None, "oslo"]),
        ),
        output=drift.numeric_bins(drift.OUTPUT, rng.random(500)),
        ref_rows=501,
        calibration={"x": [0.5, 1.0], "y": [0.55, 0.97]},
    )
    doc = json.loads(json.dumps(base.to_json()))
    back = drift.Baseline.from_json(doc)
    assert back == base
    assert back.feature("city").categories == ("oslo", "lyon")
    assert back.feature(drift.OUTPUT) is back.output
    assert back.feature("nope") is None
    assert drift.bin_counts(back.feature("age"), [40.0]).sum() == 1  # caches rebuilt
    no_output = drift.Baseline((), None, 0, None)
    assert drift.Baseline.from_json(json.loads(json.dumps(no_output.to_json()))) == no_output


def test_bins_refuse_shares_of_the_wrong_length():
    with pytest.raises(ValueError, match="3 reference shares for 4 bins"):
        drift.FeatureBins("x", "numeric", edges=(1.0, 2.0), ref_share=(0.5, 0.3, 0.2))
