"""Analyse the evaluation table (per-loss tables, rankings, tests) and write Markdown, self-contained HTML and CSVs."""

from __future__ import annotations

import base64
import html
import json
import math
import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from autoseg.evaluation import ranking as rk
from autoseg.evaluation import stats as st
from autoseg.evaluation.collect import (
    Evaluation,
    Run,
    _reference_for,
    atomic_write_text,
    evaluate,
    load_dataset_info,
    read_segmentation,
    write_table,
)
from autoseg.evaluation.metrics import HIGHER_IS_BETTER, pooled_iou

GroupKey = tuple[str, str, str, str, str]
GROUP_FIELDS = ("dataset", "configuration", "architecture", "plans", "budget")


# ------------------------------------------------------------------------------------------------ analysis


@dataclass
class GroupAnalysis:
    """Everything the report says about one comparison group (same data, configuration, network, plans, budget)."""

    key: GroupKey
    natural: bool
    methods: list[str]  # in consensus order
    labels: list[int]
    class_names: list[str]
    cases: list[str]  # cases every method has: the paired sample
    excluded: dict[str, int]  # method -> cases it has that others lack (left out of the paired analysis)
    values: dict[str, np.ndarray]  # metric -> [n_cases, n_methods, n_labels]
    primary_name: str
    primary: np.ndarray  # [n_cases, n_methods]: per-case mean over classes of Dice (medical) or IoU (natural)
    rankings: dict[str, np.ndarray] = field(default_factory=dict)
    consensus_tasks: list[str] = field(default_factory=list)
    boot: np.ndarray | None = None
    interval: rk.RankInterval | None = None
    tests: st.PairwiseTests | None = None
    wins: np.ndarray | None = None
    friedman: st.FriedmanResult | None = None
    cd: float | None = None
    pooled: np.ndarray | None = None  # natural: dataset-level IoU [n_methods, n_labels]
    miou_sd: np.ndarray | None = None  # natural: bootstrap sd of the mIoU per method
    notes: list[str] = field(default_factory=list)


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


def analyse_group(rows: Sequence[dict], n_boot: int = 1000, seed: int = 0, alpha: float = 0.05) -> GroupAnalysis:
    """Paired analysis of the rows of one group (rows of :data:`autoseg.evaluation.collect.TABLE_COLUMNS`)."""
    key = _group_of(rows[0])
    natural = bool(rows[0]["natural_image"])
    methods = sorted({r["method"] for r in rows})
    labels = sorted({int(r["label"]) for r in rows})
    names = {int(r["label"]): r["class_name"] for r in rows}
    by_method: dict[str, dict[tuple[str, int], dict]] = {m: {} for m in methods}
    for r in rows:
        by_method[r["method"]][(r["case"], int(r["label"]))] = r
    case_sets = {m: {c for c, _ in d} for m, d in by_method.items()}
    common = sorted(set.intersection(*case_sets.values()))
    excluded = {m: len(s) - len(common) for m, s in case_sets.items() if len(s) > len(common)}
    metrics = ["dice", "iou", "hd95", "nsd", "tp", "fp", "fn"]
    values = {m: np.full((len(common), len(methods), len(labels)), np.nan) for m in metrics}
    for j, meth in enumerate(methods):
        d = by_method[meth]
        for i, case in enumerate(common):
            for k, lab in enumerate(labels):
                r = d.get((case, lab))
                if r is not None:
                    for m in metrics:
                        values[m][i, j, k] = float(r[m])
    primary_name = "IoU" if natural else "DSC"
    primary = np.nanmean(values["iou" if natural else "dice"], axis=2) if common else np.zeros((0, len(methods)))
    g = GroupAnalysis(key, natural, methods, labels, [names[lab] for lab in labels], common, excluded, values,
                      primary_name, primary)
    if excluded:
        g.notes.append("paired analyses use the cases every loss has; left out: "
                       + ", ".join(f"{m} {n}" for m, n in sorted(excluded.items())))
    for fold, msg in sorted(split_mismatches(rows).items()):
        g.notes.append(f"WARNING: the validation cases of fold {fold} differ between losses ({msg}): the losses were "
                       "not trained on the same split, or predictions are missing")
    if len(common) == 0:
        g.notes.append("no case is shared by every loss: no paired statistics")
        return g
    if natural:
        g.pooled = pooled_iou(values["tp"], values["fp"], values["fn"], axis=0)
        stat = rk.pooled_iou_statistic(values["tp"], values["fp"], values["fn"])
        g.consensus_tasks = [f"IoU {n} (dataset-level)" for n in g.class_names]
    else:
        tasks, hib = [], []
        arrays = []
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
    g.rankings["consensus"] = rk.consensus(np.swapaxes(rk.rank_values(point, True, axis=1), 1, 2))[0]
    g.boot = rk.bootstrap_ranks(stat, len(common), n_boot, seed)
    g.interval = rk.rank_interval(g.boot)
    if natural:
        boot_idx = rk.bootstrap_indices(len(common), n_boot, seed)
        g.miou_sd = np.nanmean(stat(boot_idx), axis=2).std(axis=0, ddof=1) if n_boot > 1 else None
    g.rankings[f"aggregate-then-rank ({primary_name})"] = rk.aggregate_then_rank(primary)
    g.rankings[f"rank-then-aggregate ({primary_name})"] = rk.rank_then_aggregate(primary)
    if len(methods) >= 2:
        ranks, wins, tests = rk.test_based_ranking(primary, True, alpha)
        g.rankings[f"test-based ({primary_name}, Wilcoxon-Holm)"] = ranks
        g.tests, g.wins = tests, wins
        g.friedman = st.friedman(primary)
        g.cd = st.nemenyi_critical_difference(len(methods), len(common), alpha)
    if len(common) < 6:
        g.notes.append(f"only {len(common)} paired case(s): the two-sided Wilcoxon test cannot reach p < 0.05 "
                       "below 6 cases")
    order = np.lexsort((g.interval.median, g.rankings["consensus"]))
    _reorder(g, order)
    return g


def _reorder(g: GroupAnalysis, order: np.ndarray) -> None:
    """Put the methods in consensus order everywhere."""
    g.methods = [g.methods[i] for i in order]
    g.values = {k: v[:, order] for k, v in g.values.items()}
    g.primary = g.primary[:, order]
    g.rankings = {k: v[order] for k, v in g.rankings.items()}
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
    if g.miou_sd is not None:
        g.miou_sd = g.miou_sd[order]


# ------------------------------------------------------------------------------------------------ document


@dataclass
class Doc:
    """Report content, rendered both to Markdown (figures as files) and to self-contained HTML."""

    blocks: list[tuple] = field(default_factory=list)

    def h(self, level: int, text: str) -> None:
        self.blocks.append(("h", level, text))

    def p(self, text: str) -> None:
        self.blocks.append(("p", text))

    def table(self, name: str, header: Sequence[str], rows: Sequence[Sequence], caption: str = "") -> None:
        self.blocks.append(("table", name, list(header), [list(map(str, r)) for r in rows], caption))

    def img(self, name: str, png: bytes, caption: str) -> None:
        self.blocks.append(("img", name, png, caption))


def _md_cell(text: str) -> str:
    return text.replace("|", "\\|").replace("\n", " ")


_NUMERIC = re.compile(r"^[-+\[]?[\d.]+(?:e[-+]?\d+)?(?: ± [\d.]+)?(?:, [\d.]+\])?(?: [<>])?$")


def _td(cell: str) -> str:
    """A table cell, right-aligned when it holds a number (or mean ± sd, or an interval)."""
    cls = ' class="n"' if _NUMERIC.match(cell) else ""
    return f"<td{cls}>{html.escape(cell)}</td>"


def render(doc: Doc, out: Path, title: str) -> tuple[Path, Path]:
    """Write ``report.md`` (+ ``figures/``), ``report.html`` (images inline) and ``tables/*.csv`` under ``out``."""
    (out / "figures").mkdir(parents=True, exist_ok=True)
    (out / "tables").mkdir(parents=True, exist_ok=True)
    md = [f"# {title}", ""]
    css = ("body{font-family:sans-serif;max-width:1200px;margin:2em auto;padding:0 1em;color:#222}"
           "table{border-collapse:collapse;margin:0.5em 0 1.5em;font-size:0.85em}"
           "th,td{border:1px solid #bbb;padding:3px 7px;text-align:left}th{background:#eee}td.n{text-align:right}"
           "img{max-width:100%;display:block;margin:0.5em 0}"
           "figcaption,.caption{font-size:0.85em;color:#555;margin-bottom:1.5em}")
    body = [f"<h1>{html.escape(title)}</h1>"]
    for block in doc.blocks:
        kind = block[0]
        if kind == "h":
            _, level, text = block
            md += ["#" * (level + 1) + " " + text, ""]
            body.append(f"<h{level + 1}>{html.escape(text)}</h{level + 1}>")
        elif kind == "p":
            md += [block[1], ""]
            body.append(f"<p>{html.escape(block[1])}</p>")
        elif kind == "table":
            _, name, header, rows, caption = block
            write_table(out / "tables" / f"{name}.csv", [dict(zip(header, r)) for r in rows], header)
            if caption:
                md += [f"*{caption}* (`tables/{name}.csv`)", ""]
            md.append("| " + " | ".join(_md_cell(h) for h in header) + " |")
            md.append("|" + "|".join(["---"] + ["--:"] * (len(header) - 1)) + "|")
            md += ["| " + " | ".join(_md_cell(c) for c in r) + " |" for r in rows]
            md.append("")
            body.append(f'<table data-name="{html.escape(name)}">'
                        + (f"<caption class=\"caption\">{html.escape(caption)}</caption>" if caption else "")
                        + "<thead><tr>" + "".join(f"<th>{html.escape(h)}</th>" for h in header) + "</tr></thead>"
                        + "<tbody>" + "".join("<tr>" + "".join(_td(c) for c in r) + "</tr>" for r in rows)
                        + "</tbody></table>")
        elif kind == "img":
            _, name, png, caption = block
            (out / "figures" / f"{name}.png").write_bytes(png)
            md += [f"![{caption}](figures/{name}.png)", "", f"*{caption}*", ""]
            b64 = base64.b64encode(png).decode("ascii")
            body.append(f'<figure><img alt="{html.escape(caption)}" src="data:image/png;base64,{b64}">'
                        f"<figcaption>{html.escape(caption)}</figcaption></figure>")
    md_path, html_path = out / "report.md", out / "report.html"
    atomic_write_text(md_path, "\n".join(md) + "\n")
    page = (f"<!DOCTYPE html><html lang=\"en\"><head><meta charset=\"utf-8\"><title>{html.escape(title)}</title>"
            f"<style>{css}</style></head><body>\n" + "\n".join(body) + "\n</body></html>\n")
    atomic_write_text(html_path, page)
    return md_path, html_path


# ------------------------------------------------------------------------------------------------- report


def _ms(values: np.ndarray, scale: float = 1.0, digits: int = 2) -> str:
    v = np.asarray(values, float)
    v = v[~np.isnan(v)] * scale
    if v.size == 0:
        return "-"
    if v.size == 1:
        return f"{v[0]:.{digits}f}"
    return f"{v.mean():.{digits}f} ± {v.std(ddof=1):.{digits}f}"


def _fmt_rank(x: float) -> str:
    return f"{x:g}"


@dataclass
class ReportResult:
    markdown: Path
    html: Path
    evaluation: Evaluation
    groups: list[GroupAnalysis]


def build_report(results: Path, out: Path, preprocessed: Path | None = None, raw: Path | None = None,
                 tolerances: dict[str, float] | float | None = None, distances: str = "auto", n_boot: int = 1000,
                 seed: int = 0, alpha: float = 0.05,
                 progress: Callable[[str], None] | None = print, workers: int = 1) -> ReportResult:
    """Evaluate (cached) every run under ``results`` and write the report into ``out``."""
    import os

    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    preprocessed = preprocessed or (Path(os.environ["nnUNet_preprocessed"]) if os.environ.get("nnUNet_preprocessed")
                                    else None)
    raw = raw or (Path(os.environ["nnUNet_raw"]) if os.environ.get("nnUNet_raw") else None)
    ev = evaluate(results, out / "tables" / "metrics.csv", preprocessed, raw, tolerances, distances, progress,
                  workers)
    say = progress or (lambda s: None)
    grouped: dict[GroupKey, list[dict]] = {}
    for r in ev.rows:
        grouped.setdefault(_group_of(r), []).append(r)
    groups = []
    for key, rows in sorted(grouped.items()):
        say(f"analysing {' / '.join(key)}: {len({r['method'] for r in rows})} loss(es), "
            f"{len({r['case'] for r in rows})} case(s), {n_boot} bootstrap resamples")
        groups.append(analyse_group(rows, n_boot, seed, alpha))
    doc = Doc()
    _runs_section(doc, ev.runs)
    for g in groups:
        _group_section(doc, g, ev.runs, preprocessed, raw, alpha)
    _across_groups_section(doc, groups, alpha)
    md, page = render(doc, out, "autoseg loss comparison")
    say(f"wrote {md} and {page}")
    return ReportResult(md, page, ev, groups)


def _runs_section(doc: Doc, runs: Sequence[Run]) -> None:
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


def _group_section(doc: Doc, g: GroupAnalysis, runs: Sequence[Run], preprocessed, raw, alpha: float) -> None:
    dataset, configuration, architecture, plans, budget = g.key
    tag = "_".join(g.key).replace("/", "-")
    doc.h(1, f"{dataset} — {configuration}, {architecture}, budget {budget}")
    group_runs = [r for r in runs if r.group == g.key]
    details = {json.dumps(r.budget_detail, sort_keys=True) for r in group_runs if r.budget_detail}
    seeds = sorted({r.seed for r in group_runs if r.seed != ""})
    folds = sorted({r.fold for r in group_runs if r.state.startswith("evaluated")})
    doc.p(f"Plans {plans}; budget {budget} {' / '.join(sorted(details)) or ''}; seed(s) {', '.join(seeds) or '-'}; "
          f"folds evaluated {', '.join(folds) or '-'}; {len(g.methods)} loss(es); {len(g.cases)} paired case(s).")
    if len(details) > 1 or len(seeds) > 1:
        doc.p("WARNING: the losses of this group do not share one budget and seed; the comparison is not fixed-budget.")
    if g.natural:
        doc.p("Natural images: IoU per class is dataset-level, from one confusion matrix summed over all validation "
              "images (as Cityscapes reports it); mIoU is their mean; spread is the bootstrap standard deviation "
              "over images. Paired tests use the per-image mean IoU.")
    else:
        doc.p("Medical volumes: every number is case-level (one value per validation volume), shown as mean ± "
              "standard deviation over cases; DSC in %, HD95 in mm; empty structures scored by the policy of "
              "docs/evaluation.md before averaging.")
    for note in g.notes:
        doc.p("Note: " + note)
    if not g.cases:
        return
    k_names = g.class_names
    if g.natural:
        header = ["loss", "mIoU (%)"] + [f"IoU {n} (%)" for n in k_names]
        rows = []
        for j, m in enumerate(g.methods):
            miou = np.nanmean(g.pooled[j]) * 100
            sd = f" ± {g.miou_sd[j] * 100:.2f}" if g.miou_sd is not None else ""
            rows.append([m, f"{miou:.2f}{sd}"] + [f"{x * 100:.2f}" if not math.isnan(x) else "-" for x in g.pooled[j]])
        doc.table(f"iou_{tag}", header, rows, "IoU per class, dataset-level (survey layout)")
    else:
        dice, hd, nsd = g.values["dice"], g.values["hd95"], g.values["nsd"]
        has_dist = not np.all(np.isnan(hd))
        header = ["loss", "DSC avg (%)"] + (["HD95 avg (mm)", "NSD avg (%)"] if has_dist else [])
        header += [f"DSC {n} (%)" for n in k_names]
        rows = []
        for j, m in enumerate(g.methods):
            row = [m, _ms(np.nanmean(dice[:, j], axis=1), 100)]
            if has_dist:
                row += [_ms(np.nanmean(hd[:, j], axis=1)), _ms(np.nanmean(nsd[:, j], axis=1), 100)]
            row += [_ms(dice[:, j, k], 100) for k in range(len(k_names))]
            rows.append(row)
        doc.table(f"dsc_{tag}", header, rows, "DSC per class and overall, mean ± sd over cases (survey layout)")
        if has_dist:
            doc.table(f"hd95_{tag}", ["loss"] + [f"HD95 {n} (mm)" for n in k_names],
                      [[m] + [_ms(hd[:, j, k]) for k in range(len(k_names))] for j, m in enumerate(g.methods)],
                      "HD95 per class, mean ± sd over cases")
            doc.table(f"nsd_{tag}", ["loss"] + [f"NSD {n} (%)" for n in k_names],
                      [[m] + [_ms(nsd[:, j, k], 100) for k in range(len(k_names))] for j, m in enumerate(g.methods)],
                      "NSD per class, mean ± sd over cases")
    # rankings
    doc.h(2, "Ranking")
    names = list(g.rankings)
    header = ["loss", "consensus rank", "bootstrap median", "95% interval"] + names[1:]
    if g.wins is not None:
        header.append("significant wins")
    rows = []
    for j, m in enumerate(g.methods):
        row = [m, _fmt_rank(g.rankings["consensus"][j]), _fmt_rank(g.interval.median[j]),
               f"[{_fmt_rank(g.interval.low[j])}, {_fmt_rank(g.interval.high[j])}]"]
        row += [_fmt_rank(g.rankings[n][j]) for n in names[1:]]
        if g.wins is not None:
            row.append(str(int(g.wins[j])))
        rows.append(row)
    doc.table(f"ranking_{tag}", header, rows,
              f"Consensus: mean of per-task ranks over {len(g.consensus_tasks)} task(s) "
              f"({', '.join(g.consensus_tasks)}); interval from {g.boot.shape[0]} bootstrap resamples of the cases")
    if len(names) > 1:
        tau = [[n] + [f"{st.kendall_tau(g.rankings[n], g.rankings[o]):.2f}" for o in names] for n in names]
        doc.table(f"kendall_{tag}", ["ranking"] + names, tau, "Kendall's tau between the rankings")
    rv, freq = rk.rank_frequencies(g.boot)
    from autoseg.evaluation import plots

    doc.img(f"blob_{tag}", plots.blob_plot(g.methods, rv, freq, g.interval.median, g.interval.low, g.interval.high),
            "Bootstrap rank distribution of the consensus ranking (disc area: share of resamples; line: 95% interval)")
    if g.tests is not None:
        doc.h(2, "Significance")
        k = len(g.methods)
        rows = [[g.methods[i]] + ["-" if i == j else
                                  f"{g.tests.p_holm[i, j]:.3g}{' <' if g.tests.better[i, j] else ''}"
                                  f"{' >' if g.tests.better[j, i] else ''}" for j in range(k)] for i in range(k)]
        doc.table(f"significance_{tag}", ["loss"] + g.methods, rows,
                  f"Two-sided Wilcoxon signed-rank on per-case {g.primary_name}, Holm-adjusted p; '<' row better "
                  f"than column, '>' worse, at alpha {alpha}")
        doc.img(f"significance_{tag}", plots.significance_heatmap(g.methods, g.tests.p_holm, g.tests.better, alpha),
                "Significance matrix (Holm-adjusted Wilcoxon p-values)")
        f = g.friedman
        doc.p(f"Friedman over the {f.n_blocks} paired case(s): chi2 = {f.statistic:.3f}, p = {f.pvalue:.3g}; "
              f"Nemenyi critical difference {g.cd:.3f} at alpha {alpha}.")
        doc.img(f"cd_cases_{tag}", plots.cd_diagram(g.methods, f.average_ranks, g.cd,
                                                    st.cd_cliques(f.average_ranks, g.cd),
                                                    f"average rank over {f.n_blocks} cases ({g.primary_name})"),
                "Critical-difference diagram over cases (bars join losses not significantly different)")
    # distributions
    doc.h(2, "Per-case distributions")
    metric = "iou" if g.natural else "dice"
    doc.img(f"box_{metric}_{tag}", plots.boxplots_per_class(
        {n: [g.values[metric][:, j, k] for j in range(len(g.methods))] for k, n in enumerate(k_names)},
        g.methods, "IoU" if g.natural else "DSC"), f"Per-case {metric.upper()} per class")
    if not g.natural and not np.all(np.isnan(g.values["hd95"])):
        doc.img(f"box_hd95_{tag}", plots.boxplots_per_class(
            {n: [g.values["hd95"][:, j, k] for j in range(len(g.methods))] for k, n in enumerate(k_names)},
            g.methods, "HD95 (mm)"), "Per-case HD95 per class")
    _training_curves(doc, g, runs, tag)
    _qualitative(doc, g, runs, preprocessed, raw, tag)


def _training_curves(doc: Doc, g: GroupAnalysis, runs: Sequence[Run], tag: str) -> None:
    from autoseg.evaluation import plots
    from autoseg.evaluation.collect import parse_training_log

    doc.h(2, "Training curves")
    group_runs = [r for r in runs if r.group == g.key and r.status != "missing" and r.method in g.methods]
    group_runs.sort(key=lambda r: (g.methods.index(r.method), _fold_sort(r.fold)))
    curves: dict[str, list[dict]] = {}
    for r in group_runs:
        c = parse_training_log(list(r.path.glob("training_log_*.txt")))
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


def _fold_sort(fold: str) -> tuple[int, int]:
    return (0, int(fold)) if fold.isdigit() else (1, 0)


def _qualitative(doc: Doc, g: GroupAnalysis, runs: Sequence[Run], preprocessed, raw, tag: str) -> None:
    from autoseg.evaluation import plots

    doc.h(2, "Qualitative comparison")
    spread = np.nanmax(g.primary, axis=1) - np.nanmin(g.primary, axis=1)
    case = g.cases[int(np.argmax(spread))]
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
                refp = _reference_for(case, info, run, preprocessed, raw, {})
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
        sl = (z,)
        where = f"slice {z} of axis 0"
    else:
        sl = (0,) if ref.ndim == 3 else ()
        where = "the image"
    img2d = image[sl] if image is not None and image.shape == ref.shape else None
    doc.img(f"qualitative_{tag}", plots.qualitative(img2d, ref[sl], {m: p[sl] for m, p in preds.items()},
                                                    f"case {case}, {where}"),
            f"Case {case} (where the losses differ most), {where}: reference and every loss over the image"
            + ("" if img2d is not None else " (image not found: set nnUNet_raw or --raw)"))


def _across_groups_section(doc: Doc, groups: Sequence[GroupAnalysis], alpha: float) -> None:
    usable = [g for g in groups if g.cases]
    if len(usable) < 2:
        return
    common = sorted(set.intersection(*(set(g.methods) for g in usable)))
    doc.h(1, "Across datasets and configurations")
    if len(common) < 2:
        doc.p("Fewer than two losses appear in every group: no Friedman test across groups.")
        return
    matrix = np.array([[np.nanmean(g.primary[:, g.methods.index(m)]) for m in common] for g in usable])
    f = st.friedman(matrix)
    cd = st.nemenyi_critical_difference(len(common), len(usable), alpha)
    doc.p(f"Friedman over {len(usable)} group(s) (block: a dataset/configuration/architecture/budget; value: mean "
          f"per-case primary score), {len(common)} loss(es): chi2 = {f.statistic:.3f}, p = {f.pvalue:.3g}; "
          f"Nemenyi CD = {cd:.3f} at alpha {alpha}.")
    doc.table("friedman_across_groups", ["loss", "average rank"] + [" / ".join(g.key[:3]) for g in usable],
              [[m, f"{f.average_ranks[j]:.2f}"] + [f"{matrix[i, j]:.4f}" for i in range(len(usable))]
               for j, m in enumerate(common)], "Mean primary score per group and average Friedman rank")
    from autoseg.evaluation import plots

    doc.img("cd_across_groups", plots.cd_diagram(common, f.average_ranks, cd, st.cd_cliques(f.average_ranks, cd),
                                                 f"average rank over {len(usable)} groups"),
            "Critical-difference diagram across datasets and configurations")
