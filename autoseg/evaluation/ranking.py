"""Ranking schemes for methods compared on paired cases (challengeR's three, plus a bootstrap over cases).

Every function takes ``scores[n_cases, n_methods]`` (or ``[..., n_tasks]``) and returns ranks with 1 = best, ties
sharing their average rank. ``higher_is_better`` says which way a metric points (false for HD95).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np
from scipy import stats

from autoseg.evaluation.metrics import nanmean_last, ratio_or_nan
from autoseg.evaluation.stats import pairwise_wilcoxon


def rank_values(values: np.ndarray, higher_is_better: bool = True, axis: int = -1) -> np.ndarray:
    """Ranks along ``axis`` (1 = best, ties averaged); NaN ranks last."""
    v = np.asarray(values, dtype=float)
    v = -v if higher_is_better else v
    v = np.where(np.isnan(v), np.inf, v)
    return stats.rankdata(v, axis=axis)


def aggregate_then_rank(scores: np.ndarray, higher_is_better: bool = True, aggregate: str = "mean") -> np.ndarray:
    """Aggregate each method over cases (mean or median), then rank the aggregates."""
    s = np.asarray(scores, dtype=float)
    agg = np.nanmedian(s, axis=0) if aggregate == "median" else np.nanmean(s, axis=0)
    return rank_values(agg, higher_is_better)


def rank_then_aggregate(scores: np.ndarray, higher_is_better: bool = True) -> np.ndarray:
    """Rank the methods within every case, average each method's ranks, then rank those averages."""
    per_case = rank_values(np.asarray(scores, dtype=float), higher_is_better, axis=1)
    return rank_values(per_case.mean(axis=0), higher_is_better=False)


def test_based_ranking(scores: np.ndarray, higher_is_better: bool = True, alpha: float = 0.05):
    """Rank by the number of methods each one beats significantly (pairwise Wilcoxon signed-rank, Holm).

    Returns ``(ranks, wins, tests)`` with ``tests`` the :class:`~autoseg.evaluation.stats.PairwiseTests`.
    """
    tests = pairwise_wilcoxon(scores, higher_is_better, alpha)
    wins = tests.better.sum(axis=1)
    return rank_values(wins, higher_is_better=True), wins, tests


test_based_ranking.__test__ = False  # its name starts with "test": keep pytest from collecting it


def consensus(task_ranks: np.ndarray) -> np.ndarray:
    """Consensus over tasks (classes, metrics): the mean of each method's ranks, ranked. ``[..., tasks, methods]``."""
    return rank_values(np.asarray(task_ranks, dtype=float).mean(axis=-2), higher_is_better=False, axis=-1)


def _resample_counts(idx: np.ndarray, n_cases: int) -> np.ndarray:
    """``[n_boot, n_cases]`` how often each case was drawn in each resample.

    Statistics are computed as ``counts @ values``: the same numbers as indexing ``values[idx]``, without the
    ``n_boot x n_cases x n_methods x n_tasks`` array (gigabytes for Cityscapes-sized validation sets).
    """
    idx = np.asarray(idx)
    b = idx.shape[0]
    flat = (np.arange(b)[:, None] * n_cases + idx).ravel()
    return np.bincount(flat, minlength=b * n_cases).reshape(b, n_cases).astype(float)


def mean_statistic(scores: np.ndarray, higher_is_better: Sequence[bool] | bool = True):
    """A statistic for :func:`bootstrap_ranks`: case means of ``scores[n_cases, n_methods, n_tasks]`` (NaN left
    out), oriented so higher is better in every task (HD95 negated)."""
    s = np.asarray(scores, dtype=float)
    if s.ndim == 2:
        s = s[:, :, None]
    n, m, t = s.shape
    sign = np.where(np.broadcast_to(np.asarray(higher_is_better, bool), (t,)), 1.0, -1.0)
    oriented = (s * sign).reshape(n, m * t)
    valid = ~np.isnan(oriented)
    values = np.where(valid, oriented, 0.0)

    def stat(idx: np.ndarray) -> np.ndarray:  # idx [n_boot, n_cases] -> [n_boot, n_methods, n_tasks]
        counts = _resample_counts(idx, n)
        return ratio_or_nan(counts @ values, counts @ valid).reshape(-1, m, t)

    return stat


def pooled_iou_statistic(tp: np.ndarray, fp: np.ndarray, fn: np.ndarray, reference_classes: bool = False):
    """A statistic for :func:`bootstrap_ranks`: the dataset-level IoU per class (one confusion matrix over the
    resampled cases) of ``tp/fp/fn[n_cases, n_methods, n_classes]``.

    ``reference_classes``: a class with no reference pixel in the resample is NaN for every method (left out of a
    mean), so that all methods are compared over the same classes; otherwise only a class that no reference and no
    prediction of that method touches is NaN (Cityscapes' per-class convention).
    """
    tp, fp, fn = (np.nan_to_num(np.asarray(x, dtype=float)) for x in (tp, fp, fn))
    n, m, k = tp.shape
    t_flat, d_flat, r_flat = tp.reshape(n, -1), (tp + fp + fn).reshape(n, -1), (tp + fn).reshape(n, -1)

    def stat(idx: np.ndarray) -> np.ndarray:
        counts = _resample_counts(idx, n)
        t, den = counts @ t_flat, counts @ d_flat
        iou = ratio_or_nan(t, den)  # a class with reference pixels has den > 0
        return (np.where(counts @ r_flat > 0, iou, np.nan) if reference_classes else iou).reshape(-1, m, k)

    return stat


def miou_over_reference_classes(tp: np.ndarray, fp: np.ndarray, fn: np.ndarray) -> np.ndarray:
    """The headline mIoU of natural images, ``tp/fp/fn[n_cases, n_methods, n_classes]`` -> ``[n_methods]``: the
    mean over the classes present in the reference of the cases of their dataset-level IoU (one confusion matrix).

    Every method is averaged over the same classes: a class no reference contains is left out even where a method
    predicts it (its per-class IoU, 0, still shows in the per-class table). When every class occurs in the reference,
    as in CamVid's and Cityscapes' evaluation sets, this is exactly Cityscapes' mIoU.
    """
    per_class = pooled_iou_statistic(tp, fp, fn, reference_classes=True)(np.arange(np.asarray(tp).shape[0])[None])
    return nanmean_last(per_class)[0]


def bootstrap_indices(n_cases: int, n_boot: int = 1000, seed: int = 0) -> np.ndarray:
    """``[n_boot, n_cases]`` case indices drawn with replacement; the same draw serves every method (paired)."""
    return np.random.default_rng(seed).integers(0, n_cases, size=(n_boot, n_cases))


def bootstrap_ranks(statistic: Callable[[np.ndarray], np.ndarray], n_cases: int, n_boot: int = 1000,
                    seed: int = 0) -> np.ndarray:
    """Consensus rank of every method in each bootstrap resample of the cases: ``[n_boot, n_methods]``.

    ``statistic(idx)`` maps ``idx[n_boot, n_cases]`` to higher-is-better values ``[n_boot, n_methods, n_tasks]``
    (see :func:`mean_statistic`, :func:`pooled_iou_statistic`); each resample ranks methods per task and takes the
    consensus (mean rank over tasks, ranked).
    """
    idx = bootstrap_indices(n_cases, n_boot, seed)
    values = statistic(idx)
    task_ranks = rank_values(values, higher_is_better=True, axis=1)  # [n_boot, n_methods, n_tasks]
    return consensus(np.swapaxes(task_ranks, 1, 2))


@dataclass
class RankInterval:
    median: np.ndarray
    low: np.ndarray
    high: np.ndarray
    level: float


def rank_interval(boot_ranks: np.ndarray, level: float = 0.95) -> RankInterval:
    """Median and central ``level`` percentile interval of each method's bootstrap ranks; the bounds are ranks that
    occurred (lower and higher order statistics), never an interpolation between two ranks."""
    b = np.asarray(boot_ranks, dtype=float)
    q = (1 - level) / 2 * 100
    return RankInterval(np.median(b, axis=0), np.percentile(b, q, axis=0, method="lower"),
                        np.percentile(b, 100 - q, axis=0, method="higher"), level)


def rank_frequencies(boot_ranks: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """The distinct ranks seen and, per method, the share of resamples at each: ``(ranks, freq[n_methods, n_ranks])``,
    the data of a blob plot."""
    b = np.asarray(boot_ranks, dtype=float)
    values = np.unique(b)
    freq = np.stack([(b == v).mean(axis=0) for v in values], axis=1)
    return values, freq
