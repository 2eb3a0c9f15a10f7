"""The report: Tables 1-8 in the paper's shape with each cell "ours (paper, delta)", Figures 4 and 5, and
each number's provenance (run, resolved config, commit, packages, image, hardware, wall time). A smoke
stand-in's cell has no delta (its number is not comparable to the paper's), and a linear probe whose loss
diverged shows "diverged", not its top-1.

Markdown (report.md) and one self-contained HTML5 file (report.html, figures embedded); cells whose
result is not there yet are shown as pending. The tables come from flatmix.experiments, so a report made
by hand from partial results has the same shape as the DAG's.
"""

import base64
from datetime import datetime, timezone
import json
from pathlib import Path
import re

import jinja2
import matplotlib
from flatmix import atomic, provenance
from flatmix.errors import FlatmixError
from flatmix.experiments import Experiments, load_config

matplotlib.use("Agg")
from matplotlib import pyplot as plt  # noqa: E402  (after choosing the headless backend)

TEMPLATES = jinja2.Environment(loader=jinja2.PackageLoader("flatmix", "resources"), autoescape=jinja2.select_autoescape(
    ["html"]), keep_trailing_newline=True, trim_blocks=True, lstrip_blocks=True, undefined=jinja2.StrictUndefined)


def anchor(result):
    return "prov-" + re.sub(r"[^A-Za-z0-9]+", "-", result.removesuffix("/metrics.json")).strip("-")


class Results:
    """The metrics files under the results folder, read once each."""

    def __init__(self, root):
        self.root = Path(root)
        self._cache = {}

    def read(self, rel):
        if rel not in self._cache:
            path = self.root / rel
            try:
                self._cache[rel] = json.loads(path.read_text()) if path.is_file() else None
            except (OSError, json.JSONDecodeError) as e:
                raise FlatmixError(f"{path} is not a readable metrics file: {e}") from None
        return self._cache[rel]

    def value(self, cell):
        metrics = self.read(cell.result)
        return None if metrics is None else metrics.get(cell.metric)

    def made(self, cell):
        return self.read(cell.result) is not None


def cell_view(cell, results):
    """{text, href, state} for one table cell."""
    if cell is None:
        return {"text": "–", "href": None, "state": "none"}
    paper = "–" if cell.paper is None else f"{cell.paper:.{cell.digits}f}"
    if not results.made(cell):
        return {"text": f"pending ({paper})", "href": None, "state": "pending"}
    ours = results.value(cell)
    if results.read(cell.result).get("diverged"):
        text = f"diverged ({paper})"
    elif ours is None:  # e.g. an AP of a size the data holds no object of
        text = f"n/a ({paper})"
    elif cell.paper is None or cell.smoke:
        text = f"{ours:.2f} ({paper})"
    else:
        text = f"{ours:.2f} ({paper}, {ours - cell.paper:+.2f})"
    return {"text": text + (" smoke" if cell.smoke else ""), "href": "#" + anchor(cell.result),
            "state": "smoke" if cell.smoke else "made"}


def _provenance_entry(cell, results):
    """What produced one result file: the evaluation's record and, for a pretrained backbone, the run's."""
    metrics = results.read(cell.result)
    entry = {"id": anchor(cell.result), "result": cell.result, "run": cell.run,
             "evaluation": {k: metrics.get(k) for k in ("task", "bn", "scale", "protocol", "epochs", "lr",
                                                      "batch_size", "image_size", "backbone", "data", "config",
                                                      "processes", "device", "wall_time_s") if k in metrics},
             "provenance": metrics.get("provenance") or {}, "pretrain": None, "run_config": None}
    if cell.run:
        run_dir = results.root / "pretrain" / cell.run
        summary = run_dir / "summary.json"
        config = run_dir / "config.yaml"
        entry["pretrain"] = json.loads(summary.read_text()) if summary.is_file() else None
        entry["run_config"] = config.read_text() if config.is_file() else None
    return entry


def figure4(experiments, results, path):
    """Accuracy against epochs per method: with mixtures solid, without dotted (as the paper); the
    paper's curves in grey, ours in colour."""
    fig, axes = plt.subplots(1, 2, figsize=(10, 4), dpi=120)
    for ax, (method, series) in zip(axes, experiments.figure4.items()):
        for name, colour, style in (("ours", "C3", "-"), ("baseline", "C0", ":")):
            points = series[name]
            label = "with mixtures" if name == "ours" else "without"
            paper = [(ep, c.paper) for ep, c in points if c.paper is not None]
            if paper:
                ax.plot(*zip(*paper), color="0.6", linestyle=style, marker="o", markersize=3,
                        label=f"paper, {label}")
            ours = [(ep, results.value(c)) for ep, c in points if results.made(c) and results.value(c) is not None]
            smoke = any(c.smoke for _, c in points if results.made(c))
            if ours:
                ax.plot(*zip(*ours), color=colour, linestyle=style, marker="s",
                        label=f"ours, {label}" + (" (smoke stand-in)" if smoke else ""))
        ax.set_title(f"{'MoCo' if method == 'moco' else 'CMC'} on ImageNet-100")
        ax.set_xlabel("pretraining epochs")
        ax.set_ylabel("linear top-1 (%)")
        ax.set_xticks([ep for ep, _ in series["ours"]])
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7)
    fig.suptitle("Figure 4: accuracy against the training budget")
    fig.tight_layout()
    with atomic.atomic_path(path) as tmp:
        fig.savefig(tmp, format="png")
    plt.close(fig)


def _data_uri(path):
    return "data:image/png;base64," + base64.b64encode(Path(path).read_bytes()).decode("ascii")


def figure5_view(experiments, results):
    """[{key, title, maxima, png}] of the Figure 5s this preset makes, in order; a figure whose
    flatness.json or flatness.png is not there yet has maxima and png None (pending)."""
    figures = []
    for key, figure in experiments.flatness.items():
        doc = results.read(f"flatness/{key}/flatness.json")
        png = results.root / "flatness" / key / "flatness.png"
        made = doc is not None and png.is_file()
        figures.append({"key": key, "title": figure.title, "png": png if made else None,
                        "maxima": {name: m["max_probability"] for name, m in doc["models"].items()} if made else None})
    return figures


def build_view(experiments, results, config_path):
    tables, cells = [], []
    for table in experiments.tables.values():
        rows = []
        for label, row in table.rows:
            rows.append({"label": label, "cells": [cell_view(c, results) for c in row]})
            cells += [c for c in row if c is not None and results.made(c)]
        tables.append({"key": table.key, "title": table.title, "columns": table.columns, "rows": rows})
    cells += [c for series in experiments.figure4.values() for pts in series.values() for _, c in pts
              if results.made(c)]
    entries, seen = [], set()
    for cell in cells:
        if cell.result not in seen:
            seen.add(cell.result)
            entries.append(_provenance_entry(cell, results))
    return {
        "preset": experiments.preset,
        "smoke": experiments.preset == "smoke",
        "standins": experiments.standins,
        "generated": datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
        "config": str(config_path),
        "report_provenance": provenance.collect(),
        "tables": tables,
        "made": sum(1 for t in tables for r in t["rows"] for c in r["cells"] if c["state"] in ("made", "smoke")),
        "pending": sum(1 for t in tables for r in t["rows"] for c in r["cells"] if c["state"] == "pending"),
        "figure5": figure5_view(experiments, results),
        "entries": entries,
    }


REPORT_FILES = ("report.md", "report.html", "figure4.png")


def folders(config_path, results_dir=None, out=None):
    """(results folder, report folder), by default the config's preset's own folder, RESULTS/PRESET (where
    the DAG puts each preset's outputs, apart from the other presets'), and its report/."""
    if results_dir is None:
        config = load_config(config_path)
        results_dir = Path(config.get("results", "results")) / Experiments(config).preset
    return Path(results_dir), Path(out) if out is not None else Path(results_dir) / "report"


def run(config_path, results_dir, out):
    """Write OUT/report.md, OUT/report.html and OUT/figure4.png (REPORT_FILES); returns a summary."""
    config = load_config(config_path)
    experiments = Experiments(config)
    results = Results(results_dir)
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    figure4(experiments, results, out / "figure4.png")
    view = build_view(experiments, results, config_path)
    # each made Figure 5: linked beside the report in Markdown, embedded in the HTML
    linked = [dict(f, src=f["png"] and Path("..", "flatness", f["key"], "flatness.png").as_posix())
              for f in view["figure5"]]
    embedded = [dict(f, src=f["png"] and _data_uri(f["png"])) for f in view["figure5"]]
    atomic.write_text(out / "report.md", TEMPLATES.get_template("report.md.j2").render(
        **dict(view, figure5=linked), figure4="figure4.png"))
    atomic.write_text(out / "report.html", TEMPLATES.get_template("report.html.j2").render(
        **dict(view, figure5=embedded), figure4=_data_uri(out / "figure4.png")))
    return {"report": str(out / "report.html"), "cells_made": view["made"], "cells_pending": view["pending"]}
