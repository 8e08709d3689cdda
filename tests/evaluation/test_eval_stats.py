"""Ranking schemes and tests against hand-worked examples and scipy."""

from __future__ import annotations

import math

import numpy as np
import pytest
from scipy import stats

from autoseg.evaluation.ranking import (
    aggregate_then_rank,
    bootstrap_ranks,
    consensus,
    mean_statistic,
    pooled_iou_statistic,
    rank_frequencies,
    rank_interval,
    rank_then_aggregate,
    rank_values,
    test_based_ranking,
)
from autoseg.evaluation.stats import (
    cd_cliques,
    friedman,
    holm,
    kendall_tau,
    kendall_tau_test,
    nemenyi_critical_difference,
    pairwise_wilcoxon,
)


def test_rank_values_direction_and_ties():
    assert rank_values([0.9, 0.5, 0.9]).tolist() == [1.5, 3.0, 1.5]
    assert rank_values([3.0, 1.0, 2.0], higher_is_better=False).tolist() == [3.0, 1.0, 2.0]
    assert rank_values([0.2, np.nan, 0.1]).tolist() == [1.0, 3.0, 2.0]  # NaN last


def test_aggregate_then_rank_and_rank_then_aggregate_disagree_by_hand():
    # A wins two cases narrowly and loses one badly; B is steady. Means: A 0.6, B 0.8 -> B first.
    # Per-case ranks: A 1, 1, 2 (mean 4/3); B 2, 2, 1 (mean 5/3) -> A first.
    scores = np.array([[0.9, 0.8], [0.9, 0.8], [0.0, 0.8]])
    assert aggregate_then_rank(scores).tolist() == [2.0, 1.0]
    assert rank_then_aggregate(scores).tolist() == [1.0, 2.0]
    # median aggregation: A 0.9, B 0.8 -> A first
    assert aggregate_then_rank(scores, aggregate="median").tolist() == [1.0, 2.0]
    # HD95-like, lower is better: negating the scores flips every ranking
    assert aggregate_then_rank(-scores, higher_is_better=False).tolist() == [2.0, 1.0]


def test_holm_by_hand():
    # sorted 0.01, 0.03, 0.04 -> 3*0.01, 2*0.03, max(1*0.04, 0.06)
    assert holm([0.01, 0.04, 0.03]) == pytest.approx([0.03, 0.06, 0.06])
    assert holm([0.5, 0.9]) == pytest.approx([1.0, 1.0])  # 2*0.5 capped at 1; 0.9 raised to keep the order
    out = holm([np.nan, 0.02])
    assert math.isnan(out[0]) and out[1] == pytest.approx(0.02)


def test_pairwise_wilcoxon_matches_scipy_and_holm():
    rng = np.random.default_rng(0)
    scores = rng.random((12, 3))
    scores[:, 0] += 1.0  # method 0 better on every case
    t = pairwise_wilcoxon(scores)
    raw = [stats.wilcoxon(scores[:, i] - scores[:, j]).pvalue for i, j in [(0, 1), (0, 2), (1, 2)]]
    assert [t.p[0, 1], t.p[0, 2], t.p[1, 2]] == pytest.approx(raw)
    assert [t.p_holm[0, 1], t.p_holm[0, 2], t.p_holm[1, 2]] == pytest.approx(holm(raw))
    # exact two-sided p of 12 positive differences: 2 / 2^12; Holm over 3 pairs at most triples it
    assert t.p[0, 1] == pytest.approx(2 / 2 ** 12)
    assert t.better[0, 1] and t.better[0, 2] and not t.better[1, 0]
    assert np.allclose(t.p_holm, t.p_holm.T, equal_nan=True)


def test_identical_methods_are_not_different():
    scores = np.tile(np.linspace(0.1, 0.9, 8)[:, None], (1, 2))
    t = pairwise_wilcoxon(scores)
    assert t.p[0, 1] == 1.0 and not t.better.any()


def test_test_based_ranking_counts_significant_wins():
    rng = np.random.default_rng(1)
    base = rng.random(10)
    noise = rng.normal(0, 0.01, (10, 2))
    # clear order: best beats everyone on every case; twins indistinguishable; worst loses to all
    scores = np.stack([base + 0.5, base + noise[:, 0], base + noise[:, 1], base - 0.5], axis=1)
    ranks, wins, tests = test_based_ranking(scores)
    assert wins.tolist() == [3, 1, 1, 0]
    assert ranks.tolist() == [1.0, 2.5, 2.5, 4.0]
    # HD95-like: lower is better reverses the winner
    ranks_low, wins_low, _ = test_based_ranking(scores, higher_is_better=False)
    assert wins_low.tolist() == [0, 1, 1, 3]


def test_consensus_is_mean_rank_ranked():
    # two tasks: ranks (1,2,3) and (2,1,3) -> means 1.5, 1.5, 3 -> ranks 1.5, 1.5, 3
    assert consensus(np.array([[1, 2, 3], [2, 1, 3]])).tolist() == [1.5, 1.5, 3.0]


def test_bootstrap_dominant_method_always_first_and_seeded():
    rng = np.random.default_rng(2)
    base = rng.random((15, 1))
    e = rng.normal(0, 0.05, (15, 1))
    e -= e.mean()  # the twins have equal means: neither is better
    scores = np.concatenate([base + 0.3, base + e, base - e], 1)
    boot = bootstrap_ranks(mean_statistic(scores), 15, n_boot=1000, seed=7)
    assert boot.shape == (1000, 3)
    assert np.all(boot[:, 0] == 1.0)
    assert np.array_equal(boot, bootstrap_ranks(mean_statistic(scores), 15, n_boot=1000, seed=7))
    ci = rank_interval(boot)
    assert (ci.low[0], ci.high[0]) == (1.0, 1.0)
    # the indistinguishable pair shares ranks 2 and 3
    assert ci.low[1] == 2.0 and ci.high[1] == 3.0 and ci.low[2] == 2.0 and ci.high[2] == 3.0
    values, freq = rank_frequencies(boot)
    assert values.tolist() == [1.0, 2.0, 3.0] and freq.sum(axis=1) == pytest.approx(1.0)
    assert 0.3 < freq[1, 1] < 0.7


def test_bootstrap_resamples_cases_with_replacement_by_hand():
    # one resample of the single case 0 only: means equal its scores
    scores = np.array([[0.2, 0.9], [0.8, 0.1]])
    stat = mean_statistic(scores)
    assert stat(np.array([[0, 0]]))[0, :, 0].tolist() == [0.2, 0.9]
    assert stat(np.array([[1, 1]]))[0, :, 0].tolist() == [0.8, 0.1]
    # a task where lower is better is negated
    hd = mean_statistic(np.stack([scores, scores], 2), [True, False])
    assert hd(np.array([[0, 1]]))[0].tolist() == [[0.5, -0.5], [0.5, -0.5]]


def test_pooled_iou_statistic_sums_over_resampled_cases():
    tp = np.array([[[3]], [[1]]])  # [cases, methods, classes]
    fp = np.array([[[1]], [[0]]])
    fn = np.array([[[0]], [[2]]])
    stat = pooled_iou_statistic(tp, fp, fn)
    assert stat(np.array([[0, 1]]))[0, 0, 0] == pytest.approx(4 / 7)
    assert stat(np.array([[1, 1]]))[0, 0, 0] == pytest.approx(2 / 6)


def test_kendall_tau_by_hand_and_scipy():
    # one swapped pair out of 6: (5 concordant - 1 discordant) / 6
    assert kendall_tau([1, 2, 3, 4], [2, 1, 3, 4]) == pytest.approx(4 / 6)
    assert kendall_tau([1, 2, 3], [3, 2, 1]) == pytest.approx(-1.0)
    a, b = [1, 2.5, 2.5, 4], [1, 2, 4, 3]
    assert kendall_tau(a, b) == pytest.approx(stats.kendalltau(a, b).statistic)


def test_kendall_tau_test_exact_p_by_hand():
    # 4 methods in the same order: of the 24 orders of one ranking only 1 has tau = 1 and 1 has tau = -1, so the
    # two-sided exact p is 2 / 24; one swap (tau 2/3) is matched or beaten by 1 + 3 orders at each end: 8 / 24
    assert kendall_tau_test([1, 2, 3, 4], [1, 2, 3, 4]) == (pytest.approx(1.0), pytest.approx(2 / 24))
    assert kendall_tau_test([1, 2, 3, 4], [2, 1, 3, 4]) == (pytest.approx(4 / 6), pytest.approx(8 / 24))
    tau, p = kendall_tau_test([1.0], [2.0])
    assert np.isnan(tau) and np.isnan(p)


def test_friedman_by_hand():
    # 4 blocks all ranking the methods 1,2,3: R = (4, 8, 12); chi2 = 12*4/(3*4) * (14 - 12) = 8; p = exp(-4)
    x = np.array([[0.9, 0.5, 0.1]] * 4)
    res = friedman(x)
    assert res.statistic == pytest.approx(8.0)
    assert res.pvalue == pytest.approx(math.exp(-4))
    assert res.average_ranks.tolist() == [1.0, 2.0, 3.0]


def test_friedman_matches_scipy_with_ties():
    rng = np.random.default_rng(4)
    x = rng.integers(0, 4, (9, 4)).astype(float)  # many ties
    ours = friedman(x)
    ref = stats.friedmanchisquare(*x.T)
    assert ours.statistic == pytest.approx(ref.statistic)
    assert ours.pvalue == pytest.approx(ref.pvalue)


@pytest.mark.parametrize("k,q", [(2, 1.960), (3, 2.343), (4, 2.569), (5, 2.728), (6, 2.850), (10, 3.164)])
def test_nemenyi_cd_matches_demsar_table(k, q):
    n = 7
    assert nemenyi_critical_difference(k, n) == pytest.approx(q * math.sqrt(k * (k + 1) / (6 * n)), abs=2e-3)


def test_cd_cliques_by_hand():
    # ranks 1.0, 1.5, 2.6, 4.0 with CD 1.2: {0,1} (1.0..1.5), {1,2} (1.5..2.6); 2.6 to 4.0 > CD
    assert cd_cliques([1.0, 1.5, 2.6, 4.0], 1.2) == [[0, 1], [1, 2]]
    assert cd_cliques([4.0, 1.0], 1.0) == []
    assert cd_cliques([1.0, 1.1, 1.2], 5.0) == [[0, 1, 2]]


def test_direction_follows_the_signed_rank_sums_by_hand():
    from autoseg.evaluation.stats import _signed_rank_direction

    # differences -1, -2, +10: ranks of |d| 1, 2, 3 -> W+ = 3, W- = 3: no side; median is negative, mean positive
    assert _signed_rank_direction(np.array([-1.0, -2.0, 10.0])) == 0
    # -1, +2, +3: W+ = 2 + 3 = 5 > W- = 1
    assert _signed_rank_direction(np.array([-1.0, 2.0, 3.0, 0.0])) == 1
    assert _signed_rank_direction(np.array([0.0, np.nan])) == 0


def test_rank_interval_bounds_are_observed_ranks_by_hand():
    # 40 resamples: rank 1 in 39, rank 2 in 1; the 97.5% point lies between the 39th and 40th sorted values (position
    # 0.975 * 39 = 38.025): the bound is the higher one, 2, not the interpolated 1.025
    boot = np.array([[1.0]] * 39 + [[2.0]])
    ci = rank_interval(boot)
    assert (ci.low[0], ci.median[0], ci.high[0]) == (1.0, 1.0, 2.0)
    boot = np.array([[1.0]] * 20 + [[3.0]] * 20)
    ci = rank_interval(boot)
    assert (ci.low[0], ci.high[0]) == (1.0, 3.0) and ci.median[0] == 2.0


def test_bootstrap_statistics_equal_indexing_the_cases():
    rng = np.random.default_rng(5)
    scores = rng.random((7, 3, 2))
    scores[2, 1, 0] = np.nan  # a missing value is left out of its mean
    idx = rng.integers(0, 7, (11, 7))
    expected = np.nanmean(scores[idx] * np.array([1.0, -1.0]), axis=1)
    assert mean_statistic(scores, [True, False])(idx) == pytest.approx(expected, nan_ok=True)
    tp, fp, fn = (rng.integers(0, 5, (7, 3, 2)).astype(float) for _ in range(3))
    t, d = tp[idx].sum(axis=1), (tp + fp + fn)[idx].sum(axis=1)
    with np.errstate(invalid="ignore", divide="ignore"):
        pooled = np.where(d > 0, t / d, np.nan)
    assert pooled_iou_statistic(tp, fp, fn)(idx) == pytest.approx(pooled, nan_ok=True)


def test_iman_davenport_by_hand_and_demsar_example():
    from autoseg.evaluation.stats import iman_davenport

    # Demšar (2006), section 3.2.2: N = 14 data sets, k = 4 methods, chi2_F = 9.28 -> F_F = 13 * 9.28 / (42 - 9.28)
    f, p = iman_davenport(9.28, 14, 4)
    assert f == pytest.approx(3.69, abs=0.005)
    assert p == pytest.approx(stats.f.sf(13 * 9.28 / (42 - 9.28), 3, 39))
    assert stats.f.isf(0.05, 3, 39) == pytest.approx(2.85, abs=0.01) and p < 0.05  # "F(3, 39) = 2.85": rejected
    assert iman_davenport(8.0, 4, 3) == (float("inf"), 0.0)  # every block ranks alike: chi2 = N (k - 1)
    assert all(math.isnan(v) for v in iman_davenport(1.0, 1, 3))  # one block: no denominator degrees of freedom


def test_friedman_carries_iman_davenport_of_scipys_chi2():
    rng = np.random.default_rng(8)
    x = rng.random((11, 4))
    x[:, 0] += 0.3
    res = friedman(x)
    chi2 = stats.friedmanchisquare(*x.T).statistic
    assert res.f_statistic == pytest.approx(10 * chi2 / (11 * 3 - chi2))
    assert res.f_pvalue == pytest.approx(stats.f.sf(res.f_statistic, 3, 30))
    assert res.rejects(0.05) == (res.f_pvalue < 0.05)
    tied = friedman(np.ones((5, 3)))
    assert (tied.f_statistic, tied.f_pvalue, tied.rejects(0.05)) == (0.0, 1.0, False)


def _brute_force_permutation_p(tp, fp, fn, i, j):
    """Every swap pattern written out with plain loops: the mIoU over classes with reference pixels."""
    import itertools

    n, _, k = tp.shape
    classes = [c for c in range(k) if sum(tp[x, i, c] + fn[x, i, c] for x in range(n)) > 0]

    def miou(pick):  # pick[x] is the method whose counts image x contributes
        vals = []
        for c in classes:
            t = sum(tp[x, pick[x], c] for x in range(n))
            d = sum(tp[x, pick[x], c] + fp[x, pick[x], c] + fn[x, pick[x], c] for x in range(n))
            vals.append(t / d)
        return sum(vals) / len(vals)

    diffs = []
    for swap in itertools.product((0, 1), repeat=n):
        diffs.append(miou([j if s else i for s in swap]) - miou([i if s else j for s in swap]))
    observed = diffs[0]
    return observed, sum(abs(d) >= abs(observed) * (1 - 1e-9) for d in diffs) / len(diffs)


def test_permutation_test_of_the_miou_equals_brute_force():
    from autoseg.evaluation.stats import paired_permutation_miou, pairwise_permutation_miou

    # 3 images, 2 methods, 2 classes; class 1 is absent from every reference (method 0 predicts it once)
    tp = np.array([[[3, 0], [1, 0]], [[4, 0], [2, 0]], [[5, 0], [5, 0]]], float)
    fp = np.array([[[1, 2], [0, 0]], [[0, 0], [2, 0]], [[0, 0], [0, 0]]], float)
    fn = np.array([[[0, 0], [2, 0]], [[0, 0], [0, 0]], [[0, 0], [0, 0]]], float)
    d, p = paired_permutation_miou(tp, fp, fn, 0, 1)
    bd, bp = _brute_force_permutation_p(tp, fp, fn, 0, 1)
    # by hand: method 0 IoU 12/13, method 1 8/12 -> d = 12/13 - 2/3 = 0.256; image 2 has identical counts, so the 8
    # patterns are 4 pairs: no swap d, both swapped -d, image 0 or image 1 alone +-(10/12 - 10/13) = +-0.064:
    # 4 of 8 patterns as extreme as observed, p = 0.5
    assert d == pytest.approx(12 / 13 - 8 / 12) and d == pytest.approx(bd)
    assert p == 0.5 and bp == 0.5
    rng = np.random.default_rng(3)
    tp, fp, fn = (rng.integers(0, 6, (6, 3, 3)).astype(float) for _ in range(3))
    for i, j in ((0, 1), (0, 2), (1, 2)):
        assert paired_permutation_miou(tp, fp, fn, i, j) == pytest.approx(_brute_force_permutation_p(tp, fp, fn, i, j))
    t = pairwise_permutation_miou(tp, fp, fn)
    raw = [_brute_force_permutation_p(tp, fp, fn, i, j)[1] for i, j in ((0, 1), (0, 2), (1, 2))]
    assert [t.p[0, 1], t.p[0, 2], t.p[1, 2]] == pytest.approx(raw)
    assert [t.p_holm[0, 1], t.p_holm[0, 2], t.p_holm[1, 2]] == pytest.approx(holm(raw))


def test_permutation_test_finds_a_clear_difference_with_random_patterns():
    from autoseg.evaluation.stats import paired_permutation_miou

    # 40 images (2^40 patterns: sampled), method 0 better on every image
    tp = np.stack([np.full((40, 2), 9.0), np.full((40, 2), 6.0)], axis=1)
    fp = np.stack([np.full((40, 2), 1.0), np.full((40, 2), 4.0)], axis=1)
    fn = np.zeros_like(tp)
    d, p = paired_permutation_miou(tp, fp, fn, 0, 1, n_perm=999, seed=1)
    assert d == pytest.approx(0.3) and p == pytest.approx(1 / 1000)  # only the identity is as extreme


def test_miou_over_reference_classes_by_hand():
    from autoseg.evaluation.ranking import miou_over_reference_classes

    # class 0: tp 3 fp 1 over both images -> 3/4; class 1 never in the reference, method 0 predicts it (fp 2)
    tp = np.array([[[2, 0]], [[1, 0]]], float)
    fp = np.array([[[1, 2]], [[0, 0]]], float)
    fn = np.zeros_like(tp)
    assert miou_over_reference_classes(tp, fp, fn).tolist() == [0.75]


def test_permutation_p_is_resolved_until_enough_patterns_are_as_extreme():
    from autoseg.evaluation.stats import paired_permutation_miou

    # method 0 better on every one of 40 images: no random pattern is as extreme as the identity, so the patterns
    # double from 999 (1998, 3996, ... 31968) up to the cap of 50,000 and p = 1 / 50,001
    tp = np.stack([np.full((40, 2), 9.0), np.full((40, 2), 6.0)], axis=1)
    fp = np.stack([np.full((40, 2), 1.0), np.full((40, 2), 4.0)], axis=1)
    fn = np.zeros_like(tp)
    assert paired_permutation_miou(tp, fp, fn, 0, 1, n_perm=999, seed=1, max_perm=50_000)[1] == 1 / 50_001
    # a large p stops at the first n_perm patterns, with the same value as without a cap
    rng = np.random.default_rng(0)
    tp, fp, fn = (rng.integers(0, 6, (40, 2, 3)).astype(float) for _ in range(3))
    assert (paired_permutation_miou(tp, fp, fn, 0, 1, n_perm=999, seed=1, max_perm=50_000)
            == paired_permutation_miou(tp, fp, fn, 0, 1, n_perm=999, seed=1))


def test_sampled_permutation_p_agrees_with_the_exact_one():
    from autoseg.evaluation.stats import paired_permutation_miou

    rng = np.random.default_rng(7)
    tp, fp, fn = (rng.integers(0, 20, (14, 2, 4)).astype(float) for _ in range(3))
    tp[:, 0] += rng.integers(0, 8, (14, 4))  # method 0 a little better: p neither 0 nor 1 (0.087)
    _, exact = paired_permutation_miou(tp, fp, fn, 0, 1, max_perm=2 ** 14)  # all 16,384 patterns
    assert 0.001 < exact < 0.5
    _, sampled = paired_permutation_miou(tp, fp, fn, 0, 1, n_perm=4000, seed=3)
    assert abs(sampled - exact) < 4 * np.sqrt(exact * (1 - exact) / 4000)


def test_holm_over_465_pairs_can_still_reject():
    from autoseg.evaluation.stats import paired_permutation_miou, pairwise_permutation_miou

    # 31 methods on 117 images: method 0 better on every image, the other 30 identical (their 435 pairs have d = 0,
    # p = 1). Holm multiplies the smallest p by 465: 2,000 patterns alone would give 465/2001 = 0.23 for every
    # pair with method 0; the cap 5 * 465 / 0.05 = 46,500 gives 465/46,501 = 0.0100
    n, k = 117, 31
    tp = np.full((n, k, 3), 6.0)
    fp = np.full((n, k, 3), 4.0)
    tp[:, 0], fp[:, 0] = 9.0, 1.0
    fn = np.zeros_like(tp)
    t = pairwise_permutation_miou(tp, fp, fn)
    assert t.p[0, 1:] == pytest.approx(np.full(30, 1 / 46_501))
    assert t.p_holm[0, 1:] == pytest.approx(np.full(30, 465 / 46_501))
    assert t.better[0, 1:].all() and not t.better[1:].any()
    assert np.all(t.p[1:, 1:][~np.eye(30, dtype=bool)] == 1.0)
    # the shared patterns give each pair the p it gets alone
    assert paired_permutation_miou(tp, fp, fn, 0, 5, max_perm=46_500)[1] == t.p[0, 5]
