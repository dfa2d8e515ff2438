"""The study's report: known per-seed results in, the table and paired comparison out."""

from __future__ import annotations

import pytest

from problems.lease.study import (
    StudyRun,
    detectable_difference,
    paired_difference,
    pooled_std,
    retraining_table,
    seeds_needed,
    study_table,
    t_critical,
)
from problems.nas.genotype import Genotype, random_genotype


def result(method: str, seed: int, error: float, params: float = 0.5, seconds: float = 10.0):
    return {
        "method": method,
        "seed": seed,
        "test_error": error,
        "params_millions": params,
        "search_seconds": seconds,
    }


RESULTS = [
    result("darts", 0, 0.030),
    result("darts", 1, 0.034),
    result("darts", 2, 0.032),
    result("lease", 0, 0.020, seconds=20.0),
    result("lease", 1, 0.022, seconds=30.0),
    result("lease", 2, 0.021, seconds=40.0),
    result("random", 0, 0.040, params=0.4, seconds=0.0),
    result("random", 1, 0.020, params=0.6, seconds=0.0),
    result("random", 2, 0.036, params=0.5, seconds=0.0),
]


def test_table_has_means_and_sample_stds_per_method():
    table = study_table(RESULTS)
    assert "| darts | 3 | 3.00, 3.40, 3.20 | 3.20 ± 0.20 | 0.500 ± 0.000 | 10 ± 0 |" in table
    assert "| lease | 3 | 2.00, 2.20, 2.10 | 2.10 ± 0.10 | 0.500 ± 0.000 | 30 ± 10 |" in table
    assert "| random | 3 | 4.00, 2.00, 3.60 | 3.20 ± 1.06 | 0.500 ± 0.100 | 0 ± 0 |" in table
    # per-seed errors are listed in seed order, whatever the order of the results
    assert "| darts | 3 | 3.00, 3.40, 3.20 |" in study_table(RESULTS[::-1])


def test_paired_difference_and_verdicts():
    lease = paired_difference(RESULTS, "lease")
    assert lease["seeds"] == [0, 1, 2]
    assert lease["mean"] == pytest.approx(-1.1) and lease["std"] == pytest.approx(0.1)
    assert lease["verdict"] == "lower error than darts"
    random = paired_difference(RESULTS, "random")
    assert random["mean"] == pytest.approx(0.0, abs=1e-12)
    assert random["verdict"] == "within noise"
    table = study_table(RESULTS)
    # t = -1.1 / (0.1 / √3); interval -1.1 ± 4.303 · 0.1 / √3; power at 3 seeds:
    # (4.303 + 1.061) · std / √3; seeds for 0.3 points at that spread
    assert lease["t"] == pytest.approx(-1.1 / (0.1 / 3**0.5))
    assert lease["interval"] == pytest.approx((-1.1 - 0.24844, -1.1 + 0.24844), abs=1e-5)
    assert (
        "| lease | 3 | -1.10 ± 0.10 | -19.05 (4.30) | -1.35 to -0.85 | lower error than darts "
        "| 0.31 | 4 |" in table
    )
    assert (
        "| random | 3 | +0.00 ± 1.25 | +0.00 (4.30) | -3.10 to +3.10 | within noise "
        "| 3.87 | 138 |" in table
    )
    one = paired_difference(RESULTS[:1] + RESULTS[3:4], "lease")
    assert one["verdict"] == "one seed: no spread to judge by"
    assert one["t"] is None and one["interval"] is None
    one_row = "| lease | 1 | -1.00 ± 0.00 | — | — | one seed"
    assert one_row in study_table(RESULTS[:1] + RESULTS[3:4])
    assert paired_difference(RESULTS[3:], "lease") is None


def test_random_genotype_is_seeded_and_valid():
    first, again, other = random_genotype(0), random_genotype(0), random_genotype(1)
    assert first == again and first != other
    assert Genotype.model_validate(first.model_dump()) == first
    for cell in (first.normal, first.reduce):
        for node in range(4):
            a, b = cell[2 * node][1], cell[2 * node + 1][1]
            assert a != b and max(a, b) < 2 + node


def test_methods_map_to_their_search_settings(tmp_path):
    study = StudyRun(out=tmp_path)
    sign = study.search_config("lease-sign", 1, resume=False)
    assert not sign.lease.explanation.differentiable and sign.seed == 1
    assert study.search_config("lease-saliency", 0, False).lease.explanation.method == "saliency"
    author = study.search_config("lease-author", 0, False).lease
    assert author.author_setting and author.explanation.steps == 1
    assert study.search_config("darts", 0, False).baseline == "darts"
    assert study.search_config("lease", 2, True).out == tmp_path / "lease" / "seed2" / "search"


def test_power_follows_the_t_quantiles_and_the_noncentral_t():
    assert t_critical(4) == 2.776 and t_critical(9) == 2.262
    assert t_critical(60) == pytest.approx(2.000, abs=2e-3)  # past the table
    # (2.776 + 0.941) · 0.3 / √5 and (2.262 + 0.883) · 0.3 / √10
    assert detectable_difference(0.3, 5) == pytest.approx(3.717 * 0.3 / 5**0.5)
    assert detectable_difference(0.3, 10) == pytest.approx(3.145 * 0.3 / 10**0.5)
    assert seeds_needed(0.3, 0.3) == 10  # 9 seeds detect 0.3195, 10 detect 0.2984
    assert seeds_needed(10.0, 0.01) is None
    # against the exact power of the two-sided paired t-test (noncentral t)
    stats = pytest.importorskip("scipy.stats", reason="the exact check needs scipy")
    for seeds, lowest in ((3, 0.76), (5, 0.79), (10, 0.795), (40, 0.799)):
        dof, delta = seeds - 1, detectable_difference(1.0, seeds)
        crit, shift = stats.t.ppf(0.975, dof), delta * seeds**0.5
        power = 1 - stats.nct.cdf(crit, dof, shift) + stats.nct.cdf(-crit, dof, shift)
        assert lowest <= power <= 0.81


def test_t_statistic_and_interval_match_scipy():
    stats = pytest.importorskip("scipy.stats", reason="the check against scipy needs scipy")
    darts = [0.1022, 0.1045, 0.1087, 0.0980, 0.1011]
    lease = [0.1002, 0.0990, 0.0949, 0.1009, 0.0987]
    results = [result("darts", s, e) for s, e in enumerate(darts)]
    results += [result("lease", s, e) for s, e in enumerate(lease)]
    pair = paired_difference(results, "lease")
    diffs = [100 * (a - b) for a, b in zip(lease, darts)]
    expected = stats.ttest_rel([100 * e for e in lease], [100 * e for e in darts])
    assert pair["t"] == pytest.approx(expected.statistic, rel=1e-12)
    mean, sem = stats.tmean(diffs), stats.sem(diffs)
    low, high = stats.t.interval(0.95, len(diffs) - 1, loc=mean, scale=sem)
    # the table's t quantiles have three decimals: 2.776 against 2.7764451...
    assert pair["interval"] == pytest.approx((low, high), abs=1e-3 * sem)
    assert (pair["verdict"] == "within noise") == (expected.pvalue > 0.05)
    # a difference that does not spread (exact in binary) has no t statistic, only an
    # interval of width 0
    exact = [0.125, 0.25, 0.375, 0.5, 0.625]
    constant = [result("darts", s, e) for s, e in enumerate(exact)]
    constant += [result("lease", s, e - 0.0625) for s, e in enumerate(exact)]
    flat = paired_difference(constant, "lease")
    assert flat["std"] == 0.0 and flat["t"] is None
    assert flat["interval"] == (-6.25, -6.25) and flat["verdict"] == "lower error than darts"


def test_pooled_std_removes_each_groups_mean():
    # (1, 3) around 2 and (2, 4, 6) around 4: squares 2 + 8 on 1 + 2 degrees of freedom
    assert pooled_std([[1.0, 3.0], [2.0, 4.0, 6.0], [5.0]]) == (pytest.approx((10 / 3) ** 0.5), 3)
    assert pooled_std([[5.0], []]) == (0.0, 0)


def test_retraining_table_splits_the_paired_variance():
    # darts seed 0's cell: 3.00 % from its own seed, 3.20 % from seed 100: σ = 0.1414 on
    # one degree of freedom, so two retrainings give a paired difference 2σ² = 0.04
    table = retraining_table(RESULTS, {("darts", 0): {100: 0.032}})
    assert "| darts seed 0 | 3.00 | 3.20 (seed 100) | 0.14 |" in table
    assert "0.14 points (1 degree of freedom)" in table and "2σ² = 0.04" in table
    # lease's differences spread 0.1 (variance 0.01 < 0.04): all of it is the retraining's,
    # and 3 retrainings leave √(0.04 / 3) = 0.115, which 3 seeds detect at
    # (4.303 + 1.061) · 0.115 / √3 = 0.36 and 0.3 needs 4 seeds ((3.182 + 0.978) · 0.115 / 2)
    assert "| lease | 0.01 | 100 % | 0.12 | 0.36 | 4 |" in table
    # random's spread 1.249 (variance 1.56): 3 % is the retraining's; √(1.56 − 0.04 + 0.04 / 3)
    assert "| random | 1.56 | 3 % | 1.24 |" in table
    lonely = retraining_table(RESULTS, {("lease", 7): {100: 0.02}})
    assert "| lease seed 7 | — | 2.00 (seed 100) | — |" in lonely
    assert "No cell has two retrainings yet" in lonely
