"""The report's content model (headings, paragraphs, tables, figures) and its output formats: Markdown with figure
files, self-contained HTML, one CSV per table. A new output format is one more entry in :data:`RENDERERS`."""

from __future__ import annotations

import base64
import html
import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from autoseg.evaluation.tables import atomic_write_text, write_table


@dataclass
class Doc:
    """Report content, rendered by every entry of :data:`RENDERERS`."""

    blocks: list[tuple] = field(default_factory=list)

    def h(self, level: int, text: str) -> None:
        self.blocks.append(("h", level, text))

    def p(self, text: str) -> None:
        self.blocks.append(("p", text))

    def table(self, name: str, header: Sequence[str], rows: Sequence[Sequence], caption: str = "") -> None:
        self.blocks.append(("table", name, list(header), [list(map(str, r)) for r in rows], caption))

    def img(self, name: str, png: bytes, caption: str) -> None:
        self.blocks.append(("img", name, png, caption))


# format name -> function(doc, out folder, title) -> the file it wrote
RENDERERS: dict[str, Callable[[Doc, Path, str], Path]] = {}


def renderer(name: str):
    def wrap(fn: Callable[[Doc, Path, str], Path]) -> Callable[[Doc, Path, str], Path]:
        RENDERERS[name] = fn
        return fn
    return wrap


@renderer("csv")
def render_csv(doc: Doc, out: Path, title: str) -> Path:
    """Every table as ``tables/<name>.csv`` (the cells as shown)."""
    folder = out / "tables"
    folder.mkdir(parents=True, exist_ok=True)
    for block in doc.blocks:
        if block[0] == "table":
            _, name, header, rows, _ = block
            write_table(folder / f"{name}.csv", [dict(zip(header, r)) for r in rows], header)
    return folder


def _md_cell(text: str) -> str:
    return text.replace("|", "\\|").replace("\n", " ")


@renderer("markdown")
def render_markdown(doc: Doc, out: Path, title: str) -> Path:
    """``report.md`` with the figures as ``figures/<name>.png``."""
    (out / "figures").mkdir(parents=True, exist_ok=True)
    md = [f"# {title}", ""]
    for block in doc.blocks:
        kind = block[0]
        if kind == "h":
            _, level, text = block
            md += ["#" * (level + 1) + " " + text, ""]
        elif kind == "p":
            md += [block[1], ""]
        elif kind == "table":
            _, name, header, rows, caption = block
            if caption:
                md += [f"*{caption}* (`tables/{name}.csv`)", ""]
            md.append("| " + " | ".join(_md_cell(h) for h in header) + " |")
            md.append("|" + "|".join(["---"] + ["--:"] * (len(header) - 1)) + "|")
            md += ["| " + " | ".join(_md_cell(c) for c in r) + " |" for r in rows]
            md.append("")
        elif kind == "img":
            _, name, png, caption = block
            (out / "figures" / f"{name}.png").write_bytes(png)
            md += [f"![{caption}](figures/{name}.png)", "", f"*{caption}*", ""]
    path = out / "report.md"
    atomic_write_text(path, "\n".join(md) + "\n")
    return path


_NUMERIC = re.compile(r"^\[?[-+]?[\d.]+(?:e[-+]?\d+)?(?: ± [\d.]+)?(?:, [-+]?[\d.]+\])?(?: [<>])?$")
_CSS = ("body{font-family:sans-serif;max-width:1200px;margin:2em auto;padding:0 1em;color:#222}"
        "table{border-collapse:collapse;margin:0.5em 0 1.5em;font-size:0.85em}"
        "th,td{border:1px solid #bbb;padding:3px 7px;text-align:left}th{background:#eee}td.n{text-align:right}"
        "img{max-width:100%;display:block;margin:0.5em 0}"
        "figcaption,.caption{font-size:0.85em;color:#555;margin-bottom:1.5em}")


def _td(cell: str) -> str:
    """A table cell, right-aligned when it holds a number (or mean ± sd, or an interval)."""
    cls = ' class="n"' if _NUMERIC.match(cell) else ""
    return f"<td{cls}>{html.escape(cell)}</td>"


@renderer("html")
def render_html(doc: Doc, out: Path, title: str) -> Path:
    """``report.html``: one file, figures inline as base64 PNG, no external resource (opens offline)."""
    body = [f"<h1>{html.escape(title)}</h1>"]
    for block in doc.blocks:
        kind = block[0]
        if kind == "h":
            _, level, text = block
            body.append(f"<h{level + 1}>{html.escape(text)}</h{level + 1}>")
        elif kind == "p":
            body.append(f"<p>{html.escape(block[1])}</p>")
        elif kind == "table":
            _, name, header, rows, caption = block
            body.append(f'<table data-name="{html.escape(name)}">'
                        + (f"<caption class=\"caption\">{html.escape(caption)}</caption>" if caption else "")
                        + "<thead><tr>" + "".join(f"<th>{html.escape(h)}</th>" for h in header) + "</tr></thead>"
                        + "<tbody>" + "".join("<tr>" + "".join(_td(c) for c in r) + "</tr>" for r in rows)
                        + "</tbody></table>")
        elif kind == "img":
            _, name, png, caption = block
            b64 = base64.b64encode(png).decode("ascii")
            body.append(f'<figure><img alt="{html.escape(caption)}" src="data:image/png;base64,{b64}">'
                        f"<figcaption>{html.escape(caption)}</figcaption></figure>")
    path = out / "report.html"
    page = (f"<!DOCTYPE html><html lang=\"en\"><head><meta charset=\"utf-8\"><title>{html.escape(title)}</title>"
            f"<style>{_CSS}</style></head><body>\n" + "\n".join(body) + "\n</body></html>\n")
    atomic_write_text(path, page)
    return path


def render(doc: Doc, out: Path, title: str) -> dict[str, Path]:
    """Every output format of :data:`RENDERERS` into ``out``: format name -> what it wrote.

    A report written again into the same folder (a study's committed report, rebuilt as its store fills)
    must not keep tables or figures of an earlier report that this one no longer has (a group, a loss or
    a test predictor that is gone): those are removed. Only the report's own kinds are touched: ``*.csv``
    in ``tables/`` (the evaluation's ``metrics*.csv`` are kept) and ``*.png`` in ``figures/``.
    """
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    written = {name: fn(doc, out, title) for name, fn in RENDERERS.items()}
    tables = {f"{b[1]}.csv" for b in doc.blocks if b[0] == "table"}
    figures = {f"{b[1]}.png" for b in doc.blocks if b[0] == "img"}
    for folder, pattern, keep in ((out / "tables", "*.csv", tables), (out / "figures", "*.png", figures)):
        for path in folder.glob(pattern):
            if path.name not in keep and not (folder.name == "tables" and path.name.startswith("metrics")):
                path.unlink()
    return written
