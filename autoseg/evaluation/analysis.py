"""Analysis of the evaluation table: one paired comparison per group (same data, configuration, network, plans,
budget), with its rankings and tests. Pure computation on the rows; nothing is written here."""

from __future__ import annotations

import warnings
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import numpy as np

from autoseg.evaluation import ranking as rk
from autoseg.evaluation import stats as st
from autoseg.evaluation.metrics import HIGHER_IS_BETTER, nanmean_last, pooled_iou

GroupKey = tuple[str, str, str, str, str]
GROUP_FIELDS = ("dataset", "configuration", "architecture", "plans", "budget")


@dataclass
class Headline:
    """The headline ranking of a group: one statistic per loss, its bootstrap spread and interval, and the rank
    interval it implies. Medical: mean over cases of the per-case mean foreground Dice. Natural images: the mIoU
    over all classes of one confusion matrix over the images (dataset-level, as Cityscapes reports it)."""

    statistic: str  # what is ranked, in words
    short: str  # column name, e.g. "DSC" or "mIoU"
    values: np.ndarray  # [n_methods], in [0, 1]
    sd: np.ndarray  # medical: sd over cases; natural: bootstrap sd over images
    sd_kind: str
    low: np.ndarray  # 95 % bootstrap percentile interval of the statistic
    high: np.ndarray
    ranks: np.ndarray  # 1 = best, ties averaged
    interval: rk.RankInterval  # bootstrap rank interval of the headline statistic
    boot: np.ndarray  # [n_boot, n_methods] the statistic in each resample (the same resamples for every loss)


@dataclass
class Difference:
    """A loss against the baseline on the paired cases: the headline statistic's difference (loss - baseline), its
    95 % paired-bootstrap interval and the paired test's Holm-adjusted p."""

    method: str
    diff: float
    low: float
    high: float
    p_holm: float
    # 95 % interval of a bootstrap over seeds and cases (both the loss and the baseline with several seeds), else NaN
    seed_low: float = float("nan")
    seed_high: float = float("nan")


@dataclass
class GroupAnalysis:
    """Everything the report says about one comparison group (same data, configuration, network, plans, budget)."""

    key: GroupKey
    natural: bool
    methods: list[str]  # in headline order
    labels: list[int]
    class_names: list[str]
    cases: list[str]  # cases every method has: the paired sample
    excluded: dict[str, int]  # method -> cases it has that others lack (left out of the paired analysis)
    values: dict[str, np.ndarray]  # metric -> [n_cases, n_methods, n_labels]
    primary_name: str
    primary: np.ndarray  # [n_cases, n_methods] per-case score: mean Dice (medical) / mean IoU over present classes
    rows: list[dict] = field(default_factory=list)  # the group's rows, every case (the per-fold table uses them)
    headline: Headline | None = None
    rankings: dict[str, np.ndarray] = field(default_factory=dict)  # label -> ranks; the headline's first
    consensus_tasks: list[str] = field(default_factory=list)
    boot: np.ndarray | None = None  # bootstrap consensus ranks [n_boot, n_methods]
    interval: rk.RankInterval | None = None  # of the consensus
    tests: st.PairwiseTests | None = None
    test_name: str = ""
    wins: np.ndarray | None = None
    friedman: st.FriedmanResult | None = None
    cd: float | None = None
    pooled: np.ndarray | None = None  # natural: dataset-level IoU [n_methods, n_labels]
    baseline: str | None = None
    differences: list[Difference] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    seeds: dict[str, list[str]] = field(default_factory=dict)  # method -> its seeds in this group
    seed_gaps: dict[str, dict[str, list[str]]] = field(default_factory=dict)  # method -> {fold: seeds it has there}
    # method -> seed -> (headline statistic of that seed alone over the paired cases it has, how many it has)
    per_seed: dict[str, dict[str, tuple[float, int]]] = field(default_factory=dict)

    @property
    def several_seeds(self) -> bool:
        return any(len(s) > 1 for s in self.seeds.values())

    @property
    def miou_sd(self) -> np.ndarray | None:
        return self.headline.sd if self.natural and self.headline is not None else None


def _group_of(row: dict) -> GroupKey:
    return tuple(str(row[f]) for f in GROUP_FIELDS)  # type: ignore[return-value]


def split_mismatches(rows: Sequence[dict]) -> dict[str, str]:
    """Folds whose validation cases are not the same for every method of a group (PROTOCOL: same folds for every
    loss), each with a short description of the difference."""
    cases: dict[str, dict[str, set[str]]] = {}
    for r in rows:
        cases.setdefault(str(r["fold"]), {}).setdefault(r["method"], set()).add(r["case"])
    out = {}
    for fold, by_method in cases.items():
        union = set().union(*by_method.values())
        short = {m: sorted(union - c) for m, c in by_method.items() if c != union}
        if short:
            out[fold] = "; ".join(f"{m} lacks {len(v)}: {', '.join(v[:3])}{' ...' if len(v) > 3 else ''}"
                                  for m, v in sorted(short.items()))
    return out


METRICS = ("dice", "iou", "hd95", "nsd", "tp", "fp", "fn")


def seed_means(rows: Sequence[dict]) -> dict[tuple[str, str, int], dict[str, float]]:
    """``(method, case, label) -> {metric: value}`` with the seeds of a method as repeated measurements of the same
    case: each metric is the mean over the seeds that scored the case (NaN left out, as the per-case means leave it
    out), and tp/fp/fn are the mean confusion counts, so the dataset-level mIoU of these rows is the mIoU of the mean
    confusion matrix and every statistic stays paired by case. One seed gives its own values unchanged."""
    by_seed: dict[tuple[str, str, int], dict[str, dict]] = {}
    for r in rows:
        by_seed.setdefault((r["method"], r["case"], int(r["label"])), {})[str(r.get("seed", ""))] = r
    out = {}
    for key, seeds in by_seed.items():
        rs = list(seeds.values())
        if len(rs) == 1:
            out[key] = {m: float(rs[0][m]) for m in METRICS}
            continue
        out[key] = {}
        for m in METRICS:
            v = np.array([float(r[m]) for r in rs])
            ok = ~np.isnan(v)
            out[key][m] = float(v[ok].mean()) if ok.any() else float("nan")
    return out


def seed_counts(rows: Sequence[dict]) -> tuple[dict[str, list[str]], dict[str, dict[str, list[str]]]]:
    """The seeds of every method (``method -> sorted seeds``), and the folds where a method has fewer of them
    (``method -> {fold: the seeds it has there}``)."""
    seeds: dict[str, set[str]] = {}
    by_fold: dict[str, dict[str, set[str]]] = {}
    for r in rows:
        s = str(r.get("seed", ""))
        seeds.setdefault(r["method"], set()).add(s)
        by_fold.setdefault(r["method"], {}).setdefault(str(r["fold"]), set()).add(s)
    all_seeds = {m: sorted(s, key=seed_order) for m, s in seeds.items()}
    short = {m: {f: sorted(s, key=seed_order) for f, s in folds.items() if len(s) < len(seeds[m])}
             for m, folds in by_fold.items()}
    return all_seeds, {m: d for m, d in short.items() if d}


def seed_order(s: str) -> tuple[int, str]:
    """Sort key of seeds: numerically, anything else after them."""
    return (int(s), s) if s.lstrip("-").isdigit() else (1 << 30, s)


def _per_case_arrays(rows: Sequence[dict], methods: list[str], labels: list[int]):
    by_method: dict[str, dict[tuple[str, int], dict[str, float]]] = {m: {} for m in methods}
    for (method, case, label), v in seed_means(rows).items():
        by_method[method][(case, label)] = v
    case_sets = {m: {c for c, _ in d} for m, d in by_method.items()}
    common = sorted(set.intersection(*case_sets.values()))
    excluded = {m: len(s) - len(common) for m, s in case_sets.items() if len(s) > len(common)}
    values = {m: np.full((len(common), len(methods), len(labels)), np.nan) for m in METRICS}
    for j, meth in enumerate(methods):
        d = by_method[meth]
        for i, case in enumerate(common):
            for k, lab in enumerate(labels):
                r = d.get((case, lab))
                if r is not None:
                    for m in METRICS:
                        values[m][i, j, k] = r[m]
    return common, excluded, values


def _primary(natural: bool, values: dict[str, np.ndarray]) -> np.ndarray:
    """The per-case score ``[n_cases, n_methods]``: mean Dice over classes (medical), mean IoU over the classes
    present in the image (natural)."""
    if natural:
        return per_image_iou(values["iou"], values["tp"], values["fp"], values["fn"])
    return nanmean_last(values["dice"])


def per_image_iou(iou: np.ndarray, tp: np.ndarray, fp: np.ndarray, fn: np.ndarray) -> np.ndarray:
    """Per-image mean IoU over the classes present in the reference or the prediction of that image: a class absent
    from both says nothing about the method and is left out (not scored 1). ``[..., n_classes]`` -> ``[...]``."""
    present = (np.nan_to_num(tp) + np.nan_to_num(fp) + np.nan_to_num(fn)) > 0
    return nanmean_last(np.where(present, iou, np.nan))


def headline_statistic(g: GroupAnalysis):
    """``stat(idx[n_boot, n_cases]) -> [n_boot, n_methods]``: the headline statistic on resampled cases."""
    return _statistic(g.natural, g.values, g.primary)


def _statistic(natural: bool, values: dict[str, np.ndarray], primary: np.ndarray):
    if natural:
        # the classes in the reference of the resampled images, the same for every method (a resample without the
        # rare class would otherwise compare one method's 0 for a stray pixel with another's "left out")
        pooled = rk.pooled_iou_statistic(values["tp"], values["fp"], values["fn"], reference_classes=True)
        return lambda idx: nanmean_last(pooled(idx))
    mean = rk.mean_statistic(primary)
    return lambda idx: mean(idx)[..., 0]


def _headline(g: GroupAnalysis, n_boot: int, seed: int) -> Headline:
    stat = headline_statistic(g)
    n = len(g.cases)
    point = stat(np.arange(n)[None])[0]
    idx = rk.bootstrap_indices(n, n_boot, seed)
    boot = stat(idx)
    low, high = st.percentile_interval(boot)
    ranks_boot = rk.rank_values(boot, True, axis=1)
    if g.natural:
        sd, sd_kind = (boot.std(axis=0, ddof=1) if n_boot > 1 else np.full(len(g.methods), np.nan),
                       "bootstrap sd over images")
        statistic, short = ("mIoU over every class in the reference, class 0 included, dataset-level (one "
                            "confusion matrix over the images)"), "mIoU"
    else:
        sd = np.nanstd(g.primary, axis=0, ddof=1) if n > 1 else np.full(len(g.methods), np.nan)
        sd_kind = "sd over cases"
        statistic, short = "mean foreground Dice (mean over cases of the per-case mean DSC over classes)", "DSC"
    return Headline(statistic, short, point, sd, sd_kind, low, high, rk.rank_values(point, True),
                    rk.rank_interval(ranks_boot), boot)


# ----------------------------------------------------------------------------------------- ranking methods
# The rankings of the report, in the order of its ranking table: label(g) -> ranks (1 = best) or None where the
# method does not apply. A new ranking method is one more entry.

RankingMethod = Callable[[GroupAnalysis], "np.ndarray | None"]
RANKING_METHODS: dict[str, tuple[Callable[[GroupAnalysis], str], RankingMethod]] = {}


def ranking_method(key: str, label: Callable[[GroupAnalysis], str]):
    """Register a ranking method under ``key``; ``label(g)`` is its column name in the report."""
    def wrap(fn: RankingMethod) -> RankingMethod:
        RANKING_METHODS[key] = (label, fn)
        return fn
    return wrap


@ranking_method("headline", lambda g: f"headline ({g.headline.short})")
def _rank_headline(g: GroupAnalysis):
    return g.headline.ranks


@ranking_method("consensus", lambda g: "consensus over metrics and classes")
def _rank_consensus(g: GroupAnalysis):
    return g.rankings.get("consensus over metrics and classes")


@ranking_method("aggregate_then_rank", lambda g: f"aggregate-then-rank (per-case {g.primary_name})")
def _rank_aggregate(g: GroupAnalysis):
    # for natural images the aggregate of the images is the headline's dataset-level mIoU: no second column
    return None if g.natural else rk.aggregate_then_rank(g.primary)


@ranking_method("rank_then_aggregate", lambda g: f"rank-then-aggregate (per-{'image' if g.natural else 'case'} "
                                                 f"{g.primary_name})")
def _rank_then_aggregate(g: GroupAnalysis):
    return rk.rank_then_aggregate(g.primary)


@ranking_method("test_based", lambda g: f"test-based ({g.test_name})")
def _rank_test_based(g: GroupAnalysis):
    return None if g.wins is None else rk.rank_values(g.wins, higher_is_better=True)


# ------------------------------------------------------------------------------------------------ analysis


def analyse_group(rows: Sequence[dict], n_boot: int = 1000, seed: int = 0, alpha: float = 0.05,
                  baseline: str | None = "dice_ce", n_perm: int = 2000) -> GroupAnalysis:
    """Paired analysis of the rows of one group (rows of :data:`autoseg.evaluation.tables.TABLE_COLUMNS`).

    The headline statistic (:class:`Headline`) orders everything; the paired tests are Wilcoxon signed-rank on the
    per-case mean Dice (medical) or a permutation test of the dataset-level mIoU (natural images), Holm-corrected.
    """
    key = _group_of(rows[0])
    natural = bool(rows[0]["natural_image"])
    methods = sorted({r["method"] for r in rows})
    labels = sorted({int(r["label"]) for r in rows})
    names = {int(r["label"]): r["class_name"] for r in rows}
    common, excluded, values = _per_case_arrays(rows, methods, labels)
    primary_name = "IoU" if natural else "DSC"
    primary = _primary(natural, values) if common else np.zeros((0, len(methods)))
    g = GroupAnalysis(key, natural, methods, labels, [names[lab] for lab in labels], common, excluded, values,
                      primary_name, primary, rows=list(rows))
    g.seeds, g.seed_gaps = seed_counts(rows)
    if g.several_seeds:
        g.notes.append(_seeds_note(g))
        g.per_seed = _per_seed_headline(g)
    if excluded:
        g.notes.append("paired analyses use the cases every loss has; left out: "
                       + ", ".join(f"{m} {n}" for m, n in sorted(excluded.items())))
    for fold, msg in sorted(split_mismatches(rows).items()):
        g.notes.append(f"WARNING: the validation cases of fold {fold} differ between losses ({msg}): the losses were "
                       "not trained on the same split, or predictions are missing")
    if len(common) == 0:
        g.notes.append("no case is shared by every loss: no paired statistics")
        return g
    g.headline = _headline(g, n_boot, seed)
    # consensus over metrics and classes (secondary view), with its bootstrap rank interval
    if natural:
        g.pooled = pooled_iou(values["tp"], values["fp"], values["fn"], axis=0)
        stat = rk.pooled_iou_statistic(values["tp"], values["fp"], values["fn"])
        g.consensus_tasks = [f"IoU {n} (dataset-level)" for n in g.class_names]
    else:
        tasks, hib, arrays = [], [], []
        for metric in ("dice", "hd95", "nsd"):
            if np.all(np.isnan(values[metric])):
                continue
            for k, n in enumerate(g.class_names):
                arrays.append(values[metric][:, :, k])
                tasks.append(f"{metric.upper() if metric != 'dice' else 'DSC'} {n}")
                hib.append(HIGHER_IS_BETTER[metric])
        stat = rk.mean_statistic(np.stack(arrays, axis=2), hib)
        g.consensus_tasks = tasks
    point = stat(np.arange(len(common))[None])
    g.rankings["consensus over metrics and classes"] = rk.consensus(
        np.swapaxes(rk.rank_values(point, True, axis=1), 1, 2))[0]
    g.boot = rk.bootstrap_ranks(stat, len(common), n_boot, seed)
    g.interval = rk.rank_interval(g.boot)
    if len(methods) >= 2:
        if natural:
            g.tests = st.pairwise_permutation_miou(values["tp"], values["fp"], values["fn"], alpha, n_perm, seed)
            g.test_name = "paired permutation test of the dataset-level mIoU over images, Holm"
        else:
            g.tests = st.pairwise_wilcoxon(primary, True, alpha)
            g.test_name = "Wilcoxon signed-rank on per-case DSC, Holm"
        g.wins = g.tests.better.sum(axis=1)
        g.friedman = st.friedman(primary)
        g.cd = st.nemenyi_critical_difference(len(methods), len(common), alpha)
    if len(common) < 6 and not natural:
        g.notes.append(f"only {len(common)} paired case(s): the two-sided Wilcoxon test cannot reach p < 0.05 "
                       "below 6 cases")
    if natural and len(common) < 6:
        g.notes.append(f"only {len(common)} paired image(s): the permutation test has only {2 ** len(common)} "
                       f"swap patterns, so its p cannot fall below {1 / 2 ** len(common):.3g}")
    rankings = {}
    for _, (label, fn) in RANKING_METHODS.items():
        ranks = fn(g)
        if ranks is not None:
            rankings[label(g)] = np.asarray(ranks, dtype=float)
    g.rankings = rankings
    order = np.lexsort((g.rankings["consensus over metrics and classes"], g.headline.ranks))
    _reorder(g, order)
    _baseline_differences(g, baseline, n_boot, seed)
    return g


def _seeds_note(g: GroupAnalysis) -> str:
    counts = "; ".join(f"{m} {len(s)} ({', '.join(s)})" for m, s in sorted(g.seeds.items()))
    note = (f"seeds per loss: {counts}. A loss's value for a {'image' if g.natural else 'case'} and class is the "
            "mean over its seeds that scored it (" + ("the mean confusion counts, so the mIoU is that of the mean "
                                                      "confusion matrix" if g.natural else "Dice, IoU, HD95, NSD")
            + "), so every test stays paired by case; section Seeds shows each seed alone")
    if g.seed_gaps:
        note += ("; unequal seed counts (those cases are the mean of fewer seeds): "
                 + "; ".join(f"{m} fold {f} has seed(s) {', '.join(s)}" for m, d in sorted(g.seed_gaps.items())
                             for f, s in sorted(d.items())))
    return note


def _seed_values(g: GroupAnalysis, method: str, seed: str) -> tuple[list[str], dict[str, np.ndarray]]:
    """One seed of a method alone: the group's paired cases it scored and its metric arrays ``[n, 1, n_labels]``."""
    common = set(g.cases)
    rows = [r for r in g.rows if r["method"] == method and str(r.get("seed", "")) == seed and r["case"] in common]
    if not rows:
        return [], {}
    cases, _, values = _per_case_arrays(rows, [method], g.labels)
    return cases, values


def _per_seed_headline(g: GroupAnalysis) -> dict[str, dict[str, tuple[float, int]]]:
    """The headline statistic of every (method, seed) alone, over the group's paired cases that seed scored."""
    out: dict[str, dict[str, tuple[float, int]]] = {}
    for m, seeds in g.seeds.items():
        for s in seeds:
            cases, values = _seed_values(g, m, s)
            value = (_statistic(g.natural, values, _primary(g.natural, values))(np.arange(len(cases))[None])[0, 0]
                     if cases else float("nan"))
            out.setdefault(m, {})[s] = (float(value), len(cases))
    return out


def _seed_stack(g: GroupAnalysis, method: str) -> dict[str, np.ndarray] | None:
    """``metric -> [n_seeds, n_cases, n_labels]`` of a method's seeds over the group's paired cases, in the order
    of ``g.cases``; None where it has one seed, or a seed lacks one of the paired cases."""
    seeds = g.seeds.get(method, [])
    if len(seeds) < 2:
        return None
    per = []
    for s in seeds:
        cases, values = _seed_values(g, method, s)
        if cases != g.cases:
            return None
        per.append(values)
    return {k: np.stack([v[k][:, 0] for v in per]) for k in METRICS}


def _seed_and_case_boot(g: GroupAnalysis, method: str, n_boot: int, seed: int,
                        base_stack: dict[str, np.ndarray] | None = None) -> np.ndarray | None:
    """The headline statistic's difference ``method - baseline`` in ``n_boot`` resamples of both levels of noise: each
    of the two draws as many of its seeds as it has, with replacement (independently: seeds are not paired), and the
    cases are resampled with the headline's own indices (the same for both: cases stay paired). A resample's value
    for a case is the mean over the drawn seeds, as the report averages seeds (:func:`seed_means`). None where the
    method or the baseline has one seed (no seed noise to resample) or a seed lacks a paired case. ``base_stack``:
    the baseline's :func:`_seed_stack`, when the caller has it already."""
    stacks = [_seed_stack(g, method), base_stack if base_stack is not None else _seed_stack(g, g.baseline)]
    if stacks[0] is None or stacks[1] is None:
        return None
    rng = np.random.default_rng([seed, 1])
    case_idx = rk.bootstrap_indices(len(g.cases), n_boot, seed)
    out = np.empty(n_boot)
    with warnings.catch_warnings():  # a metric no drawn seed scored stays NaN, as in seed_means
        warnings.simplefilter("ignore", RuntimeWarning)
        for b in range(n_boot):
            draws = [rng.integers(0, len(s["tp"]), len(s["tp"])) for s in stacks]  # one draw for every metric
            values = {k: np.stack([np.nanmean(s[k][d], axis=0) for s, d in zip(stacks, draws)], axis=1)
                      for k in METRICS}  # [n_cases, 2, n_labels]
            pair = _statistic(g.natural, values, _primary(g.natural, values))(case_idx[b][None])[0]
            out[b] = pair[0] - pair[1]
    return out


def _reorder(g: GroupAnalysis, order: np.ndarray) -> None:
    """Put the methods in headline order everywhere."""
    g.methods = [g.methods[i] for i in order]
    g.values = {k: v[:, order] for k, v in g.values.items()}
    g.primary = g.primary[:, order]
    g.rankings = {k: v[order] for k, v in g.rankings.items()}
    h = g.headline
    if h is not None:
        g.headline = Headline(h.statistic, h.short, h.values[order], h.sd[order], h.sd_kind, h.low[order],
                              h.high[order], h.ranks[order], rk.rank_interval(rk.rank_values(h.boot[:, order], True,
                                                                                              axis=1),
                                                                               h.interval.level),
                              h.boot[:, order])
    if g.boot is not None:
        g.boot = g.boot[:, order]
        g.interval = rk.rank_interval(g.boot, g.interval.level)
    if g.tests is not None:
        ix = np.ix_(order, order)
        g.tests = st.PairwiseTests(g.tests.p[ix], g.tests.p_holm[ix], g.tests.better[ix], g.tests.alpha)
        g.wins = g.wins[order]
        g.friedman.average_ranks = g.friedman.average_ranks[order]
    if g.pooled is not None:
        g.pooled = g.pooled[order]


def _baseline_differences(g: GroupAnalysis, baseline: str | None, n_boot: int = 1000, seed: int = 0) -> None:
    """Paired differences of every loss against the baseline (or, when the group lacks it, the headline's best): the
    interval over cases, and where both have several seeds a second one over seeds and cases."""
    if g.headline is None or len(g.methods) < 2:
        return
    base = baseline if baseline in g.methods else None
    if base is None:
        base = g.methods[0]
        if baseline:
            g.notes.append(f"the baseline loss {baseline} is not in this group: differences are against the "
                           f"headline's first loss, {base}")
    b = g.methods.index(base)
    g.baseline = base
    h = g.headline
    diffs = h.boot - h.boot[:, [b]]
    low, high = st.percentile_interval(diffs)
    base_stack = _seed_stack(g, base)  # the baseline's seeds, built once for every loss compared with it
    for j, m in enumerate(g.methods):
        if j == b:
            continue
        d = Difference(m, float(h.values[j] - h.values[b]), float(low[j]), float(high[j]),
                       float(g.tests.p_holm[j, b]) if g.tests is not None else float("nan"))
        both = None if base_stack is None else _seed_and_case_boot(g, m, n_boot, seed, base_stack)
        if both is not None:
            d.seed_low, d.seed_high = (float(x) for x in st.percentile_interval(both))
        g.differences.append(d)


def headline_json(g: GroupAnalysis) -> dict:
    """The verdict of a group for scripts: its key, what is ranked, and the losses in order with value, 95 % interval
    and bootstrap rank interval."""
    out = dict(zip(GROUP_FIELDS, g.key))
    out["natural_image"] = g.natural
    out["n_cases"] = len(g.cases)
    if g.headline is None:
        return {**out, "statistic": None, "ranking": []}
    h = g.headline
    out["statistic"] = h.statistic
    out["higher_is_better"] = True
    out["interval"] = "95% paired bootstrap percentile interval over cases"
    out["sd"] = h.sd_kind
    out["ranking"] = [{"loss": m, "rank": float(h.ranks[j]), "value": _num(h.values[j]), "sd": _num(h.sd[j]),
                       "ci_low": _num(h.low[j]), "ci_high": _num(h.high[j]),
                       "rank_interval": [float(h.interval.low[j]), float(h.interval.high[j])],
                       "seeds": g.seeds.get(m, [])}
                      for j, m in enumerate(g.methods)]
    return out


def _num(x: float) -> float | None:
    return None if not np.isfinite(x) else float(x)


# ------------------------------------------------------------------------------------------- other tables


def fold_table(rows: Sequence[dict], natural: bool) -> dict[str, dict[str, float]]:
    """Headline statistic per method and fold, over every case of that fold (not only the paired ones): the
    per-fold numbers nnU-Net users report. Medical: mean over the fold's cases of the per-case mean Dice;
    natural: the fold's dataset-level mIoU. Several seeds of a method count as one, by their mean per case
    (:func:`seed_means`)."""
    fold_of = {(r["method"], r["case"]): str(r["fold"]) for r in rows}
    by: dict[tuple[str, str], dict[str, list[tuple[int, dict[str, float]]]]] = {}
    for (method, case, label), v in seed_means(rows).items():
        by.setdefault((method, fold_of[method, case]), {}).setdefault(case, []).append((label, v))
    out: dict[str, dict[str, float]] = {}
    for (method, fold), cases in by.items():
        if natural:
            counts = [[v for _, v in sorted(c, key=lambda x: x[0])] for c in cases.values()]
            tp, fp, fn = (np.array([[v[k] for v in c] for c in counts]) for k in ("tp", "fp", "fn"))
            value = float(rk.miou_over_reference_classes(tp[:, None], fp[:, None], fn[:, None])[0])
        else:
            value = float(np.mean([np.nanmean([v["dice"] for _, v in c]) for c in cases.values()]))
        out.setdefault(method, {})[fold] = value
    return out


def empty_counts(rows: Sequence[dict]) -> dict[tuple[str, str], dict[str, int]]:
    """Per (method, class name): cases, cases whose reference is empty, whose prediction is empty, and both."""
    out: dict[tuple[str, str], dict[str, int]] = {}
    for r in rows:
        c = out.setdefault((r["method"], r["class_name"]), {"cases": 0, "ref_empty": 0, "pred_empty": 0, "both": 0})
        c["cases"] += 1
        c["ref_empty"] += bool(r["ref_empty"])
        c["pred_empty"] += bool(r["pred_empty"])
        c["both"] += bool(r["ref_empty"]) and bool(r["pred_empty"])
    return out
