"""The paper's tables and Figure 4 as the report lays them out: titles, columns and row labels, and in each
cell the result that fills it (a flatmix.layout key), its metric and the paper's number (flatmix.paper).
Built on flatmix.experiments' runs, so that a cell names exactly the run the DAG trains; in the smoke
preset a cell of a run a smoke run stands in for reads the smoke run's result, marked as such.
"""

from dataclasses import dataclass, field

from flatmix import cifar_anchors, paper
from flatmix.experiments import CIFAR_PARTS, DETECTION_PARTS, PRESET_PARTS
from flatmix.layout import Detection, Knn, Monitor, Probe
from flatmix.workflow_config import get

TABLES = tuple(part for part in PRESET_PARTS["paper"] if part.startswith("table"))
# The paper's linear top-1 of each probe part, in the shape of its grid (flatmix.experiments)
PUBLISHED = {"table1": paper.TABLE1, "table2": paper.TABLE2, "table3": paper.TABLE3, "table4": paper.TABLE4,
             "table5": paper.TABLE5, "figure4": paper.FIGURE4, "table6": paper.TABLE6}
# The transfer tables: {metric: column}, title, the paper's values per backbone (flatmix.paper's keys)
_VOC = {"AP50": "AP50", "recall": "Recall"}
DETECTION_LAYOUT = {
    "table7a": (_VOC, "Table 7a: VOC Faster R-CNN R50-FPN, No Freeze (%)", paper.TABLE7["train"]),
    "table7b": (_VOC, "Table 7b: VOC Faster R-CNN R50-FPN, Freeze BN (%)", paper.TABLE7["frozen"]),
    "table8a": ({f"bbox_{m}": m for m in ("AP", "AP50", "AP75", "APs", "APm", "APl")},
                "Table 8a: COCO RetinaNet R50-FPN, Freeze BN (%)", paper.TABLE8A),
    "table8b": ({**{f"bbox_{m}": f"{m}bb" for m in ("AP", "AP50", "AP75")},
                 **{f"mask_{m}": f"{m}mk" for m in ("AP", "AP50", "AP75")}},
                "Table 8b: COCO Mask R-CNN R50-FPN, Freeze BN (%)", paper.TABLE8B),
}


@dataclass(frozen=True)
class Cell:
    """One number of a table: the results that hold it (one per seed of its run, seed 0's first), under
    which key, and the paper's value."""
    result: Probe | Detection | Knn | Monitor  # seed 0's, whose files the report links
    metric: str
    paper: float | None
    run: str | None = None  # the pretraining run behind it (None: random init. or an outside checkpoint)
    smoke: bool = False     # a smoke run standing in for the paper's (or fine-tuned at smoke scale)
    digits: int = 1         # decimals the paper prints
    replicas: tuple = ()    # every seed's result, seed 0's first
    paper_only: bool = False  # a row this preset does not run (benchmark: the paper's MoCo and ours)


@dataclass
class Table:
    key: str
    title: str
    columns: list
    rows: list = field(default_factory=list)  # [(label, [Cell | None])]; None is the paper's "–"
    notes: list = field(default_factory=list)  # lines under the table (the CIFAR anchors at every budget)


CIFAR_LABELS = {"asymmetric": "MoCo, asymmetric", "symmetric": "MoCo, symmetric", "global": "+ global",
                "region": "+ region", "global+region": "+ global + region", "unmix": "+ Un-Mix"}
CIFAR_COLUMNS = ["kNN top-1 (the demo's monitor)", "kNN top-1 (backbone)", "linear top-1"]


class Tables:
    """Every table (`tables`, by key, in the paper's order) and Figure 4 (`figure4`: method -> series ->
    [(epochs, Cell)]) of one Experiments; for a CIFAR preset its one table instead, and no Figure 4."""

    def __init__(self, experiments):
        self.e = experiments
        self.detection_standin = None  # {row, run}: the transfer tables' row a smoke run stands in for
        self.detection_cells = {}      # (table, paper's backbone key, metric) -> Cell, for flatmix.claims
        self.cifar_cells = {}          # row -> its kNN monitor Cell, for flatmix.claims
        self.cifar_published = {}      # row -> {epochs: (published kNN top-1, source)}, for the kNN figure
        if experiments.cifar:
            self.tables, self.figure4 = {experiments.preset: self._cifar_table(experiments.preset)}, {}
            return
        self.tables = {key: getattr(self, "_" + key)() for key in TABLES if key not in DETECTION_PARTS}
        self.tables |= {key: self._detection_table(key) for key in DETECTION_PARTS}
        self.figure4 = {method: {series: [(ep, self._probe(run, paper.FIGURE4[method][series].get(ep)))
                                          for ep, run in runs.items()]
                                 for series, runs in by_series.items()}
                        for method, by_series in self.e.grids["figure4"].items()}

    def _t(self, key):
        return get(self.e.config, f"experiments.{key}")

    def _probe(self, run, value, digits=1):
        used, smoke = self.e.stand_in(run)
        return Cell(Probe(used), "top1", value, used, smoke, digits, tuple(map(Probe, self.e.replicas(used))))

    def _sweep(self, key, title, column, label, published, digits):
        """Tables 1-3: one row over the values of one parameter."""
        grid = self.e.grids[key]
        return Table(key, title, [column.format(v) for v in grid],
                     [(label, [self._probe(run, published.get(v), digits) for v, run in grid.items()])])

    def _table1(self):
        return self._sweep("table1", f"Table 1: MoCo, number of global mixtures, {self._t('table1.epochs')} epochs "
                           "(top-1 %)", "{} mixes", "MoCo + global", paper.TABLE1, 2)

    def _table2(self):
        return self._sweep("table2", f"Table 2: MoCo, number of region mixtures, {self._t('table2.epochs')} epochs "
                           "(top-1 %)", "{} mixes", "MoCo + region", paper.TABLE2, 2)

    def _table3(self):
        t = self._t("table3")
        return self._sweep("table3", f"Table 3: MoCo, context pixel decay ({t['region_mixes']} region mixes), "
                           f"{t['epochs']} epochs (top-1 %)", "decay {}", "MoCo + region", paper.TABLE3, 1)

    def _table4(self):
        t, grid = self._t("table4"), self.e.grids["table4"]
        rows = [("baseline (no mixture)",
                 [self._probe(grid["baseline"], paper.TABLE4["baseline"])] + [None] * (len(t["global_p"]) - 1))]
        rows += [(level, [self._probe(run, paper.TABLE4[level].get(p)) for p, run in grid[level].items()])
                 for level in ("G", "G+R")]
        return Table("table4", f"Table 4: CMC, global mixture probability, {t['epochs']} epochs (top-1 %)",
                     [f"p = {p}" for p in t["global_p"]], rows)

    def _table5(self):
        t = self._t("table5")
        grid = self.e.grids["table5"]
        rows = [(label, [self._probe(run, paper.TABLE5[method][key]) for key, run in grid[method].items()])
                for method, label in (("moco", "MoCo"), ("cmc", "CMC"))]
        return Table("table5", f"Table 5: ImageNet-100, {t['baseline_epochs']} epochs, then {t['epochs']} epochs "
                     "with each mixture (top-1 %)",
                     [f"{t['baseline_epochs']} ep", f"{t['epochs']} ep", "+Global", "+Region", "+Global +Region"], rows)

    def _table6(self):
        rows = [(f"{arch} {'MoCo' if kind == 'baseline' else kind}",
                 [self._probe(run, paper.TABLE6.get(arch, {}).get(kind))])
                for arch, runs in self.e.grids["table6"].items() for kind, run in runs.items()]
        return Table("table6", f"Table 6: ImageNet-1K, {self._t('imagenet1k.epochs')} epochs (top-1 %)", ["top-1"],
                     rows)

    def _detection_table(self, key):
        """A row per backbone of the table; a backbone the paper did not fine-tune so is a row of "–"."""
        metrics, title, published = DETECTION_LAYOUT[key]
        rows = []
        for b in self.e.backbones:
            if b.name not in self.e.grids[key]:  # random init. is on VOC only
                continue
            label, paper_key = {"random": ("random init.", "random"), "moco": (f"MoCo (K={b.K})", "moco"),
                                "ours": (f"Ours (K={b.K})", f"ours-k{b.K}"),
                                "outside": (f"{b.name} (outside checkpoint)", None)}[b.kind]
            detection = self.e.grids[key][b.name]
            if detection is None:
                rows.append((label, [None] * len(metrics)))
                continue
            used, smoke = self.e.stand_in_detection(detection)
            if smoke:
                self.detection_standin = {"row": label, "run": used.backbone}
            run = used.backbone if smoke or used.backbone in self.e.runs else None
            values = published.get(paper_key, (None,) * len(metrics))
            replicas = tuple(used._replace(backbone=b) for b in self.e.replicas(used.backbone))
            marks = {"smoke": smoke or (self.e.smoke and b.kind == "outside"),  # at smoke scale
                     "paper_only": self.e.benchmark and b.kind != "outside"}
            cells = [Cell(used, m, v, run, replicas=replicas, **marks) for m, v in zip(metrics, values, strict=True)]
            rows.append((label, cells))
            self.detection_cells |= {(key, paper_key, m): c for m, c in zip(metrics, cells, strict=True)}
        return Table(key, title, list(metrics.values()), rows)

    def _cifar_table(self, part):
        """A row per CIFAR run: its kNN monitor beside the published number at its budget, kNN on the final
        backbone (`flatmix knn`) and the linear probe; the published numbers at every budget under it."""
        c = get(self.e.config, "cifar")
        rows, notes = [], []
        for row, run in self.e.grids[part].items():
            loss = row if row in ("asymmetric", "symmetric") else c["mixture_loss"]
            key = cifar_anchors.anchor_key(row, loss)
            knn, linear = cifar_anchors.KNN[part].get(key, {}), cifar_anchors.LINEAR.get(part, {}).get(key, {})
            label = CIFAR_LABELS[row] + ("" if row == loss else f" ({loss})")
            replicas = self.e.replicas(run)
            cells = []
            for result, metric, published in ((Monitor, "knn_top1", knn), (Knn, "top1", {}), (Probe, "top1", linear)):
                value, source = published.get(c["epochs"], (None, None))
                cells.append(Cell(result(run), metric, value, run, digits=2 if source == cifar_anchors.UNMIX else 1,
                                  replicas=tuple(map(result, replicas))))
            rows.append((label, cells))
            self.cifar_cells[row], self.cifar_published[row] = cells[0], knn
            if knn:
                notes.append(f"{label}: " + ", ".join(f"{v} at {ep} epochs ({source})"
                                                       for ep, (v, source) in sorted(knn.items())))
        name = {"cifar10": "CIFAR-10", "cifar100": "CIFAR-100"}[part]
        return Table(part, f"{name}: MoCo with the MoCo CIFAR demo's recipe, {c['epochs']} epochs (top-1 %)",
                     CIFAR_COLUMNS, rows, ["Published kNN top-1 (the demo's monitor):", *notes])

    def cell(self, address):
        """The cell at an address of flatmix.paper.CLAIMS, or None where this config has no such run:
        (part, key, ...) walks a probe part's grid (e.g. ("table5", "moco", "G+R"), ("figure4", "cmc",
        "ours", 800)); (table, backbone, metric) picks a transfer cell (("table7a", "ours-k16384", "AP50"))."""
        part, *keys = address
        if part in DETECTION_PARTS:
            return self.detection_cells.get(tuple(address))
        if part in CIFAR_PARTS:
            return self.cifar_cells.get(keys[0])
        run, published = self.e.grids[part], PUBLISHED[part]
        for key in keys:
            if not isinstance(run, dict) or key not in run:
                return None
            run, published = run[key], (published or {}).get(key)
        return self._probe(run, published)

    def cells(self):
        """Every cell of the tables and Figure 4 (not the "–" ones), in the report's order."""
        yield from (c for table in self.tables.values() for _, cells in table.rows for c in cells if c is not None)
        yield from (c for series in self.figure4.values() for points in series.values() for _, c in points)
