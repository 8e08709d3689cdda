"""Figures of the report (matplotlib, Agg backend); every function returns PNG bytes."""

from __future__ import annotations

import io
from collections.abc import Sequence

import numpy as np


def _plt():
    import matplotlib

    matplotlib.use("Agg", force=True)
    import matplotlib.pyplot as plt

    return plt


def _png(fig) -> bytes:
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=90, bbox_inches="tight")
    _plt().close(fig)
    return buf.getvalue()


def boxplots_per_class(values: dict[str, Sequence[np.ndarray]], methods: Sequence[str], ylabel: str) -> bytes:
    """One panel per class; in each, a box of the per-case values of every method (``values[class][i]``)."""
    plt = _plt()
    names = list(values)
    cols = min(4, len(names))
    rows = int(np.ceil(len(names) / cols))
    fig, axes = plt.subplots(rows, cols, figsize=(max(3.2, 0.45 * len(methods) + 1.5) * cols, 3.2 * rows),
                             squeeze=False)
    for ax, name in zip(axes.flat, names):
        data = [np.asarray(v, float)[~np.isnan(np.asarray(v, float))] for v in values[name]]
        ax.boxplot(data, showmeans=True)
        ax.set_xticks(range(1, len(methods) + 1), methods, rotation=45, ha="right", fontsize=8)
        ax.set_title(name, fontsize=10)
        ax.set_ylabel(ylabel, fontsize=9)
        ax.grid(axis="y", alpha=0.3)
    for ax in list(axes.flat)[len(names):]:
        ax.axis("off")
    fig.tight_layout()
    return _png(fig)


def blob_plot(methods: Sequence[str], rank_values: np.ndarray, freq: np.ndarray, median: np.ndarray,
              low: np.ndarray, high: np.ndarray) -> bytes:
    """challengeR's blob plot: for each method, a disc per bootstrap rank with area proportional to how often the
    method got that rank; the black dot is the median and the line the interval."""
    plt = _plt()
    k = len(methods)
    fig, ax = plt.subplots(figsize=(max(4.0, 0.6 * k + 2), 3.6))
    for i in range(k):
        ax.scatter(np.full(len(rank_values), i), rank_values, s=freq[i] * 600, alpha=0.45, color="tab:blue",
                   edgecolors="none")
        ax.plot([i, i], [low[i], high[i]], color="black", lw=1.2)
        ax.scatter([i], [median[i]], color="black", s=14, zorder=3)
    ax.set_xticks(range(k), methods, rotation=45, ha="right", fontsize=8)
    ax.set_ylabel("rank (bootstrap)")
    ax.set_ylim(k + 0.5, 0.5)
    ax.set_yticks(range(1, k + 1))
    ax.grid(axis="y", alpha=0.3)
    fig.tight_layout()
    return _png(fig)


def cd_diagram(methods: Sequence[str], average_ranks: Sequence[float], cd: float, cliques: list[list[int]],
               title: str = "") -> bytes:
    """Demšar's critical-difference diagram: methods on a rank axis, bars joining those within ``cd``."""
    plt = _plt()
    r = np.asarray(average_ranks, float)
    k = len(methods)
    order = np.argsort(r, kind="stable")
    lo, hi = 1, max(k, int(np.ceil(r.max())))
    height = 1.2 + 0.16 * k
    fig, ax = plt.subplots(figsize=(7.0, height))
    ax.set_xlim(lo - 0.3, hi + 0.3)
    ax.set_ylim(0, height)
    ax.axis("off")
    top = height - 0.5
    ax.plot([lo, hi], [top, top], color="black", lw=1)
    for t in range(lo, hi + 1):
        ax.plot([t, t], [top, top + 0.08], color="black", lw=1)
        ax.text(t, top + 0.15, str(t), ha="center", fontsize=8)
    # the CD bar above the axis
    ax.plot([lo, lo + cd], [top + 0.4, top + 0.4], color="tab:red", lw=2)
    ax.text(lo + cd / 2, top + 0.48, f"CD = {cd:.2f}", ha="center", fontsize=8, color="tab:red")
    half = (k + 1) // 2
    for pos, i in enumerate(order):
        left = pos < half
        y = top - 0.35 - 0.25 * (pos if left else k - 1 - pos)
        x_text = lo - 0.2 if left else hi + 0.2
        ax.plot([r[i], r[i], x_text], [top, y, y], color="0.3", lw=0.8)
        ax.text(x_text, y, f"{methods[i]} ({r[i]:.2f})", ha="right" if left else "left", va="center", fontsize=8)
    for n, clique in enumerate(cliques):
        y = top - 0.15 - 0.1 * n
        ax.plot([r[clique].min() - 0.03, r[clique].max() + 0.03], [y, y], color="black", lw=3)
    if title:
        ax.set_title(title, fontsize=9)
    return _png(fig)


def significance_heatmap(methods: Sequence[str], p_holm: np.ndarray, better: np.ndarray, alpha: float) -> bytes:
    """Matrix of Holm-adjusted p-values; a cell is dark when the row method beats the column method."""
    plt = _plt()
    k = len(methods)
    fig, ax = plt.subplots(figsize=(max(3.5, 0.55 * k + 2), max(3.0, 0.5 * k + 1.5)))
    img = np.where(better, 1.0, np.where(better.T, -1.0, 0.0))
    ax.imshow(img, cmap="RdYlGn", vmin=-1.5, vmax=1.5)
    for i in range(k):
        for j in range(k):
            if i != j and not np.isnan(p_holm[i, j]):
                ax.text(j, i, f"{p_holm[i, j]:.2g}", ha="center", va="center", fontsize=7)
    ax.set_xticks(range(k), methods, rotation=45, ha="right", fontsize=8)
    ax.set_yticks(range(k), methods, fontsize=8)
    ax.set_title(f"row vs column (Holm p; green: row better at {alpha})", fontsize=8)
    fig.tight_layout()
    return _png(fig)


def qualitative(image: np.ndarray | None, reference: np.ndarray, predictions: dict[str, np.ndarray],
                title: str) -> bytes:
    """The same slice for the reference and every method, labels drawn over the image."""
    plt = _plt()
    panels = [("reference", reference)] + list(predictions.items())
    cols = min(5, len(panels))
    rows = int(np.ceil(len(panels) / cols))
    fig, axes = plt.subplots(rows, cols, figsize=(2.6 * cols, 2.6 * rows + 0.3), squeeze=False)
    base = image if image is not None else np.zeros(reference.shape)
    n_labels = max(1, int(max([reference.max()] + [p.max() for p in predictions.values()])))
    for ax, (name, seg) in zip(axes.flat, panels):
        ax.imshow(base, cmap="gray", interpolation="nearest")
        ax.imshow(np.ma.masked_equal(seg, 0), cmap="tab10", vmin=1, vmax=max(n_labels, 10), alpha=0.5,
                  interpolation="nearest")
        ax.set_title(name, fontsize=8)
        ax.axis("off")
    for ax in list(axes.flat)[len(panels):]:
        ax.axis("off")
    fig.suptitle(title, fontsize=9)
    fig.tight_layout()
    return _png(fig)


def seed_dots(methods: Sequence[str], per_seed: Sequence[Sequence[float]], values: np.ndarray, short: str) -> bytes:
    """The headline statistic per loss: one dot per seed and a bar at the value of the seed means (in %)."""
    plt = _plt()
    fig, ax = plt.subplots(figsize=(max(4.0, 0.6 * len(methods) + 1.5), 3.2))
    for j, v in enumerate(per_seed):
        v = np.asarray(v, float) * 100
        ax.scatter(np.full(v.shape, j), v, s=18, color="tab:blue", alpha=0.8, zorder=3,
                   label="one seed" if j == 0 else None)
        ax.plot([j - 0.3, j + 0.3], [values[j] * 100] * 2, color="black", lw=1.5, label="seed means" if j == 0 else None)
    ax.set_xticks(range(len(methods)))
    ax.set_xticklabels(methods, rotation=45, ha="right", fontsize=8)
    ax.set_ylabel(f"{short} (%)", fontsize=9)
    ax.grid(axis="y", alpha=0.3)
    ax.legend(fontsize=7, loc="best")
    fig.tight_layout()
    return _png(fig)


def training_curves(curves: dict[str, list[dict[str, list[float]]]]) -> bytes:
    """Train loss, validation loss and nnU-Net's pseudo Dice per epoch: one colour per method, one line per fold."""
    plt = _plt()
    fig, axes = plt.subplots(1, 3, figsize=(13, 3.4))
    colours = plt.get_cmap("tab10" if len(curves) <= 10 else "tab20")
    keys = (("train_loss", "train loss"), ("val_loss", "validation loss"), ("pseudo_dice", "pseudo Dice (mean)"))
    for n, (method, folds) in enumerate(curves.items()):
        for f, c in enumerate(folds):
            for ax, (key, _) in zip(axes, keys):
                ax.plot(c["epoch"], c[key], color=colours(n % colours.N), lw=1.0, alpha=0.85,
                        label=method if f == 0 else None)
    for ax, (_, title) in zip(axes, keys):
        ax.set_title(title, fontsize=9)
        ax.set_xlabel("epoch", fontsize=8)
        ax.grid(alpha=0.3)
    axes[2].legend(fontsize=7, loc="best")
    fig.tight_layout()
    return _png(fig)


def downscale_png(data: bytes, max_width: int = 900) -> bytes:
    """A PNG no wider than ``max_width`` (nnU-Net's progress.png is large; the report embeds one per run)."""
    from PIL import Image

    img = Image.open(io.BytesIO(data))
    if img.width <= max_width:
        return data
    img = img.resize((max_width, max(1, round(img.height * max_width / img.width))), Image.LANCZOS)
    buf = io.BytesIO()
    img.save(buf, format="PNG", optimize=True)
    return buf.getvalue()
