"""The drift report: one page (index.html, pictures embedded: it renders offline) with the verdict, a table of the
tests and one plot per feature, the reference against the served window; the same plots as PNG files beside it."""
from __future__ import annotations

import base64
import html
from pathlib import Path

import numpy as np

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402


def write(folder: str | Path, result: dict, reference: dict, records: list[dict], title: str) -> Path:
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    rows, figures = [], []
    for name, test in result["features"].items():
        png = _plot(folder / f"{name}.png", name, reference["features"][name], [r[name] for r in records], test)
        figures.append(f'<figure><img alt="{name}" src="data:image/png;base64,{base64.b64encode(png.read_bytes()).decode()}">'
                       f"<figcaption>{html.escape(name)}</figcaption></figure>")
        rows.append(_row(name, test))
    rows.append(_row("image content (" + ", ".join(result["content"]["features"][:3]) + ", ...)", result["content"]))
    verdict = "DRIFT" if result["drift"] else "no drift"
    page = (f"<!doctype html><meta charset=utf-8><title>{html.escape(title)}</title>"
            "<style>body{font-family:sans-serif;margin:2em}td,th{padding:2px 8px}.d{color:#b00;font-weight:bold}"
            "figure{display:inline-block;margin:4px}img{width:320px}</style>"
            f"<h1>{html.escape(title)}: {verdict}</h1><p>{result['requests']} served requests against the reference "
            f"({html.escape(str(reference.get('sources', '')))}); each test at p &lt; {result['content']['threshold']:.2g} "
            f"(family-wise {result['p_value']:g}).</p><table><tr><th>feature<th>test<th>statistic<th>p-value"
            f"<th>drifted</tr>{''.join(rows)}</table>{''.join(figures)}")
    (folder / "index.html").write_text(page)
    return folder / "index.html"


def _row(name: str, test: dict) -> str:
    mark = '<td class=d>yes' if test["drifted"] else "<td>no"
    return (f"<tr><td>{html.escape(name)}<td>{test['test']}<td>{test['statistic']:.3f}<td>{test['p_value']:.2e}"
            f"{mark}</tr>")


def _plot(path: Path, name: str, reference: list[float], served: list[float], test: dict) -> Path:
    ref, now = np.asarray(reference, float), np.asarray(served, float)
    lo, hi = float(min(ref.min(), now.min())), float(max(ref.max(), now.max()))
    bins = np.linspace(lo, hi if hi > lo else lo + 1, 30)
    fig, ax = plt.subplots(figsize=(4, 2.6))
    ax.hist(ref, bins=bins, density=True, alpha=0.55, label=f"reference ({len(ref)})", color="#777")
    ax.hist(now, bins=bins, density=True, alpha=0.55, label=f"served ({len(now)})", color="#d62728" if test["drifted"] else "#1f77b4")
    ax.set_title(f"{name}: KS {test['statistic']:.2f}, p={test['p_value']:.1e}", fontsize=9)
    ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=80)
    plt.close(fig)
    return path
