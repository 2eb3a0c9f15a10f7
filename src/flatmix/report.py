"""The report: Tables 1-8 in the paper's shape with each cell "ours (paper, delta)", Figures 4 and 5, the
training curves, and each number's provenance. A smoke stand-in's cell has no delta (its number is not
comparable to the paper's), and a linear probe whose loss diverged shows "diverged", not its top-1.

Markdown (report.md, with its images beside it in the report folder, so the folder can be copied
anywhere) and one self-contained HTML5 file (report.html, figures embedded). Both link each result to its
metrics file, its pretraining run's files and the rules' logs, relative to the report folder. Provenance
(commit, image, packages, hardware, python) is shown once for what all results share, then per result
only what differs. Cells whose result is not there yet are shown as pending. The tables come from
flatmix.experiments, so a report made by hand from partial results has the same shape as the DAG's.
"""

import base64
from dataclasses import replace
from datetime import datetime, timezone
import json
import os
from pathlib import Path
import re
import shutil
from urllib.parse import quote

import jinja2
import matplotlib
from flatmix import atomic, provenance
from flatmix.errors import FlatmixError
from flatmix.experiments import Experiments
from flatmix.claims import VERDICTS, claims_view
from flatmix.layout import Detection, Flatness, Knn, Pretraining, Probe, preset_folder
from flatmix.stats import mean_interval
from flatmix.tables import Tables
from flatmix.workflow_config import get, load_config

matplotlib.use("Agg")
from matplotlib import pyplot as plt  # noqa: E402  (after choosing the headless backend)

# report.html.j2 is HTML: its values (run configs, titles, provenance) are escaped, never markup
TEMPLATES = jinja2.Environment(loader=jinja2.PackageLoader("flatmix", "resources"),
                               autoescape=jinja2.select_autoescape(["html", "html.j2"]), keep_trailing_newline=True,
                               trim_blocks=True, lstrip_blocks=True, undefined=jinja2.StrictUndefined)

# The report's figures are embedded at most ~1200 px wide: text at 11 pt (legends 10 pt) stays legible.
# (Their labels are fixed text and run names, which hold no `$`: matplotlib's maths stays on for log ticks.)
STYLE = {"font.size": 11, "legend.fontsize": 10, "axes.titlesize": 12}

DATASETS = {"imagenet100": "ImageNet-100", "imagenet1k": "ImageNet-1K"}

# What a cell's marks mean: the note under each table that shows them
TERMS = {
    "pending": "not made yet (the paper's number in brackets)",
    "n/a": "made, but the result holds no such number (e.g. an AP for an object size the data has none of)",
    "diverged": "the linear probe's loss diverged, so it has no top-1",
    "smoke": "a tiny smoke run standing in for the paper's, not comparable with it (no difference shown)",
    "–": "not in the paper",
    "paper's": "the paper's number alone: this preset does not run that row",
}


def anchor(result):
    """The HTML id of a result's provenance entry (a flatmix.layout key)."""
    return "prov-" + re.sub(r"[^A-Za-z0-9]+", "-", result.folder).strip("-")


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

    def lines(self, rel):
        """The records of a JSON-lines file ([] if absent). A last line without its newline is being
        written by a running job: left out."""
        path = self.root / rel
        if not path.is_file():
            return []
        try:
            return [json.loads(line) for line in path.read_text().splitlines(keepends=True) if line.endswith("\n")]
        except (OSError, json.JSONDecodeError) as e:
            raise FlatmixError(f"{path} is not a readable metrics file: {e}") from None

    def values(self, cell):
        """A cell's number on each of its seeds made so far (diverged probes and absent numbers left out)."""
        metrics = [self.read(r.path) for r in cell.replicas]
        return [m[cell.metric] for m in metrics if m and not m.get("diverged") and m.get(cell.metric) is not None]

    def made(self, cell):
        """How many of a cell's seeds are made."""
        return sum(self.read(r.path) is not None for r in cell.replicas)


def cell_view(cell, results):
    """{text, href, state, terms} for one table cell; terms are the TERMS its text uses."""
    if cell is None:
        return {"text": "–", "href": None, "state": "none", "terms": ["–"]}
    paper = "–" if cell.paper is None else f"{cell.paper:.{cell.digits}f}"
    terms = ["–"] if cell.paper is None else []
    if cell.paper_only:
        return {"text": f"paper's ({paper})", "href": None, "state": "paper", "terms": ["paper's", *terms]}
    made = results.made(cell)
    if not made:
        return {"text": f"pending ({paper})", "href": None, "state": "pending", "terms": ["pending", *terms]}
    values = results.values(cell)
    if not values and any((results.read(r.path) or {}).get("diverged") for r in cell.replicas):
        text, terms = f"diverged ({paper})", ["diverged", *terms]
    elif not values:  # e.g. an AP of a size the data holds no object of
        text, terms = f"n/a ({paper})", ["n/a", *terms]
    else:
        mean, half = mean_interval(values)
        of = f" of {made}" if len(values) < made else ""  # the rest diverged
        ours = f"{mean:.2f}" + ("" if half is None else f" ± {half:.2f}") + f" n={len(values)}{of}"
        ours += f", {len(cell.replicas) - made} pending" if made < len(cell.replicas) else ""
        delta = "" if cell.paper is None or cell.smoke else f", {mean - cell.paper:+.2f}"
        text = f"{ours} ({paper}{delta})"
    first = next(r for r in cell.replicas if results.read(r.path) is not None)  # its provenance entry
    return {"text": text + (" smoke" if cell.smoke else ""), "href": "#" + anchor(first),
            "state": "smoke" if cell.smoke else "made", "terms": terms + (["smoke"] if cell.smoke else [])}


def seed_cells(cell):
    """A cell per seed of a cell: its result and pretraining run, for provenance entries."""
    for r in cell.replicas:
        run = r.backbone if isinstance(r, Detection) else r.run
        yield replace(cell, result=r, run=cell.run and run, replicas=(r,))


# A CIFAR preset's cells stand beside published numbers that are not the paper's
CIFAR_TERMS = TERMS | {"–": "no published number at this budget"}


def table_terms(rows, terms=TERMS):
    """The `terms` a table's cells use, in their order: the table's note explains only those."""
    used = {t for r in rows for c in r["cells"] for t in c["terms"]}
    return {term: meaning for term, meaning in terms.items() if term in used}


# ---- provenance -------------------------------------------------------------------------------------

PROVENANCE_LABELS = {"git_commit": "git commit", "container_image": "container image", "python": "python",
                     "packages": "packages", "hardware": "hardware"}  # in the order shown


def flat_provenance(record):
    """{(group, name): value} of a provenance record: a dict's entries (packages, hardware) one by one, so
    that a result differing in one package or the host differs in that only; a scalar has name None."""
    flat = {}
    for group, value in (record or {}).items():
        for name, v in (value.items() if isinstance(value, dict) else [(None, value)]):
            flat[(group, name)] = v
    return flat


def shared_provenance(records):
    """The (group, name): value pairs every recorded provenance has alike."""
    records = [r for r in records if r]
    if not records:
        return {}
    return {k: v for k, v in records[0].items() if all(k in r and r[k] == v for r in records[1:])}


def _shown(value):
    if value is None or value == []:
        return "none"
    return ", ".join(map(str, value)) if isinstance(value, list) else str(value)


def provenance_lines(flat):
    """[(label, text)] of flat provenance, a line per group: `packages: torch 2.14.1, numpy 2.4.6`."""
    groups = {}
    for (group, name), value in flat.items():
        groups.setdefault(group, []).append(_shown(value) if name is None else f"{name} {_shown(value)}")
    rank = {g: i for i, g in enumerate(PROVENANCE_LABELS)}
    order = sorted(groups, key=lambda g: (rank.get(g, len(rank)), g))
    return [(PROVENANCE_LABELS.get(g, g), ", ".join(groups[g])) for g in order]


def _differing(record, shared):
    """What a record holds beyond the shared provenance: lines, [] when nothing, None when not recorded."""
    if not record:
        return None
    return provenance_lines({k: v for k, v in record.items() if k not in shared})


# ---- links to the results' files --------------------------------------------------------------------

def result_files(cell):
    """[(label, path relative to the results folder)] of the files behind one result."""
    files = [("metrics", cell.result.path), ("log", cell.result.log)]
    if isinstance(cell.result, Detection):  # the fine-tuning's mmdetection config
        files += [("detector config", cell.result.config)]
    if cell.run:
        run = Pretraining(cell.run)
        files += [("pretraining summary", f"{run.folder}/summary.json"),
                  ("pretraining metrics", f"{run.folder}/metrics.jsonl"),
                  ("pretraining config", f"{run.folder}/config.yaml"), ("pretraining log", run.log)]
    return files


def links(files, results, out):
    """[{text, href}] of the files that exist, relative to the report folder OUT (URL-quoted: a results
    folder's name may hold spaces)."""
    return [{"text": label, "href": quote(Path(os.path.relpath(results.root / rel, out)).as_posix())}
            for label, rel in files if (results.root / rel).is_file()]


def _provenance_entry(cell, results, out):
    """What produced one result file: its files, the evaluation's settings and record and, for a pretrained
    backbone, the run's; provenance as flat records (see flat_provenance)."""
    metrics = results.read(cell.result.path)
    entry = {"id": anchor(cell.result), "result": cell.result.path, "run": cell.run,
             "links": links(result_files(cell), results, out),
             "evaluation": {k: metrics.get(k) for k in ("task", "bn", "scale", "protocol", "epochs", "lr",
                                                      "batch_size", "image_size", "feature_norm", "backbone", "data",
                                                      "config", "processes", "device", "wall_time_s") if k in metrics},
             "provenance": flat_provenance(metrics.get("provenance")), "pretrain": None, "run_config": None}
    if cell.run:
        folder = Pretraining(cell.run).folder
        config = results.root / folder / "config.yaml"
        entry["pretrain"] = results.read(f"{folder}/summary.json")
        entry["run_config"] = config.read_text() if config.is_file() else None
    entry["pretrain_provenance"] = flat_provenance((entry["pretrain"] or {}).get("provenance"))
    return entry


def provenance_view(entries):
    """(the shared provenance's lines, entries with what each differs in): shown once, then per result."""
    shared = shared_provenance([r for e in entries for r in (e["provenance"], e["pretrain_provenance"])])
    return provenance_lines(shared), [dict(e, provenance=_differing(e["provenance"], shared),
                                           pretrain_provenance=_differing(e["pretrain_provenance"], shared))
                                      for e in entries]


# ---- figures ------------------------------------------------------------------------------------------

def _save(fig, path):
    with atomic.atomic_path(path) as tmp:
        fig.savefig(tmp, format="png")
    plt.close(fig)


FIGURE_WIDTH = 10  # inches, at 120 dpi: 1200 px, the HTML's widest


def legend_columns(labels):
    """As many legend columns as the longest label lets fit across the figure (at most 4): a long run
    name takes ~0.075 in a character at the legend's 10 pt, plus its line's sample."""
    longest = max(map(len, labels), default=0)
    return max(1, min(len(labels), 4, int(FIGURE_WIDTH / (0.075 * longest + 0.7))))


def _legend_below(fig, axes):
    """One legend for all panels, below them: the panels share their lines' meanings, and a legend
    inside would cover data."""
    entries = {}
    for ax in axes:
        for handle, label in zip(*ax.get_legend_handles_labels()):
            entries.setdefault(label, handle)
    if entries:
        fig.legend(entries.values(), entries.keys(), loc="outside lower center", ncol=legend_columns(entries))


def figure4(tables, results, path):
    """Accuracy against epochs per method: with mixtures solid, without dotted (as the paper); the
    paper's curves in grey, ours in colour. No title inside: the report's heading is its title."""
    with plt.rc_context(STYLE):
        fig, axes = plt.subplots(1, 2, figsize=(FIGURE_WIDTH, 5), dpi=120, layout="constrained")
        for ax, (method, series) in zip(axes, tables.figure4.items()):
            for name, colour, style in (("ours", "C3", "-"), ("baseline", "C0", ":")):
                points = series[name]
                label = "with mixtures" if name == "ours" else "without"
                paper = [(ep, c.paper) for ep, c in points if c.paper is not None]
                if paper:
                    ax.plot(*zip(*paper), color="0.6", linestyle=style, marker="o", markersize=4,
                            label=f"paper, {label}")
                ours = [(ep, mean_interval(v)[0]) for ep, c in points if (v := results.values(c))]
                smoke = any(c.smoke for _, c in points if results.made(c))
                if ours:
                    ax.plot(*zip(*ours), color=colour, linestyle=style, marker="s",
                            label=f"ours, {label}" + (" (smoke stand-in)" if smoke else ""))
            ax.set_title(f"{'MoCo' if method == 'moco' else 'CMC'} on ImageNet-100")
            ax.set_xlabel("pretraining epochs")
            ax.set_ylabel("linear top-1 (%)")
            ax.set_xticks([ep for ep, _ in series["ours"]])
            ax.grid(alpha=0.3)
        _legend_below(fig, axes)
        _save(fig, path)


def knn_figure(tables, results, path):
    """A CIFAR preset's kNN monitor against epochs, a colour per row, and the published numbers within its
    budget as stars of the row's colour."""
    (table,) = tables.tables.values()
    epochs = get(tables.e.config, "cifar.epochs")
    with plt.rc_context(STYLE):
        fig, ax = plt.subplots(figsize=(FIGURE_WIDTH, 5.5), dpi=120, layout="constrained")
        for i, (row, (label, cells)) in enumerate(zip(tables.cifar_cells, table.rows, strict=True)):
            run = cells[0].run
            points = [(r["epoch"] + 1, r["knn_top1"]) for r in results.lines(f"{Pretraining(run).folder}/metrics.jsonl")
                      if r.get("knn_top1") is not None]
            if points:
                ax.plot(*zip(*points, strict=True), color=f"C{i}", marker="o", markersize=3, label=label)
            published = tables.cifar_published[row]
            stars = [(ep, v) for ep, (v, _) in sorted(published.items()) if ep <= epochs]
            if stars:
                ax.plot(*zip(*stars, strict=True), color=f"C{i}", marker="*", markersize=12, linestyle="none",
                        label=f"{label}, published")
        if not ax.lines:
            ax.text(0.5, 0.5, "no kNN monitor result yet", ha="center", va="center", transform=ax.transAxes,
                    color="0.5")
        ax.set_xlabel("pretraining epoch")
        ax.set_ylabel("kNN top-1 (%), the demo's monitor")
        ax.grid(alpha=0.3)
        _legend_below(fig, [ax])
        _save(fig, path)


def pretrain_curve(results, run):
    """{epoch: (mean loss, mean contrastive top-1)} of a pretraining run's metrics.jsonl (a line per
    logged step; epochs counted from 1)."""
    by_epoch = {}
    for record in results.lines(f"{Pretraining(run).folder}/metrics.jsonl"):
        by_epoch.setdefault(record["epoch"] + 1, []).append(record)
    return {ep: tuple(_mean(r.get(k) for r in rs) for k in ("loss", "acc1")) for ep, rs in by_epoch.items()}


def linear_curve(results, run):
    """{epoch: (mean training loss, val top-1)} of a linear probe's history."""
    metrics = results.read(Probe(run).path) or {}
    return {h["epoch"]: (h.get("loss"), h.get("top1")) for h in metrics.get("history") or []}


def _mean(values):
    values = [v for v in values if v is not None]
    return sum(values) / len(values) if values else None


# (curve kind, index in its epoch's values, y label, y scale): losses on a log scale, where a diverged
# probe does not flatten the others
CURVE_PANELS = (("pretraining", 0, "pretraining loss", "log"),
                ("pretraining", 1, "contrastive top-1 (%)", "linear"),
                ("linear", 0, "linear-probe training loss", "log"),
                ("linear", 1, "linear-probe val top-1 (%)", "linear"))


def _accuracy_text(metrics, key):
    if metrics is None:
        return "pending"
    if metrics.get("diverged"):
        return "diverged"
    return "n/a" if metrics.get(key) is None else f"{metrics[key]:.2f}"


def evaluations_view(experiments, results, out):
    """[{run, linear, knn_top1, knn_top5, links}]: each pretraining run's linear top-1 beside its kNN top-1
    and top-5 (the paper reports no kNN: ours only)."""
    rows = []
    for run in experiments.pretrain_runs():
        probe, knn = results.read(Probe(run).path), results.read(Knn(run).path)
        rows.append({"run": run, "linear": _accuracy_text(probe, "top1"), "knn_top1": _accuracy_text(knn, "top1"),
                     "knn_top5": _accuracy_text(knn, "top5"),
                     "links": links([("probe", Probe(run).path), ("kNN", Knn(run).path), ("kNN log", Knn(run).log)],
                                    results, out)})
    return rows


def _judged_text(judged):
    """(difference with its interval, n per cell) of a judged claim, as the report prints them."""
    if judged["verdict"] == "not run":
        return "–", " / ".join(map(str, judged["n"]))
    interval = "" if judged["low"] is None else f" [{judged['low']:+.2f}, {judged['high']:+.2f}]"
    return f"{judged['ours']:+.2f}{interval}", " / ".join(map(str, judged["n"]))


def claim_rows(claims):
    """The Claims table's rows: the paper's difference, ours on linear top-1 (or the claim's metric) with
    its interval, n per cell, whether the paper's difference lies inside, the verdict, and the same on kNN."""
    rows = []
    for c in claims:
        ours, n = _judged_text(c["linear"])
        inside = "–" if c["smoke"] else {True: "yes", False: "no", None: "–"}[c["linear"]["inside"]]
        paper = ("lower" if c["sign"] < 0 else "higher") if c["paper"] is None else f"{c['paper']:+.2f}"
        knn = _judged_text(c["knn"])[0] if c["knn"] else "–"
        rows.append({"id": c["id"], "claim": c["claim"], "source": c["source"], "paper": paper, "ours": ours, "n": n,
                     "inside": inside, "verdict": c["linear"]["verdict"], "knn": knn,
                     "knn_verdict": c["knn"]["verdict"] if c["knn"] else "–", "smoke": c["smoke"]})
    return rows


def curves_view(experiments, results):
    """{"pretraining": {run: curve}, "linear": {run: curve}} of the preset's runs made so far."""
    runs = list(experiments.pretrain_runs())
    return {"pretraining": {r: c for r in runs if (c := pretrain_curve(results, r))},
            "linear": {r: c for r in runs if (c := linear_curve(results, r))}}


def curves_figure(curves, path):
    """Small multiples, a panel per quantity, a colour and marker per run, one legend below (the figure
    grows by its rows). With no run made yet the panels say so (the file is one of REPORT_FILES all the
    same)."""
    names = list(dict.fromkeys([*curves["pretraining"], *curves["linear"]]))
    style = {n: (f"C{i % 10}", "os^Dvx"[i // 10 % 6]) for i, n in enumerate(names)}
    legend_rows = -(-len(names) // legend_columns(names))
    with plt.rc_context(STYLE):
        fig, axes = plt.subplots(2, 2, figsize=(FIGURE_WIDTH, 7 + 0.25 * legend_rows), dpi=120, layout="constrained")
        for ax, (kind, index, ylabel, scale) in zip(axes.flat, CURVE_PANELS):
            for run, curve in curves[kind].items():
                points = [(ep, v[index]) for ep, v in sorted(curve.items()) if v[index] is not None]
                if points:
                    colour, marker = style[run]
                    ax.plot(*zip(*points), color=colour, marker=marker, markersize=4,
                            markevery=max(1, len(points) // 10), label=run)
            if ax.lines:
                ax.set_yscale(scale)
            else:
                ax.text(0.5, 0.5, "no run made yet", ha="center", va="center", transform=ax.transAxes, color="0.5")
            ax.set_xlabel(f"{kind} epoch")
            ax.set_ylabel(ylabel)
            ax.grid(alpha=0.3)
        _legend_below(fig, axes.flat)
        _save(fig, path)


def _data_uri(path):
    return "data:image/png;base64," + base64.b64encode(Path(path).read_bytes()).decode("ascii")


def _copy(source, path):
    """Copy a file atomically (a reader never sees half an image)."""
    with atomic.atomic_path(path) as tmp:
        shutil.copyfile(source, tmp)


def figure5_file(key):
    """The name of a Figure 5's copy beside the report (workflow/rules/report.smk declares the same)."""
    return f"figure5-{key}.png"


def figure5_view(experiments, results, out):
    """[{key, dataset, title, maxima, png, file, links}] of the Figure 5s this preset makes, in order; a
    figure whose flatness.json or flatness.png is not there yet has maxima and png None (pending). The PNG
    carries its title; the report heads it with its data set only, so the title is shown once."""
    figures = []
    for key, figure in experiments.flatness.items():
        result = Flatness(key)
        doc = results.read(result.path)
        png = results.root / result.png
        made = doc is not None and png.is_file()
        figures.append({"key": key, "dataset": DATASETS.get(figure.dataset, figure.dataset), "title": figure.title,
                        "png": png if made else None, "file": figure5_file(key),
                        "links": links([("flatness", result.path), ("log", result.log)], results, out),
                        "maxima": {name: m["max_probability"] for name, m in doc["models"].items()} if made else None})
    return figures


def build_view(experiments, paper_tables, results, config_path, out):
    tables = []
    for table in paper_tables.tables.values():
        rows = [{"label": label, "cells": [cell_view(c, results) for c in row]} for label, row in table.rows]
        tables.append({"key": table.key, "title": table.title, "columns": table.columns, "rows": rows,
                       "notes": table.notes, "terms": table_terms(rows, CIFAR_TERMS if experiments.cifar else TERMS)})
    entries, seen = [], set()
    for cell in (one for c in paper_tables.cells() for one in seed_cells(c)):
        if results.made(cell) and cell.result not in seen:
            seen.add(cell.result)
            entries.append(_provenance_entry(cell, results, out))
    shared, entries = provenance_view(entries)
    # the smoke runs' size, for the report's note (the four are alike)
    smoke_run = next(iter(experiments.pretrain_runs().values())) if experiments.smoke else None
    smoke_runs = smoke_run and {"epochs": smoke_run["train"]["epochs"], "image_size": smoke_run["data"]["image_size"]}
    return {
        "preset": experiments.preset,
        "smoke": experiments.smoke,
        "cifar": experiments.cifar,
        "standins": experiments.standins,
        "detection_standin": paper_tables.detection_standin,
        "smoke_runs": smoke_runs,
        "generated": datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
        "config": str(config_path),
        "report_provenance": provenance.collect(),
        "tables": tables,
        "made": sum(1 for t in tables for r in t["rows"] for c in r["cells"] if c["state"] in ("made", "smoke")),
        "pending": sum(1 for t in tables for r in t["rows"] for c in r["cells"] if c["state"] == "pending"),
        "evaluations": evaluations_view(experiments, results, out),
        "claims": claim_rows(claims_view(experiments, paper_tables, results)),
        "verdicts": VERDICTS,
        "figure5": figure5_view(experiments, results, out),
        "curves": curves_view(experiments, results),
        "smoke_loss_note": SMOKE_LOSS_NOTE,
        "shared": shared,
        "entries": entries,
    }


# Under a smoke report's curves: a 2-epoch run's rising loss is what a newcomer asks about first.
SMOKE_LOSS_NOTE = ("A smoke run's pretraining loss can rise from epoch 1 to 2, and that is expected: its negatives "
                   "(MoCo's queue, CMC's memory bank) are the encoders' own embeddings, which change as fast as the "
                   "encoders do this early, so they get harder as the encoders learn. What shows that the pipeline "
                   "learns is the linear probe's falling loss and its top-1 far above chance.")

REPORT_FILES = ("report.md", "report.html", "figure4.png", "knn.png", "curves.png")  # any report's


def report_files(experiments):
    """The files a preset's report writes (and a figure5_file per made Figure 5): Figure 4, or for a CIFAR
    preset the kNN monitor's figure in its place."""
    return tuple(f for f in REPORT_FILES if f != ("figure4.png" if experiments.cifar else "knn.png"))


def folders(config_path, results_dir=None, out=None):
    """(results folder, report folder), by default the config's preset's own folder, RESULTS/PRESET (where
    the DAG puts each preset's outputs, apart from the other presets'), and its report/."""
    if results_dir is None:
        config = load_config(config_path)
        results_dir = preset_folder({"results": "results", **config}, Experiments(config).preset)
    return Path(results_dir), Path(out) if out is not None else Path(results_dir) / "report"


def run(config_path, results_dir, out):
    """Write report_files and each made Figure 5's copy (figure5_file) into OUT; returns a summary."""
    config = load_config(config_path)
    experiments = Experiments(config)
    tables = Tables(experiments)
    results = Results(results_dir)
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    figure = "knn.png" if experiments.cifar else "figure4.png"
    (knn_figure if experiments.cifar else figure4)(tables, results, out / figure)
    view = build_view(experiments, tables, results, config_path, out)
    curves_figure(view["curves"], out / "curves.png")
    # each made Figure 5: copied beside report.md, embedded in the HTML
    linked, embedded = [], []
    for f in view["figure5"]:
        if f["png"]:
            _copy(f["png"], out / f["file"])
        linked.append(dict(f, src=f["png"] and f["file"]))
        embedded.append(dict(f, src=f["png"] and _data_uri(f["png"])))
    atomic.write_text(out / "report.md", TEMPLATES.get_template("report.md.j2").render(
        **dict(view, figure5=linked), figure=figure, curves_png="curves.png"))
    atomic.write_text(out / "report.html", TEMPLATES.get_template("report.html.j2").render(
        **dict(view, figure5=embedded), figure=_data_uri(out / figure),
        curves_png=_data_uri(out / "curves.png")))
    return {"report": str(out / "report.html"), "cells_made": view["made"], "cells_pending": view["pending"]}
