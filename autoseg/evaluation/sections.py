"""The sections of the report, in order. Each is a function that adds headings, text, tables and figures to a
:class:`~autoseg.evaluation.document.Doc`; a new section is one more decorated function here (or in a module that
imports :func:`report_section` / :func:`group_section`)."""

from __future__ import annotations

import json
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from autoseg.evaluation import ranking as rk
from autoseg.evaluation import stats as st
from autoseg.evaluation.analysis import GroupAnalysis, empty_counts, fold_table, seed_order
from autoseg.evaluation.dataset import load_dataset_info, read_segmentation, reference_for
from autoseg.evaluation.document import Doc
from autoseg.evaluation.metrics import nanmean_last, pooled_precision_recall
from autoseg.evaluation.runs import Run, fold_key
from autoseg.evaluation.scoring import Evaluation
from autoseg.evaluation.training_log import NNUNET_DEFAULT_EPOCHS, parse_training_log, run_cost


@dataclass
class ReportContext:
    """What every section may read: the evaluation, the analysed groups (cross-validation), the analysed held-out
    test sets and the options."""

    evaluation: Evaluation
    groups: list[GroupAnalysis]
    test_groups: list[tuple[str, GroupAnalysis]] = field(default_factory=list)  # (predictor, analysis)
    preprocessed: Path | None = None
    raw: Path | None = None
    alpha: float = 0.05
    baseline: str | None = "dice_ce"


ReportSection = Callable[[Doc, ReportContext], None]
GroupSection = Callable[[Doc, GroupAnalysis, ReportContext, str], None]
REPORT_SECTIONS: list[tuple[str, ReportSection]] = []  # the report, top to bottom
GROUP_SECTIONS: list[tuple[str, GroupSection]] = []  # within each group's part, top to bottom


def report_section(name: str):
    """Append a whole-report section (``fn(doc, ctx)``) to the report."""
    def wrap(fn: ReportSection) -> ReportSection:
        REPORT_SECTIONS.append((name, fn))
        return fn
    return wrap


def group_section(name: str):
    """Append a per-group section (``fn(doc, g, ctx, tag)``; ``tag`` makes table and figure names unique)."""
    def wrap(fn: GroupSection) -> GroupSection:
        GROUP_SECTIONS.append((name, fn))
        return fn
    return wrap


# ---------------------------------------------------------------------------------------------- formatting


def _ms(values: np.ndarray, scale: float = 1.0, digits: int = 2) -> str:
    v = np.asarray(values, float)
    v = v[~np.isnan(v)] * scale
    if v.size == 0:
        return "-"
    if v.size == 1:
        return f"{v[0]:.{digits}f}"
    return f"{v.mean():.{digits}f} ± {v.std(ddof=1):.{digits}f}"


def _median(values: np.ndarray, digits: int = 2) -> str:
    v = np.asarray(values, float)
    v = v[~np.isnan(v)]
    return f"{np.median(v):.{digits}f}" if v.size else "-"


def _pct(x: float, digits: int = 2) -> str:
    return "-" if x is None or not np.isfinite(x) else f"{x * 100:.{digits}f}"


def _ci(low: float, high: float, scale: float = 100.0) -> str:
    if not (np.isfinite(low) and np.isfinite(high)):
        return "-"
    return f"[{low * scale:.2f}, {high * scale:.2f}]"


def _fmt_rank(x: float) -> str:
    return f"{x:g}"


def _tag(key: Sequence[str]) -> str:
    return "_".join(key).replace("/", "-")


def _group_title(g: GroupAnalysis) -> str:
    dataset, configuration, architecture, _, budget = g.key
    return f"{dataset} — {configuration}, {architecture}, budget {budget}"


# ------------------------------------------------------------------------------------------ report sections


@report_section("verdict")
def verdict_section(doc: Doc, ctx: ReportContext) -> None:
    """The headline ranking of every group first: what a reader came for."""
    doc.h(1, "Headline ranking")
    usable = [g for g in ctx.groups if g.headline is not None]
    if not usable:
        doc.p("No group has a case shared by every loss: no ranking.")
        return
    doc.p("Each comparison group is ranked by one headline statistic: the mean foreground Dice over cases for medical "
          "data (case-level), the mIoU over all classes from one confusion matrix over the images for natural images "
          "(dataset-level, as Cityscapes reports it). Intervals are 95 % paired bootstrap percentile intervals over "
          "cases; every table below is ordered by this ranking. The consensus over metrics and classes is a "
          "secondary view (section Ranking of each group).")
    rows = []
    for g in usable:
        h = g.headline
        for j, m in enumerate(g.methods):
            rows.append([" / ".join((g.key[0], g.key[1], g.key[2], g.key[4])), h.short, _fmt_rank(h.ranks[j]), m,
                         _pct(h.values[j]), _ci(h.low[j], h.high[j]),
                         f"[{_fmt_rank(h.interval.low[j])}, {_fmt_rank(h.interval.high[j])}]"])
    doc.table("headline", ["group", "statistic", "rank", "loss", "value (%)", "95% CI", "rank 95% interval"], rows,
              "Headline ranking per group (value and interval in %)")


@report_section("runs")
def runs_section(doc: Doc, ctx: ReportContext) -> None:
    runs = ctx.evaluation.runs
    doc.h(1, "Runs")
    evaluated = [r for r in runs if r.state.startswith("evaluated")]
    other = [r for r in runs if not r.state.startswith("evaluated")]
    doc.p(f"{len(runs)} fold run(s) found or expected; {len(evaluated)} evaluated from nnU-Net's validation "
          f"predictions, {len(other)} not (listed below, never dropped silently).")
    if other:
        doc.table("runs_not_evaluated", ["dataset", "configuration", "architecture", "loss", "fold", "status", "why"],
                  [[r.dataset, r.configuration, r.architecture, r.method, r.fold, r.status, r.state] for r in other],
                  "Missing, failed, running or unreadable runs")
    doc.table("runs", ["dataset", "configuration", "architecture", "budget", "loss", "loss args", "fold", "seed",
                       "status", "cases", "newly computed"],
              [[r.dataset, r.configuration, r.architecture, r.budget, r.method, json.dumps(r.loss_args, sort_keys=True),
                r.fold, r.seed, r.status, r.n_cases, r.n_computed] for r in runs], "Every run")


@report_section("groups")
def groups_section(doc: Doc, ctx: ReportContext) -> None:
    """Cross-validation: one part per group, made of :data:`GROUP_SECTIONS`."""
    for g in ctx.groups:
        tag = _tag(g.key)
        for _, section in GROUP_SECTIONS:
            section(doc, g, ctx, tag)
            if not g.cases and section is group_header:
                break  # nothing paired: the header and its notes say why


@report_section("across_groups")
def across_groups_section(doc: Doc, ctx: ReportContext) -> None:
    usable = [g for g in ctx.groups if g.headline is not None]
    if len(usable) < 2:
        return
    common = sorted(set.intersection(*(set(g.methods) for g in usable)))
    doc.h(1, "Across datasets and configurations")
    if len(common) < 2:
        doc.p("Fewer than two losses appear in every group: no Friedman test across groups.")
        return
    matrix = np.array([[g.headline.values[g.methods.index(m)] for m in common] for g in usable])
    f = st.friedman(matrix)
    cd = st.nemenyi_critical_difference(len(common), len(usable), ctx.alpha)
    doc.p(f"Friedman over {len(usable)} group(s) (block: a dataset/configuration/architecture/budget; value: the "
          f"group's headline statistic), {len(common)} loss(es): chi2 = {f.statistic:.3f}, p = {f.pvalue:.3g}; "
          f"Iman-Davenport F = {f.f_statistic:.3f}, p = {f.f_pvalue:.3g}; Nemenyi CD = {cd:.3f} at alpha "
          f"{ctx.alpha}.")
    doc.table("friedman_across_groups", ["loss", "average rank"] + [" / ".join(g.key[:3]) for g in usable],
              [[m, f"{f.average_ranks[j]:.2f}"] + [f"{matrix[i, j]:.4f}" for i in range(len(usable))]
               for j, m in enumerate(common)], "Headline statistic per group and average Friedman rank")
    _cd_figure(doc, "cd_across_groups", common, f, cd, ctx.alpha, f"average rank over {len(usable)} groups",
               "Critical-difference diagram across datasets and configurations")
    names = [" / ".join(g.key[:3]) for g in usable]
    taus = [[st.kendall_tau_test(matrix[i], matrix[k]) for k in range(len(usable))] for i in range(len(usable))]
    doc.table("kendall_across_groups", ["group"] + names,
              [[names[i]] + ["1" if i == k else f"{t:.2f} (p {p:.2g})" for k, (t, p) in enumerate(row)]
               for i, row in enumerate(taus)],
              f"Kendall's tau between the groups' headline rankings of the {len(common)} losses every group has "
              "(1: the same order, 0: unrelated, -1: reversed; p of the test of no association): how far a loss "
              "ranking found on one dataset or configuration carries to another")


@report_section("test_set")
def test_set_section(doc: Doc, ctx: ReportContext) -> None:
    """Held-out test sets (rows with ``split == "test"``), kept apart from the cross-validation above."""
    doc.h(1, "Held-out test set (separate from cross-validation)")
    if not ctx.test_groups:
        doc.p("No held-out test-set results were found: every number above is cross-validation (each fold's "
              "validation cases). A dataset with imagesTs/labelsTs gets test-set rows once its test images are "
              "predicted and scored (split 'test' in the evaluation table).")
        return
    doc.p("These numbers come from the dataset's held-out test cases (labelsTs), never seen in training or in model "
          "selection; the cross-validation sections above do not include them.")
    for predictor, g in ctx.test_groups:
        tag = "test_" + _tag(g.key) + f"_{predictor}"
        by = f"fold {predictor}" if predictor.isdigit() else predictor  # the ensemble, or one fold's own model
        doc.h(2, f"{_group_title(g)}: predicted by {by}")
        for note in g.notes:
            doc.p("Note: " + note)
        if g.headline is None:
            continue
        _headline_table(doc, g, tag, f"Test set, {by}")
        _differences_table(doc, g, tag)
        _seeds_table(doc, g, tag, level=3)  # under the test group's own heading


def _cd_figure(doc: Doc, name: str, methods: Sequence[str], f: st.FriedmanResult, cd: float, alpha: float,
               axis_title: str, caption: str) -> None:
    """The critical-difference diagram, drawn only when the Friedman test rejects (a post-hoc test after no
    omnibus difference would read differences into noise)."""
    if not f.rejects(alpha):
        doc.p(f"No critical-difference diagram: the Friedman test does not reject equal performance at alpha {alpha} "
              f"(Iman-Davenport p = {f.f_pvalue:.3g}), so no post-hoc comparison of average ranks is made.")
        return
    from autoseg.evaluation import plots

    doc.img(name, plots.cd_diagram(methods, f.average_ranks, cd, st.cd_cliques(f.average_ranks, cd), axis_title),
            caption)


# ------------------------------------------------------------------------------------------- group sections


@group_section("header")
def group_header(doc: Doc, g: GroupAnalysis, ctx: ReportContext, tag: str) -> None:
    _, _, _, plans, budget = g.key
    doc.h(1, _group_title(g))
    group_runs = [r for r in ctx.evaluation.runs if r.group == g.key]
    details = {json.dumps(r.budget_detail, sort_keys=True) for r in group_runs if r.budget_detail}
    seeds = sorted({r.seed for r in group_runs if r.seed != ""})
    folds = sorted({r.fold for r in group_runs if r.state.startswith("evaluated")}, key=fold_key)
    doc.p(f"Cross-validation. Plans {plans}; budget {budget} {' / '.join(sorted(details)) or ''}; seed(s) "
          f"{', '.join(seeds) or '-'}; folds evaluated {', '.join(folds) or '-'}; {len(g.methods)} loss(es); "
          f"{len(g.cases)} paired case(s).")
    if len(details) > 1:
        doc.p("WARNING: the losses of this group do not share one budget; the comparison is not fixed-budget.")
    if g.natural:
        doc.p("Natural images: IoU per class is dataset-level, from one confusion matrix summed over all validation "
              "images (as Cityscapes reports it); the headline mIoU is their mean over all classes; its spread is the "
              "bootstrap standard deviation over images. The paired tests and the rank intervals resample or permute "
              "whole images and recompute the confusion matrix, so they test the mIoU itself. Per-image scores "
              "(box plots, rank-then-aggregate, Friedman) average the IoU over the classes present in the image's "
              "reference or prediction; a class absent from both is left out, not scored 1.")
    else:
        doc.p("Medical volumes: every number is case-level (one value per validation volume), shown as mean, standard "
              "deviation over cases and a 95 % bootstrap interval of the mean; DSC in %, HD95 in mm; empty "
              "structures scored by the policy of docs/evaluation.md before averaging.")
    info = ctx.evaluation.datasets.get(g.key[0])
    if info is not None:
        left_out = info.excluded_labels()
        if left_out:
            doc.p("Classes not evaluated, on purpose: " + ", ".join(f"label {v} ({n})" for v, n in left_out.items())
                  + (" — the background of a medical image, left out of every foreground mean as in nnU-Net and the "
                     "survey." if not g.natural else "."))
        else:
            doc.p(f"Every class of the dataset is evaluated ({len(info.evaluated_labels())}: "
                  + ", ".join(info.class_name(v) for v in info.evaluated_labels()) + ").")
    for note in g.notes:
        doc.p("Note: " + note)


def _headline_table(doc: Doc, g: GroupAnalysis, tag: str, what: str) -> None:
    """The survey's table led by the headline statistic: value, sd, 95 % interval and rank interval per loss, then
    the per-class numbers."""
    h = g.headline
    names = g.class_names
    if g.natural:
        header = ["loss", "mIoU (%)", "sd (bootstrap)", "95% CI", "rank", "rank 95% interval"]
        header += [f"IoU {n} (%)" for n in names]
        rows = []
        for j, m in enumerate(g.methods):
            rows.append([m, _pct(h.values[j]), _pct(h.sd[j]), _ci(h.low[j], h.high[j]), _fmt_rank(h.ranks[j]),
                         f"[{_fmt_rank(h.interval.low[j])}, {_fmt_rank(h.interval.high[j])}]"]
                        + [_pct(x) for x in g.pooled[j]])
        doc.table(f"iou_{tag}", header, rows, f"{what}: mIoU and IoU per class, dataset-level (survey layout), "
                                              "ordered by the headline mIoU")
        return
    dice, hd, nsd = g.values["dice"], g.values["hd95"], g.values["nsd"]
    has_dist = not np.all(np.isnan(hd))
    header = ["loss", "DSC avg (%)", "95% CI", "rank", "rank 95% interval"]
    header += ["HD95 avg (mm)", "HD95 median (mm)", "NSD avg (%)"] if has_dist else []
    header += [f"DSC {n} (%)" for n in names]
    rows = []
    for j, m in enumerate(g.methods):
        row = [m, _ms(nanmean_last(dice[:, j]), 100), _ci(h.low[j], h.high[j]), _fmt_rank(h.ranks[j]),
               f"[{_fmt_rank(h.interval.low[j])}, {_fmt_rank(h.interval.high[j])}]"]
        if has_dist:
            hd_case = nanmean_last(hd[:, j])
            row += [_ms(hd_case), _median(hd_case), _ms(nanmean_last(nsd[:, j]), 100)]
        row += [_ms(dice[:, j, k], 100) for k in range(len(names))]
        rows.append(row)
    doc.table(f"dsc_{tag}", header, rows, f"{what}: DSC per class and overall, mean ± sd over cases, 95% bootstrap "
                                          "interval of the mean (survey layout), ordered by the headline DSC")


@group_section("headline_table")
def headline_table_section(doc: Doc, g: GroupAnalysis, ctx: ReportContext, tag: str) -> None:
    doc.h(2, f"Headline: {g.headline.statistic}")
    _headline_table(doc, g, tag, "Cross-validation")


@group_section("per_fold")
def per_fold_section(doc: Doc, g: GroupAnalysis, ctx: ReportContext, tag: str) -> None:
    table = fold_table(g.rows, g.natural)
    folds = sorted({f for d in table.values() for f in d}, key=fold_key)
    what = "mIoU (dataset-level per fold)" if g.natural else "mean DSC over the fold's cases"
    rows = []
    for m in g.methods:
        v = np.array([table.get(m, {}).get(f, np.nan) for f in folds])
        ok = v[~np.isnan(v)]
        rows.append([m] + [_pct(x) for x in v] + [_pct(ok.mean()) if ok.size else "-",
                                                  _pct(ok.std(ddof=1)) if ok.size > 1 else "-"])
    doc.h(2, "Per fold")
    doc.table(f"folds_{tag}", ["loss"] + [f"fold {f} (%)" for f in folds] + ["mean over folds (%)",
                                                                            "sd over folds (%)"], rows,
              f"{what} per fold, every case of the fold; mean and sd across folds as nnU-Net users report "
              "cross-validation")


def _differences_table(doc: Doc, g: GroupAnalysis, tag: str) -> None:
    if not g.differences:
        return
    short = g.headline.short
    test = "permutation" if g.natural else "Wilcoxon"
    seeded = any(np.isfinite(d.seed_low) for d in g.differences)
    rows = [[d.method, f"{d.diff * 100:+.2f}", _ci(d.low, d.high)] + ([_ci(d.seed_low, d.seed_high)] if seeded else [])
            + [f"{d.p_holm:.3g}" if np.isfinite(d.p_holm) else "-"] for d in g.differences]
    doc.table(f"vs_baseline_{tag}", ["loss", f"Δ {short} vs {g.baseline} (points)", "95% CI"]
              + ([f"95% CI over seeds and {'images' if g.natural else 'cases'}"] if seeded else [])
              + [f"{test} p (Holm)"],
              rows, f"Paired differences against the baseline {g.baseline} (loss minus baseline, percentage points; "
                    "95% paired bootstrap interval over cases; p of the paired test, Holm over all pairs)"
                    + ("; where the loss and the baseline both have several seeds, a second interval that also "
                       "resamples their seeds (section Seeds): the interval over cases and the test see only the "
                       "cases, not how a second training run would land" if seeded else ""))


def _seeds_table(doc: Doc, g: GroupAnalysis, tag: str, level: int = 2) -> None:
    """Each seed of each loss alone, beside the spread between losses: seed noise next to loss differences."""
    if not g.per_seed or g.headline is None:
        return
    from autoseg.evaluation import plots

    h = g.headline
    seeds = sorted({s for d in g.per_seed.values() for s in d}, key=seed_order)
    diff = {d.method: d for d in g.differences}
    rows, seed_sd = [], []
    for j, m in enumerate(g.methods):
        per = g.per_seed.get(m, {})
        v = np.array([per[s][0] for s in per])
        sd = v.std(ddof=1) if np.isfinite(v).sum() > 1 else float("nan")
        if np.isfinite(sd):
            seed_sd.append(sd)
        d = diff.get(m)
        rows.append([m, len(per), ", ".join(str(c) for _, c in per.values())]
                    + [_pct(per[s][0]) if s in per else "-" for s in seeds]
                    + [_pct(np.nanmean(v)) if np.isfinite(v).any() else "-", _pct(sd), _pct(h.values[j])]
                    + (["0 (baseline)" if m == g.baseline else f"{d.diff * 100:+.2f} {_ci(d.low, d.high)}",
                        "-" if m == g.baseline or not np.isfinite(d.seed_low) else _ci(d.seed_low, d.seed_high)]
                       if g.differences else []))
    unit = "images" if g.natural else "cases"
    header = ["loss", "seeds", f"paired {unit} per seed"] + [f"seed {s} {h.short} (%)" for s in seeds] + [
        "mean over seeds (%)", "sd over seeds (%)", f"{h.short} of the seed means (%)"]
    header += [f"Δ vs {g.baseline} (points, 95% CI over {unit})", "95% CI over seeds and " + unit] \
        if g.differences else []
    doc.h(level, "Seeds")
    doc.table(f"seeds_{tag}", header, rows,
              f"The headline {h.short} of every seed alone over the paired {unit} it scored, its mean and sd over "
              f"seeds, and the value the report ranks (each of the {len(g.cases)} paired {unit} the mean over "
              "seeds); last, the paired difference to the baseline with its 95% bootstrap interval over "
              f"{unit}, and where the loss and the baseline both have several seeds a second interval that also "
              f"resamples each one's seeds (as many as it has, with replacement; the {unit} stay paired). With two "
              "or three seeds that second interval is coarse and, like any bootstrap over k values, too narrow by "
              "about a factor sqrt((k-1)/k) in its seed part: read its width as a lower bound")
    seeded = [d for d in g.differences if np.isfinite(d.seed_low)]
    between = h.values.std(ddof=1) if len(h.values) > 1 else float("nan")
    spread = (f"{_pct(min(seed_sd))} to {_pct(max(seed_sd))} points (median {_pct(float(np.median(seed_sd)))})"
              if seed_sd else "-")
    doc.p(f"Seed noise against loss differences: the sd over seeds of one loss is {spread}; the sd of the "
          f"{h.short} between the {len(g.methods)} losses is {_pct(between)} points and their range "
          f"{_pct(float(h.values.max() - h.values.min()))} points. Two losses closer than the seed spread cannot be "
          "told apart by this study." + _seed_interval_summary(seeded, g.baseline, unit))
    doc.img(f"seeds_{tag}", plots.seed_dots(g.methods, [[per[0] for per in g.per_seed.get(m, {}).values()]
                                                        for m in g.methods], h.values, h.short),
            f"{h.short} per loss: one dot per seed, the bar the value of the seed means")


def _seed_interval_summary(seeded: list, baseline: str, unit: str) -> str:
    """Which seeded losses differ from the baseline once seed noise is resampled too, and which do not."""
    if not seeded:
        return ""

    def listed(ds):
        return ", ".join(f"{d.method} {d.diff * 100:+.2f} {_ci(d.seed_low, d.seed_high)}" for d in ds) or "none"
    apart = [d for d in seeded if d.seed_low > 0 or d.seed_high < 0]
    return (f" Resampling seeds and {unit} together, the interval against {baseline} excludes 0 for "
            f"{listed(apart)}; it includes 0 for {listed([d for d in seeded if d not in apart])}.")


@group_section("baseline")
def baseline_section(doc: Doc, g: GroupAnalysis, ctx: ReportContext, tag: str) -> None:
    if g.differences:
        doc.h(2, f"Against the baseline ({g.baseline})")
        _differences_table(doc, g, tag)


@group_section("seeds")
def seeds_section(doc: Doc, g: GroupAnalysis, ctx: ReportContext, tag: str) -> None:
    _seeds_table(doc, g, tag)


@group_section("distance_tables")
def distance_tables_section(doc: Doc, g: GroupAnalysis, ctx: ReportContext, tag: str) -> None:
    hd, nsd = g.values["hd95"], g.values["nsd"]
    if np.all(np.isnan(hd)):
        return
    names = g.class_names
    doc.h(2, "Surface distances")
    doc.table(f"hd95_{tag}", ["loss"] + [f"HD95 {n} (mm)" for n in names] + [f"HD95 {n} median (mm)" for n in names],
              [[m] + [_ms(hd[:, j, k]) for k in range(len(names))] + [_median(hd[:, j, k]) for k in range(len(names))]
               for j, m in enumerate(g.methods)],
              "HD95 per class, mean ± sd over cases, and the median (an empty structure counts as the image diagonal)")
    doc.table(f"nsd_{tag}", ["loss"] + [f"NSD {n} (%)" for n in names],
              [[m] + [_ms(nsd[:, j, k], 100) for k in range(len(names))] for j, m in enumerate(g.methods)],
              "NSD per class, mean ± sd over cases")


@group_section("over_under_segmentation")
def over_under_segmentation_section(doc: Doc, g: GroupAnalysis, ctx: ReportContext, tag: str) -> None:
    """Precision, recall and volume ratio per class: whether a loss's Dice is lost to false positives or to
    false negatives (e.g. Tversky's defaults weigh false negatives more, and over-segment)."""
    tp, fp, fn = g.values["tp"], g.values["fp"], g.values["fn"]
    if np.all(np.isnan(tp)):
        return
    precision, recall, ratio = pooled_precision_recall(tp, fp, fn, axis=0)  # [n_methods, n_labels]
    names = g.class_names
    doc.h(2, "Over- and under-segmentation")
    caption = (f"Precision TP/(TP+FP) and recall TP/(TP+FN) per class from the counts summed over the {len(g.cases)} "
               "paired cases (dataset-level: larger structures weigh more); '-' where nothing was predicted "
               "(precision) or nothing is in the reference (recall)")
    if g.natural:
        doc.table(f"precision_recall_{tag}", ["loss"] + [f"{n} precision / recall (%)" for n in names],
                  [[m] + [f"{_pct(precision[j, k], 1)} / {_pct(recall[j, k], 1)}" for k in range(len(names))]
                   for j, m in enumerate(g.methods)], caption)
        return
    doc.table(f"precision_recall_{tag}",
              ["loss"] + [f"{h} {n}" for n in names for h in ("precision (%)", "recall (%)", "volume ratio")],
              [[m] + [c for k in range(len(names))
                      for c in (_pct(precision[j, k]), _pct(recall[j, k]),
                                "-" if np.isnan(ratio[j, k]) else f"{ratio[j, k]:.3f}")]
               for j, m in enumerate(g.methods)],
              caption + "; volume ratio: predicted over reference volume, above 1 over-segments")


@group_section("empty")
def empty_section(doc: Doc, g: GroupAnalysis, ctx: ReportContext, tag: str) -> None:
    counts = empty_counts(g.rows)
    rows = []
    for m in g.methods:
        for n in g.class_names:
            c = counts.get((m, n))
            if c is not None:
                rows.append([m, n, c["cases"], c["ref_empty"], c["pred_empty"], c["both"]])
    doc.h(2, "Empty structures")
    doc.table(f"empty_{tag}", ["loss", "class", "cases", "empty reference", "empty prediction", "both empty"], rows,
              "Cases per loss and class whose reference or prediction is empty (scored by the empty-structure "
              "policy: both empty DSC 1, one empty DSC 0 and HD95 the image diagonal)"
              + ("; for natural images a class empty in both is left out of the per-image mean" if g.natural else "")
              + ("; a loss with several seeds counts each seed's prediction of a case" if g.several_seeds else ""))


@group_section("ranking")
def ranking_section(doc: Doc, g: GroupAnalysis, ctx: ReportContext, tag: str) -> None:
    from autoseg.evaluation import plots

    doc.h(2, "Ranking (secondary views)")
    names = list(g.rankings)
    header = ["loss"] + names + ["consensus bootstrap median", "consensus 95% interval"]
    if g.wins is not None:
        header.append("significant wins")
    rows = []
    for j, m in enumerate(g.methods):
        row = [m] + [_fmt_rank(g.rankings[n][j]) for n in names]
        row += [_fmt_rank(g.interval.median[j]), f"[{_fmt_rank(g.interval.low[j])}, {_fmt_rank(g.interval.high[j])}]"]
        if g.wins is not None:
            row.append(str(int(g.wins[j])))
        rows.append(row)
    doc.table(f"ranking_{tag}", header, rows,
              f"The headline first; consensus: mean of per-task ranks over {len(g.consensus_tasks)} task(s) "
              f"({', '.join(g.consensus_tasks)}), interval from {g.boot.shape[0]} bootstrap resamples of the cases")
    head = names[0]
    disagree = [n for n in names[1:] if g.rankings[n][0] != g.rankings[head][0]]
    if disagree:
        doc.p(f"The loss first by the headline ({g.methods[0]}) is not first by: {'; '.join(disagree)}. "
              + ("Per-image views weigh a stray pixel of a class absent from an image as much as a whole class; the "
                 "dataset-level mIoU weighs errors by their pixels. The headline is the survey's statistic."
                 if g.natural else "The rankings weigh the cases and metrics differently; the headline is the "
                                   "survey's statistic."))
    if len(names) > 1:
        tau = [[n] + [f"{st.kendall_tau(g.rankings[n], g.rankings[o]):.2f}" for o in names] for n in names]
        doc.table(f"kendall_{tag}", ["ranking"] + names, tau, "Kendall's tau between the rankings")
    rv, freq = rk.rank_frequencies(rk.rank_values(g.headline.boot, True, axis=1))
    doc.img(f"blob_{tag}", plots.blob_plot(g.methods, rv, freq, g.headline.interval.median, g.headline.interval.low,
                                           g.headline.interval.high),
            f"Bootstrap rank distribution of the headline {g.headline.short} (disc area: share of resamples; "
            "line: 95% interval)")


@group_section("significance")
def significance_section(doc: Doc, g: GroupAnalysis, ctx: ReportContext, tag: str) -> None:
    if g.tests is None:
        return
    from autoseg.evaluation import plots

    doc.h(2, "Significance")
    k = len(g.methods)
    rows = [[g.methods[i]] + ["-" if i == j else
                              f"{g.tests.p_holm[i, j]:.3g}{' <' if g.tests.better[i, j] else ''}"
                              f"{' >' if g.tests.better[j, i] else ''}" for j in range(k)] for i in range(k)]
    doc.table(f"significance_{tag}", ["loss"] + g.methods, rows,
              f"Two-sided {g.test_name}; Holm-adjusted p; '<' row better than column, '>' worse, at alpha "
              f"{ctx.alpha}")
    doc.img(f"significance_{tag}", plots.significance_heatmap(g.methods, g.tests.p_holm, g.tests.better, ctx.alpha),
            "Significance matrix (Holm-adjusted p-values)")
    f = g.friedman
    what = "per-image IoU (classes present)" if g.natural else "per-case DSC"
    doc.p(f"Friedman over the {f.n_blocks} paired case(s) on the {what}: chi2 = {f.statistic:.3f}, "
          f"p = {f.pvalue:.3g}; Iman-Davenport F = {f.f_statistic:.3f}, p = {f.f_pvalue:.3g}; Nemenyi critical "
          f"difference {g.cd:.3f} at alpha {ctx.alpha}."
          + (" Ranks per image are a secondary view: they can disagree with the dataset-level mIoU, which the "
             "headline and the paired tests above use." if g.natural else ""))
    _cd_figure(doc, f"cd_cases_{tag}", g.methods, f, g.cd, ctx.alpha,
               f"average rank over {f.n_blocks} cases ({g.primary_name})",
               "Critical-difference diagram over cases (bars join losses not significantly different)")


@group_section("distributions")
def distributions_section(doc: Doc, g: GroupAnalysis, ctx: ReportContext, tag: str) -> None:
    from autoseg.evaluation import plots

    doc.h(2, "Per-case distributions")
    metric = "iou" if g.natural else "dice"
    values = g.values[metric]
    if g.natural:  # a class absent from both reference and prediction has no per-image value
        present = (np.nan_to_num(g.values["tp"]) + np.nan_to_num(g.values["fp"]) + np.nan_to_num(g.values["fn"])) > 0
        values = np.where(present, values, np.nan)
    doc.img(f"box_{metric}_{tag}", plots.boxplots_per_class(
        {n: [values[:, j, k] for j in range(len(g.methods))] for k, n in enumerate(g.class_names)},
        g.methods, "IoU" if g.natural else "DSC"), f"Per-case {metric.upper()} per class")
    if not g.natural and not np.all(np.isnan(g.values["hd95"])):
        doc.img(f"box_hd95_{tag}", plots.boxplots_per_class(
            {n: [g.values["hd95"][:, j, k] for j in range(len(g.methods))] for k, n in enumerate(g.class_names)},
            g.methods, "HD95 (mm)"), "Per-case HD95 per class")


def _group_runs(g: GroupAnalysis, runs: Sequence[Run]) -> list[Run]:
    out = [r for r in runs if r.group == g.key and r.status != "missing" and r.method in g.methods]
    return sorted(out, key=lambda r: (g.methods.index(r.method), fold_key(r.fold), r.seed))


def _seconds(x: float | None) -> str:
    if x is None:
        return "-"
    return f"{x:.0f} s" if x < 600 else f"{x / 60:.1f} min"


@group_section("cost")
def cost_section(doc: Doc, g: GroupAnalysis, ctx: ReportContext, tag: str) -> None:
    doc.h(2, "Cost of the runs")
    rows, costs = [], []
    for r in _group_runs(g, ctx.evaluation.runs):
        c = run_cost(r)
        costs.append(c)
        epochs = "-" if c.epochs_completed is None else str(c.epochs_completed)
        if c.epochs_planned is not None:
            epochs += f" / {c.epochs_planned}"
        # a group with seeds says which run each row is (one loss and fold has a run per seed)
        rows.append([r.method, r.fold] + ([r.seed] if g.several_seeds else [])
                    + [c.device or "-", epochs, _seconds(c.wall_seconds),
                       "-" if c.seconds_per_epoch is None else f"{c.seconds_per_epoch:.2f}", c.source])
    if not rows:
        doc.p("No run of this group to report the cost of.")
        return
    doc.table(f"cost_{tag}", ["loss", "fold"] + (["seed"] if g.several_seeds else [])
              + ["device", "epochs completed / planned", "wall time", "s per epoch", "from"], rows,
              "Cost per run, from autoseg.json and nnU-Net's training log ('-' where neither says)")
    planned = [c.epochs_planned if c.epochs_planned is not None else c.epochs_completed for c in costs]
    known = [n for n in planned if n is not None]
    if any(c.budget_limited for c in costs):
        doc.p(f"These runs were budget-limited: at most {max(known)} epoch(s), where nnU-Net's default schedule is "
              f"{NNUNET_DEFAULT_EPOCHS}. Short training may rank losses differently from full training: a loss that "
              "converges fast is favoured, one that needs long training is not.")
    elif not known:
        doc.p("The training length of these runs is unknown (no autoseg.json budget and no training log): the "
              "report cannot say whether they were trained to nnU-Net's full schedule.")


@group_section("training_curves")
def training_curves_section(doc: Doc, g: GroupAnalysis, ctx: ReportContext, tag: str) -> None:
    from autoseg.evaluation import plots

    doc.h(2, "Training curves")
    group_runs = _group_runs(g, ctx.evaluation.runs)
    curves: dict[str, list[dict]] = {}
    for r in group_runs:
        c = parse_training_log(list(r.path.glob("training_log_*.txt")))
        if not c["epoch"] and (r.meta or {}).get("curves"):
            # a run of a result store: no log files, the curves its record keeps
            c = {k: [float("nan") if v is None else float(v) for v in vals] for k, vals in r.meta["curves"].items()}
        if c["epoch"]:
            curves.setdefault(r.method, []).append(c)
    if curves:
        doc.img(f"curves_{tag}", plots.training_curves(curves),
                "Training curves from nnU-Net's training logs (one line per fold; losses are on each loss's own "
                "scale, the pseudo Dice is comparable)")
    shown = 0
    for r in group_runs:
        png = r.path / "progress.png"
        if png.is_file():
            name = f"progress_{tag}_{r.method}_fold{r.fold}"
            for a, b in (("[", "_"), ("]", ""), (",", "_"), ("=", "-")):
                name = name.replace(a, b)
            doc.img(name, plots.downscale_png(png.read_bytes()), f"{r.method}, fold {r.fold}: nnU-Net's progress.png")
            shown += 1
    if not shown and not curves:
        doc.p("No training log or progress.png found in any run of this group.")


@group_section("qualitative")
def qualitative_section(doc: Doc, g: GroupAnalysis, ctx: ReportContext, tag: str) -> None:
    from autoseg.evaluation import plots

    doc.h(2, "Qualitative comparison")
    preprocessed, raw, runs = ctx.preprocessed, ctx.raw, ctx.evaluation.runs
    spread = np.nanmax(g.primary, axis=1) - np.nanmin(g.primary, axis=1)
    case = g.cases[int(np.nanargmax(spread))] if np.any(np.isfinite(spread)) else g.cases[0]
    preds, ref, image = {}, None, None
    try:
        for m in g.methods[:9]:
            run = next((r for r in runs if r.group == g.key and r.method == m and r.state.startswith("evaluated")
                        and any((r.path / "validation").glob(f"{case}.*"))), None)
            if run is None:
                continue
            info = load_dataset_info(run, preprocessed, raw)
            p = run.path / "validation" / f"{case}{info.file_ending}"
            if not p.is_file():
                continue
            preds[m] = read_segmentation(p)[0]
            if ref is None:
                refp = reference_for(case, info, run, preprocessed, raw, {})
                ref = read_segmentation(refp)[0] if refp else None
                imgp = Path(raw) / run.dataset / "imagesTr" / f"{case}_0000{info.file_ending}" if raw else None
                if imgp is not None and imgp.is_file():
                    image = read_segmentation(imgp)[0].astype(float)
    except (OSError, RuntimeError, ValueError) as e:
        doc.p(f"No qualitative figure: {e}")
        return
    if ref is None or not preds:
        doc.p("No qualitative figure: reference or predictions not readable.")
        return
    if ref.ndim == 3 and ref.shape[0] > 1:
        # the slice showing the most classes, then the most foreground
        flat = ref.reshape(ref.shape[0], -1)
        n_classes = np.array([len(np.unique(s[s > 0])) for s in flat])
        z = int(np.argmax(n_classes * flat.shape[1] + (flat > 0).sum(axis=1)))
        sl: tuple = (z,)
        where = f"slice {z} of axis 0"
    else:
        sl = (0,) if ref.ndim == 3 else ()
        where = "the image"
    img2d = image[sl] if image is not None and image.shape == ref.shape else None
    doc.img(f"qualitative_{tag}", plots.qualitative(img2d, ref[sl], {m: p[sl] for m, p in preds.items()},
                                                    f"case {case}, {where}"),
            f"Case {case} (where the losses differ most), {where}: reference and every loss over the image"
            + ("" if img2d is not None else " (image not found: set nnUNet_raw or --raw)"))
