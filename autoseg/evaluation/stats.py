"""Statistical tests for comparing losses: paired Wilcoxon with Holm correction, a paired permutation test of the
dataset-level mIoU, Friedman (chi-squared and Iman-Davenport F) with the Nemenyi critical difference, and Kendall's
tau between rankings. Pure functions of numpy arrays."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
from scipy import stats

from autoseg.evaluation.metrics import nanmean_last, ratio_or_nan


def holm(pvalues: Sequence[float]) -> np.ndarray:
    """Holm's step-down adjusted p-values (family-wise error), in the input order; NaN stays NaN.

    Sorted ascending, the i-th smallest (0-based) of m p-values becomes ``max_{j<=i} min(1, (m - j) p_(j))``.

    Example:
        >>> holm([0.01, 0.04, 0.03]).round(4).tolist()
        [0.03, 0.06, 0.06]
    """
    p = np.asarray(pvalues, dtype=float)
    out = np.full_like(p, np.nan)
    ok = ~np.isnan(p)
    q = p[ok]
    m = q.size
    if m == 0:
        return out
    order = np.argsort(q, kind="stable")
    adj = np.minimum(1.0, np.maximum.accumulate((m - np.arange(m)) * q[order]))
    res = np.empty(m)
    res[order] = adj
    out[ok] = res
    return out


@dataclass
class PairwiseTests:
    """Pairwise paired tests between methods: ``p`` raw and ``p_holm`` adjusted two-sided p-values (symmetric,
    NaN on the diagonal), and ``better[i, j]`` true when i beats j significantly at ``alpha`` after Holm."""

    p: np.ndarray
    p_holm: np.ndarray
    better: np.ndarray
    alpha: float


def pairwise_wilcoxon(scores: np.ndarray, higher_is_better: bool = True, alpha: float = 0.05) -> PairwiseTests:
    """Two-sided Wilcoxon signed-rank tests for every pair of methods on paired cases, Holm-corrected together.

    Args:
        scores: ``[n_cases, n_methods]``, one value per case and method, cases paired across methods.

    A pair whose differences are all zero cannot differ: p = 1. The direction of a significant difference is the
    side with the larger signed-rank sum (W+ against W-), the quantity the test itself weighs.
    """
    scores = np.asarray(scores, dtype=float)
    if scores.ndim != 2:
        raise ValueError(f"scores must be [n_cases, n_methods], got shape {scores.shape}")
    k = scores.shape[1]
    p = np.full((k, k), np.nan)
    pairs = [(i, j) for i in range(k) for j in range(i + 1, k)]
    raw = []
    for i, j in pairs:
        d = scores[:, i] - scores[:, j]
        d = d[~np.isnan(d)]
        if d.size == 0 or np.all(d == 0):
            raw.append(1.0)
        else:
            raw.append(float(stats.wilcoxon(d).pvalue))
    adj = holm(raw)
    p_holm = np.full((k, k), np.nan)
    better = np.zeros((k, k), dtype=bool)
    for (i, j), pr, pa in zip(pairs, raw, adj):
        p[i, j] = p[j, i] = pr
        p_holm[i, j] = p_holm[j, i] = pa
        if pa < alpha:
            direction = _signed_rank_direction(scores[:, i] - scores[:, j])
            if not higher_is_better:
                direction = -direction
            if direction > 0:
                better[i, j] = True
            elif direction < 0:
                better[j, i] = True
    return PairwiseTests(p, p_holm, better, alpha)


def _signed_rank_direction(d: np.ndarray) -> int:
    """+1 when the positive differences carry the larger Wilcoxon rank sum, -1 when the negative ones do, else 0."""
    d = d[~np.isnan(d) & (d != 0)]
    if d.size == 0:
        return 0
    r = stats.rankdata(np.abs(d))
    return int(np.sign(r[d > 0].sum() - r[d < 0].sum()))


@dataclass
class FriedmanResult:
    """Friedman's chi-squared and its p, and Iman and Davenport's F form of the same test with its p (Demšar 2006
    recommends the F: the chi-squared approximation is conservative)."""

    statistic: float
    pvalue: float
    average_ranks: np.ndarray  # rank 1 = best
    n_blocks: int
    n_methods: int
    f_statistic: float = float("nan")
    f_pvalue: float = float("nan")

    def rejects(self, alpha: float) -> bool:
        """Whether the test (Iman-Davenport F) finds a difference between the methods at ``alpha``."""
        return bool(self.f_pvalue < alpha)


def iman_davenport(chi2: float, n_blocks: int, n_methods: int) -> tuple[float, float]:
    """Iman and Davenport's ``F = (N - 1) chi2 / (N (k - 1) - chi2)`` with ``(k - 1, (k - 1)(N - 1))`` degrees of
    freedom, and its p. Every block ranking the methods alike (``chi2 = N (k - 1)``) gives F = inf, p = 0; a single
    block has no denominator degrees of freedom (F and p NaN)."""
    n, k = n_blocks, n_methods
    df1, df2 = k - 1, (k - 1) * (n - 1)
    if df2 <= 0:
        return float("nan"), float("nan")
    denom = n * (k - 1) - chi2
    if denom <= 0:
        return float("inf"), 0.0
    f = (n - 1) * chi2 / denom
    return float(f), float(stats.f.sf(f, df1, df2))


def friedman(matrix: np.ndarray, higher_is_better: bool = True) -> FriedmanResult:
    """Friedman's test of ``[n_blocks, n_methods]`` (blocks: data sets or cases), with the tie correction.

    ``chi2 = (12 / (n k (k+1)) * sum_j R_j^2 - 3 n (k+1)) / (1 - sum(t^3 - t) / (n k (k^2 - 1)))`` with ``R_j`` the
    rank sums; p from chi-squared with k - 1 degrees of freedom. Equals ``scipy.stats.friedmanchisquare`` for k >= 3.
    """
    x = np.asarray(matrix, dtype=float)
    if x.ndim != 2 or x.shape[0] < 1 or x.shape[1] < 2:
        raise ValueError(f"matrix must be [n_blocks >= 1, n_methods >= 2], got shape {x.shape}")
    n, k = x.shape
    ranks = stats.rankdata(-x if higher_is_better else x, axis=1)
    rank_sums = ranks.sum(axis=0)
    ties = 0.0
    for row in ranks:
        _, counts = np.unique(row, return_counts=True)
        ties += float(np.sum(counts ** 3 - counts))
    denom = 1.0 - ties / (n * k * (k * k - 1))
    chi2 = (12.0 / (n * k * (k + 1)) * float(np.sum(rank_sums ** 2)) - 3.0 * n * (k + 1))
    if denom <= 0:  # every block all tied: no evidence of any difference
        return FriedmanResult(0.0, 1.0, rank_sums / n, n, k, 0.0, 1.0)
    chi2 /= denom
    f, fp = iman_davenport(chi2, n, k)
    return FriedmanResult(float(chi2), float(stats.chi2.sf(chi2, k - 1)), rank_sums / n, n, k, f, fp)


def nemenyi_critical_difference(n_methods: int, n_blocks: int, alpha: float = 0.05) -> float:
    """Nemenyi critical difference of average ranks (Demšar 2006): ``q_alpha sqrt(k (k+1) / (6 N))``, where
    ``q_alpha`` is the studentized range quantile over sqrt(2) (1.960 for k=2, 2.343 for k=3, 2.569 for k=4)."""
    if n_methods < 2 or n_blocks < 1:
        raise ValueError(f"need at least 2 methods and 1 block, got {n_methods} and {n_blocks}")
    q = stats.studentized_range.ppf(1 - alpha, n_methods, np.inf) / np.sqrt(2)
    return float(q * np.sqrt(n_methods * (n_methods + 1) / (6.0 * n_blocks)))


def cd_cliques(average_ranks: Sequence[float], cd: float) -> list[list[int]]:
    """Groups of methods whose average ranks lie within ``cd`` of each other (maximal runs in rank order, at least
    two members): the bars of a critical-difference diagram."""
    r = np.asarray(average_ranks, dtype=float)
    order = list(np.argsort(r, kind="stable"))
    runs = []
    for a in range(len(order)):
        b = a
        while b + 1 < len(order) and r[order[b + 1]] - r[order[a]] < cd:
            b += 1
        if b > a:
            runs.append((a, b))
    maximal = [(a, b) for a, b in runs if not any(c <= a and b <= d and (c, d) != (a, b) for c, d in runs)]
    return [[int(order[i]) for i in range(a, b + 1)] for a, b in maximal]


def kendall_tau(ranking_a: Sequence[float], ranking_b: Sequence[float]) -> float:
    """Kendall's tau-b between two rankings of the same methods (1: same order, -1: reversed)."""
    return kendall_tau_test(ranking_a, ranking_b)[0]


def kendall_tau_test(ranking_a: Sequence[float], ranking_b: Sequence[float]) -> tuple[float, float]:
    """Kendall's tau-b between two rankings and the two-sided p of "no association" (scipy's exact or asymptotic
    test): does an order found on one dataset say anything about the order on another?"""
    a = np.asarray(ranking_a, dtype=float)
    b = np.asarray(ranking_b, dtype=float)
    if a.shape != b.shape:
        raise ValueError(f"rankings must have the same length, got {a.shape} and {b.shape}")
    if a.size < 2:
        return float("nan"), float("nan")
    res = stats.kendalltau(a, b)
    return float(res.statistic), float(res.pvalue)


PERMUTATION_RESOLUTION = 5  # pairwise tests resolve p down to alpha / (this x pairs)


class SwapPatterns:
    """Random 0/1 swap patterns for a paired permutation test, drawn in fixed blocks from one seeded generator and
    kept, so every pair of a pairwise test sees the same patterns and pattern ``r`` never depends on which pair
    asked first."""

    BLOCK = 16384

    def __init__(self, n: int, seed: int = 0):
        self.n = n
        self._rng = np.random.default_rng(seed)
        self._bank = np.zeros((0, n), dtype=np.uint8)

    def rows(self, start: int, stop: int) -> np.ndarray:
        while len(self._bank) < stop:
            self._bank = np.vstack([self._bank, self._rng.integers(0, 2, (self.BLOCK, self.n), dtype=np.uint8)])
        return self._bank[start:stop].astype(float)


def paired_permutation_miou(tp: np.ndarray, fp: np.ndarray, fn: np.ndarray, i: int, j: int, n_perm: int = 2000,
                            seed: int = 0, max_perm: int | None = None, min_exceed: int = 10,
                            patterns: SwapPatterns | None = None) -> tuple[float, float]:
    """Two-sided paired permutation test of the dataset-level mIoU of methods ``i`` and ``j``.

    ``tp/fp/fn[n_images, n_methods, n_classes]``. Under the null hypothesis the two methods' predictions of an image
    are exchangeable: each pattern swaps the confusion counts of i and j on some images, rebuilds both confusion
    matrices and takes the mIoU difference. With at most ``max(n_perm, max_perm)`` patterns in all (``2^n_images``)
    every one is used and ``p`` (the share of patterns with ``|d| >= |d_observed|``) is exact. Otherwise ``p = (b +
    1) / (N + 1)`` over ``N`` random patterns (``patterns``, or drawn from ``seed``), ``b`` of them as extreme as
    observed: ``N = n_perm``, doubled while ``b < min_exceed`` up to ``max_perm``, so a small p is resolved (a Holm
    correction over m pairs needs p below alpha/m, which 2,000 patterns cannot show beyond a few pairs) without
    paying for it where p is large. Returns ``(d_observed, p)``, d = mIoU_i - mIoU_j. The mIoU is over the classes
    present in the reference (swaps do not change the reference, so every pattern uses the same classes).
    """
    tp, fp, fn = (np.nan_to_num(np.asarray(x, dtype=float)) for x in (tp, fp, fn))
    in_reference = (tp[:, i] + fn[:, i]).sum(axis=0) > 0
    tp, fp, fn = tp[..., in_reference], fp[..., in_reference], fn[..., in_reference]
    n, k = tp.shape[0], tp.shape[2]
    den = tp + fp + fn
    totals_i = np.concatenate([tp[:, i].sum(0), den[:, i].sum(0)])
    totals_j = np.concatenate([tp[:, j].sum(0), den[:, j].sum(0)])
    moved = np.concatenate([tp[:, j] - tp[:, i], den[:, j] - den[:, i]], axis=1)  # [n, 2k]: what a swap moves

    def diffs(s: np.ndarray) -> np.ndarray:  # s [P, n]: image x swapped where s[:, x] == 1
        shift = s @ moved
        a, b = totals_i + shift, totals_j - shift
        return _miou_rows(a[:, :k], a[:, k:]) - _miou_rows(b[:, :k], b[:, k:])

    observed = float(diffs(np.zeros((1, n)))[0])
    if not np.isfinite(observed) or observed == 0.0:
        return observed, 1.0
    # a relative tolerance: swapped patterns that give the same difference up to rounding count as extreme
    threshold = abs(observed) * (1 - 1e-9)
    if 2 ** n <= max(n_perm, max_perm or 0):
        every = ((np.arange(2 ** n)[:, None] >> np.arange(n)) & 1).astype(float)
        return observed, float(np.mean(np.abs(diffs(every)) >= threshold))
    patterns = patterns or SwapPatterns(n, seed)
    exceed, drawn, want = 0, 0, n_perm
    while True:
        for start in range(drawn, want, SwapPatterns.BLOCK):
            exceed += int(np.sum(np.abs(diffs(patterns.rows(start, min(start + SwapPatterns.BLOCK, want))))
                                 >= threshold))
        drawn = want
        if max_perm is None or exceed >= min_exceed or drawn >= max_perm:
            break
        want = min(2 * drawn, max_perm)
    return observed, (exceed + 1) / (drawn + 1)


def _miou_rows(t: np.ndarray, d: np.ndarray) -> np.ndarray:
    """Mean over classes of t/d per row, classes with d == 0 left out (NaN where no class is left)."""
    return nanmean_last(ratio_or_nan(t, d))


def pairwise_permutation_miou(tp: np.ndarray, fp: np.ndarray, fn: np.ndarray, alpha: float = 0.05,
                              n_perm: int = 2000, seed: int = 0) -> PairwiseTests:
    """:func:`paired_permutation_miou` for every pair of methods, Holm-corrected together; ``better[i, j]`` when
    i's dataset-level mIoU is significantly higher than j's."""
    k = np.asarray(tp).shape[1]
    p = np.full((k, k), np.nan)
    pairs = [(i, j) for i in range(k) for j in range(i + 1, k)]
    # p resolved down to a fifth of alpha / pairs, the smallest threshold Holm applies: 46,500 patterns where
    # needed for the 465 pairs of 31 losses, so the smallest Holm p is 0.01 instead of 465/2001 = 0.23
    max_perm = max(n_perm, int(np.ceil(PERMUTATION_RESOLUTION * max(len(pairs), 1) / alpha)))
    patterns = SwapPatterns(np.asarray(tp).shape[0], seed)
    results = [paired_permutation_miou(tp, fp, fn, i, j, n_perm, seed, max_perm=max_perm, patterns=patterns)
               for i, j in pairs]
    adj = holm([pv for _, pv in results])
    p_holm = np.full((k, k), np.nan)
    better = np.zeros((k, k), dtype=bool)
    for (i, j), (d, pr), pa in zip(pairs, results, adj):
        p[i, j] = p[j, i] = pr
        p_holm[i, j] = p_holm[j, i] = pa
        if pa < alpha and d > 0:
            better[i, j] = True
        elif pa < alpha and d < 0:
            better[j, i] = True
    return PairwiseTests(p, p_holm, better, alpha)


def percentile_interval(samples: np.ndarray, level: float = 0.95, axis: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Central ``level`` percentile interval of bootstrap samples along ``axis`` (NaN samples left out)."""
    import warnings

    q = (1 - level) / 2 * 100
    with warnings.catch_warnings():  # a loss without any finite resample gets NaN bounds, not a warning
        warnings.simplefilter("ignore", RuntimeWarning)
        return (np.nanpercentile(samples, q, axis=axis), np.nanpercentile(samples, 100 - q, axis=axis))
