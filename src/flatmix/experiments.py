"""The paper's experiments as the DAG, the cost plan and the report all see them: the pretraining runs
each table needs, the result file and metric behind every table cell, and the paper's number beside it.

Built from the workflow config (config.yaml's `preset`, `experiments` and `transfer`), so the Snakefile,
`flatmix plan` and `flatmix report` agree on every run name; a run that two tables need has one name and
is trained once. The smoke preset stands its four tiny runs in for the paper's runs they imitate (Table 5's
800-epoch baselines and full methods, Table 7-8's "ours"); every other cell stays pending.

Where the paper is silent (see the README):
- MoCo's mixtures fire with p = 0.5 (the paper: "0.5 or higher values can perform better" for MoCo),
  CMC's with p = 0.1 (Table 4's best and its fixed region p).
- Counts are mixing steps (`mixes`, the authors' num_mix), Tables 1-2's "numbers of mixtures".
- Table 2 varies the region count without decay, Table 3 the decay at Table 2's best count (5 mixes: its
  decay-1.0 cell, 76.5, is not Table 2's 2 mixes, 76.02); Table 4's "G+R" adds a 2-mix region mixture
  without decay (the authors' code defaults).
- Table 5's "+Global" is Table 1's best (4 mixes) and "+Region" Tables 2-3's best (5 mixes, decay 0.2) for
  both methods (Table 4's caption: CMC's best uses global mixtures of 4).
- The transfer backbones (Tables 7-8) are ImageNet-1K ResNet-50 runs of 200 epochs.
"""

from dataclasses import dataclass, field, replace
import re

from flatmix import paper
from flatmix.errors import FlatmixError
from flatmix.presets import MIXES_NOTE, PRESETS as SMOKE_RUNS, in100_run, in1k_run, mixture
from flatmix.runconfig import flatten, read_mapping

PRESET_PARTS = {
    "smoke": (),
    "in100-ablation": ("table1", "table2", "table3", "table4", "figure4"),
    "in100-main": ("table5", "figure5-in100"),
    "in1k": ("table6", "figure5"),
    "transfer": ("table7a", "table7b", "table8a", "table8b"),
}
PRESET_PARTS["paper"] = tuple(part for parts in PRESET_PARTS.values() for part in parts)
PRESETS = tuple(PRESET_PARTS)
# What each preset makes, for `flatmix plan --help` (the README's preset table says it at length).
PRESET_DESCRIPTIONS = {
    "smoke": "four tiny runs (smoke-moco, smoke-moco-mix, smoke-cmc, smoke-cmc-mix) through every stage on the "
             "embedded data, on a CPU",
    "in100-ablation": "Tables 1-4 and Figure 4: the ImageNet-100 ablations of mixture count, decay, probability "
                      "and epochs",
    "in100-main": "Table 5 (ImageNet-100 MoCo and CMC, 800 epochs) and Figure 5 on ImageNet-100",
    "in1k": "Table 6 (ImageNet-1K, R50 and R50 w2x, 200 epochs) and Figure 5 on ImageNet-1K",
    "transfer": "Tables 7-8: VOC Faster R-CNN, COCO RetinaNet and Mask R-CNN from ImageNet-1K R50 backbones",
    "paper": "all of the above",
}
# The parts that make a Figure 5, and the key of each in Experiments.flatness (RESULTS/PRESET/flatness/KEY/): the
# paper's (ImageNet-1K) first, then the ImageNet-100 one that the smoke and in100-main presets make.
FIGURE5_PARTS = {"figure5": "in1k", "figure5-in100": "in100"}

# The paper's detection tables: (task, bn, {metric: column}, title, the paper's values per backbone)
_VOC = {"AP50": "AP50", "recall": "Recall"}
DETECTION_TABLES = {
    "table7a": ("voc-faster-rcnn", "train", _VOC, "Table 7a: VOC Faster R-CNN R50-FPN, No Freeze (%)",
                paper.TABLE7["train"]),
    "table7b": ("voc-faster-rcnn", "frozen", _VOC, "Table 7b: VOC Faster R-CNN R50-FPN, Freeze BN (%)",
                paper.TABLE7["frozen"]),
    "table8a": ("coco-retinanet", "frozen", {f"bbox_{m}": m for m in ("AP", "AP50", "AP75", "APs", "APm", "APl")},
                "Table 8a: COCO RetinaNet R50-FPN, Freeze BN (%)", paper.TABLE8A),
    "table8b": ("coco-mask-rcnn", "frozen", {**{f"bbox_{m}": f"{m}bb" for m in ("AP", "AP50", "AP75")},
                                             **{f"mask_{m}": f"{m}mk" for m in ("AP", "AP50", "AP75")}},
                "Table 8b: COCO Mask R-CNN R50-FPN, Freeze BN (%)", paper.TABLE8B),
}
SMOKE_STANDINS = {  # the smoke runs, and which paper run (by its role) each imitates
    "smoke-moco": "moco-800", "smoke-moco-mix": "moco-ours-800", "smoke-cmc": "cmc-800",
    "smoke-cmc-mix": "cmc-ours-800",
}
_SAFE_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._+-]*$")


@dataclass(frozen=True)
class Cell:
    """One number of a table: which result file holds it, under which key, and the paper's value."""
    result: str            # a metrics.json path relative to the results folder
    metric: str
    paper: float | None
    run: str | None = None  # the pretraining run behind it (None: random init. or an outside checkpoint)
    smoke: bool = False     # a smoke run standing in for the paper's
    digits: int = 1         # decimals the paper prints


@dataclass(frozen=True)
class Figure5:
    """One Figure 5: its title, the prepared data set whose whole val/ it is measured on, and the run
    behind each curve ({label: run})."""
    title: str
    dataset: str  # "imagenet100" | "imagenet1k"
    runs: dict


@dataclass
class Table:
    key: str
    title: str
    columns: list
    rows: list = field(default_factory=list)  # [(label, [Cell | None])]; None is the paper's "–"


def _merge(base, update):
    """Snakemake's way of layering config files: nested mappings merge, everything else is replaced."""
    merged = dict(base)
    for key, value in update.items():
        merged[key] = _merge(merged[key], value) if isinstance(value, dict) and isinstance(merged.get(key), dict) \
            else value
    return merged


def load_config(*paths):
    """The workflow config from one or more YAML files, later ones overriding earlier ones."""
    config = {}
    for path in paths:
        config = _merge(config, read_mapping(path))
    return config


def linear_result(run):
    return f"linear/{run}/metrics.json"


def detection_result(backbone, task, bn):
    return f"detect/{backbone}/{task}-{bn}/metrics.json"


# Keys of `experiments` an earlier flatmix spelled otherwise: `*_n` counted images.
RENAMED = {"global_n": "global_mixes", "region_n": "region_mixes"}


def check_renamed(config):
    """A one-line error for a key of an earlier flatmix's config, naming the key that replaced it."""
    experiments = config.get("experiments") if isinstance(config, dict) else None
    for key in flatten(experiments) if isinstance(experiments, dict) else ():
        *parents, leaf = key.split(".")
        if leaf in RENAMED:
            raise FlatmixError(f"config: experiments.{key} is now "
                               f"experiments.{'.'.join([*parents, RENAMED[leaf]])} {MIXES_NOTE}")


def _get(config, dotted):
    node = config
    for key in dotted.split("."):
        if not isinstance(node, dict) or key not in node:
            raise FlatmixError(f"config: key {dotted!r} is missing")
        node = node[key]
    return node


class Experiments:
    """Every table, figure and run of the paper for one workflow config; `preset` picks what to make."""

    def __init__(self, config, preset=None):
        check_renamed(config)
        self.preset = preset or _get(config, "preset")
        if self.preset not in PRESET_PARTS:
            raise FlatmixError(f"unknown preset {self.preset!r}; known: {', '.join(PRESETS)}")
        self.config = config
        self.runs = {}          # name -> spec of every pretraining run a table names
        self.datasets = {}      # name -> "imagenet100" | "imagenet1k"
        self.roles = {}         # role ("moco-800", ...) -> run name, for the smoke stand-ins
        self.tables = {}        # key -> Table
        self.figure4 = {}       # method -> series -> [(epochs, Cell)]
        self.flatness = {}      # key ("in1k" | "in100") -> Figure5, of the Figure 5s this preset makes
        self._figure5 = {}      # the same for every Figure 5 (part_runs asks of any part)
        self.outside = dict(_get(config, "transfer.checkpoints") or {})
        self.standins = {}      # paper run -> the smoke run standing in for it
        self._build()
        if self.preset == "smoke":
            self.standins = {self.roles[role]: smoke for smoke, role in SMOKE_STANDINS.items()}
            self._stand_in()
        made = {"in100"} if self.preset == "smoke" else {FIGURE5_PARTS[p] for p in self.parts() if p in FIGURE5_PARTS}
        self.flatness = {key: self._figure5[key] for key in FIGURE5_PARTS.values() if key in made}

    # ---- runs -----------------------------------------------------------------------------------
    def _in100(self, method, epochs, mix=None, K=None):
        c = _get(self.config, "experiments.imagenet100")
        name, spec = in100_run(method, epochs, mix or {}, K or c["K"], c["batch_size"])
        return self._add(name, spec, "imagenet100")

    def _in1k(self, arch, mix=None, K=None):
        c = _get(self.config, "experiments.imagenet1k")
        name, spec = in1k_run(arch, c["epochs"], mix or {}, K or c["K"], c["batch_size"])
        return self._add(name, spec, "imagenet1k")

    def _add(self, name, spec, dataset):
        how = _get(self.config, "experiments.pretrain")
        self.runs[name] = _merge(spec, {"data": {"loader": how["loader"], "workers": how["workers"]},
                                        "train": {"compile": how["compile"]}})
        self.datasets[name] = dataset
        return name

    def _p(self, method):
        return _get(self.config, f"experiments.imagenet100.{method}_p")

    def _ours(self, method, which="G+R"):
        """Table 5's mixtures: '+Global', '+Region' or both, at their best settings."""
        best, p = _get(self.config, f"experiments.best.{method}"), self._p(method)
        g = {"global_mixes": best["global_mixes"], "global_p": p} if "G" in which else {}
        r = {"region_mixes": best["region_mixes"], "region_p": p, "decay": best["decay"]} if "R" in which else {}
        return mixture(**g, **r)

    def _linear(self, run, value, digits=1):
        return Cell(linear_result(run), "top1", value, run, digits=digits)

    # ---- tables ---------------------------------------------------------------------------------
    def _build(self):
        e = lambda key: _get(self.config, f"experiments.{key}")  # noqa: E731
        moco_p = self._p("moco")

        t = e("table1")
        runs = [self._in100("moco", t["epochs"], mixture(global_mixes=k, global_p=moco_p)) for k in t["global_mixes"]]
        self._table("table1", f"Table 1: MoCo, number of global mixtures, {t['epochs']} epochs (top-1 %)",
                    [f"{k} mixes" for k in t["global_mixes"]],
                    [("MoCo + global", [self._linear(r, paper.TABLE1.get(k), 2) for r, k in zip(runs, t["global_mixes"])])])

        t = e("table2")
        runs = [self._in100("moco", t["epochs"], mixture(region_mixes=k, region_p=moco_p)) for k in t["region_mixes"]]
        self._table("table2", f"Table 2: MoCo, number of region mixtures, {t['epochs']} epochs (top-1 %)",
                    [f"{k} mixes" for k in t["region_mixes"]],
                    [("MoCo + region", [self._linear(r, paper.TABLE2.get(k), 2) for r, k in zip(runs, t["region_mixes"])])])

        t = e("table3")
        runs = [self._in100("moco", t["epochs"], mixture(region_mixes=t["region_mixes"], region_p=moco_p, decay=d))
                for d in t["decay"]]
        self._table("table3", f"Table 3: MoCo, context pixel decay ({t['region_mixes']} region mixes), {t['epochs']} epochs "
                    "(top-1 %)", [f"decay {d}" for d in t["decay"]],
                    [("MoCo + region", [self._linear(r, paper.TABLE3.get(d)) for r, d in zip(runs, t["decay"])])])

        t = e("table4")
        base = self._in100("cmc", t["epochs"])
        rows = [("baseline (no mixture)", [self._linear(base, paper.TABLE4["baseline"])] + [None] * (len(t["global_p"]) - 1))]
        for level in ("G", "G+R"):
            cells = []
            for p in t["global_p"]:
                mix = mixture(global_mixes=t["global_mixes"], global_p=p,
                              **({"region_mixes": t["region_mixes"], "region_p": t["region_p"]} if level == "G+R" else {}))
                cells.append(self._linear(self._in100("cmc", t["epochs"], mix), paper.TABLE4[level].get(p)))
            rows.append((level, cells))
        self._table("table4", f"Table 4: CMC, global mixture probability, {t['epochs']} epochs (top-1 %)",
                    [f"p = {p}" for p in t["global_p"]], rows)

        t = e("table5")
        rows = []
        for method, label in (("moco", "MoCo"), ("cmc", "CMC")):
            P = paper.TABLE5[method]
            K0 = t["cmc_baseline_K"] if method == "cmc" else None
            cells = [self._linear(self._in100(method, t["baseline_epochs"], K=K0), P["240"])]
            for which, key in ((None, "800"), ("G", "G"), ("R", "R"), ("G+R", "G+R")):
                run = self._in100(method, t["epochs"], self._ours(method, which) if which else None)
                if which in (None, "G+R"):
                    self.roles[f"{method}-ours-800" if which else f"{method}-800"] = run
                cells.append(self._linear(run, P[key]))
            rows.append((label, cells))
        self._table("table5", f"Table 5: ImageNet-100, {t['baseline_epochs']} epochs, then {t['epochs']} epochs "
                    "with each mixture (top-1 %)",
                    [f"{t['baseline_epochs']} ep", f"{t['epochs']} ep", "+Global", "+Region", "+Global +Region"], rows)
        self._figure5["in100"] = Figure5(
            f"Figure 5 on ImageNet-100 (not the paper's setting: Table 5's {t['epochs']}-epoch ResNet-50 runs, "
            "ImageNet-100 val)", "imagenet100",
            {"MoCo": self.roles["moco-800"], "MoCo + mixtures": self.roles["moco-ours-800"]})

        for method in ("moco", "cmc"):
            self.figure4[method] = {
                series: [(ep, self._linear(self._in100(method, ep, self._ours(method) if series == "ours" else None),
                                           paper.FIGURE4[method][series].get(ep)))
                         for ep in e("figure4.epochs")]
                for series in ("baseline", "ours")}

        t = e("imagenet1k")
        rows = []
        for arch in t["archs"]:
            P = paper.TABLE6.get(arch, {})
            rows.append((f"{arch} MoCo", [self._linear(self._in1k(arch), P.get("baseline"))]))
            rows.append((f"{arch} ours", [self._linear(self._in1k(arch, self._ours("moco")), P.get("ours"))]))
        self._table("table6", f"Table 6: ImageNet-1K, {t['epochs']} epochs (top-1 %)", ["top-1"], rows)
        # the paper's Figure 5: Table 6's ResNet-50 runs (the same names: trained once), ImageNet-1K val
        self._figure5["in1k"] = Figure5(
            f"Figure 5: ResNet-50 on ImageNet-1K val (Table 6's {t['epochs']}-epoch MoCo and ours)", "imagenet1k",
            {"MoCo": self._in1k("resnet50"), "MoCo + mixtures": self._in1k("resnet50", self._ours("moco"))})

        self._detection_tables()

    def _detection_tables(self):
        tr = _get(self.config, "transfer")
        backbones = [("random init.", "random", "random"),
                     (f"MoCo (K={tr['baseline_K']})", self._in1k("resnet50", K=tr["baseline_K"]), "moco")]
        backbones += [(f"Ours (K={K})", self._in1k("resnet50", self._ours("moco"), K=K), f"ours-k{K}")
                      for K in tr["ours_K"]]
        for name in self.outside:
            if not _SAFE_NAME.match(str(name)) or name in self.runs or name == "random":
                raise FlatmixError(f"transfer.checkpoints: {name!r} must be a new name of letters, digits, . _ + -")
            backbones.append((f"{name} (outside checkpoint)", name, None))
        self.roles["transfer-ours"] = backbones[2][1] if len(backbones) > 2 else None
        for key, (task, bn, metrics, title, published) in DETECTION_TABLES.items():
            rows = []
            for label, backbone, paper_key in backbones:
                if backbone == "random" and task != "voc-faster-rcnn":
                    continue
                if backbone == "random" and bn == "frozen":  # not run in the paper either
                    rows.append((label, [None] * len(metrics)))
                    continue
                values = published.get(paper_key, (None,) * len(metrics))
                run = backbone if backbone in self.runs else None
                rows.append((label, [Cell(detection_result(backbone, task, bn), m, v, run)
                                     for m, v in zip(metrics, values)]))
            self._table(key, title, list(metrics.values()), rows)

    def _table(self, key, title, columns, rows):
        self.tables[key] = Table(key, title, columns, rows)

    # ---- the smoke preset's stand-ins -------------------------------------------------------------
    def _stand_in(self):
        """Point the cells of the runs the smoke runs imitate at the smoke results."""
        by_run = self.standins
        ours = self.roles["transfer-ours"]

        def swap(cell):
            if cell is None:
                return None
            if cell.result.startswith("linear/") and cell.run in by_run:
                return replace(cell, result=linear_result(by_run[cell.run]), run=by_run[cell.run], smoke=True)
            if cell.result.startswith("detect/") and cell.run == ours:
                rest = cell.result.split("/", 2)[2]
                return replace(cell, result=f"detect/smoke-moco-mix/{rest}", run="smoke-moco-mix", smoke=True)
            return cell

        for table in self.tables.values():
            table.rows = [(label, [swap(c) for c in cells]) for label, cells in table.rows]
        self.figure4 = {m: {s: [(ep, swap(c)) for ep, c in pts] for s, pts in series.items()}
                        for m, series in self.figure4.items()}
        figure = self._figure5["in100"]
        self._figure5["in100"] = replace(figure, title=f"{figure.title}, smoke runs standing in",
                                         runs={"MoCo": "smoke-moco", "MoCo + mixtures": "smoke-moco-mix"})

    # ---- what the preset makes --------------------------------------------------------------------
    def parts(self):
        return PRESET_PARTS[self.preset]

    def _cells(self, parts):
        for part in parts:
            if part == "figure4":
                yield from (c for series in self.figure4.values() for pts in series.values() for _, c in pts)
            elif part in self.tables:
                yield from (c for _, cells in self.tables[part].rows for c in cells if c is not None)

    def part_runs(self, part):
        """The pretraining runs one table or figure needs."""
        runs = {c.run for c in self._cells([part]) if c.run}
        return runs | set(self._figure5[FIGURE5_PARTS[part]].runs.values()) if part in FIGURE5_PARTS else runs

    def part_detections(self, part):
        """[(backbone, task, bn)] one table fine-tunes; backbone is a run, 'random' or an outside name."""
        found = []
        for cell in self._cells([part]):
            if cell.result.startswith("detect/"):
                _, backbone, setting = cell.result.split("/")[:3]
                task, bn = setting.rsplit("-", 1)
                if (backbone, task, bn) not in found:
                    found.append((backbone, task, bn))
        return found

    def pretrain_runs(self):
        """{name: spec} of the runs this preset trains (for smoke: the four smoke runs)."""
        if self.preset == "smoke":
            return dict(SMOKE_RUNS)
        names = set().union(*(self.part_runs(p) for p in self.parts()))
        return {n: spec for n, spec in self.runs.items() if n in names}

    def dataset_of(self, run):
        return "imagenet100" if run in SMOKE_RUNS else self.datasets[run]

    def detections(self):
        """[(backbone, task, bn)] this preset fine-tunes."""
        if self.preset == "smoke":
            return [("smoke-moco-mix", task, bn) for task, bn, *_ in DETECTION_TABLES.values()]
        return list(dict.fromkeys(d for part in self.parts() for d in self.part_detections(part)))

    def missing_roots(self):
        """The data roots (`data.KEY`) this preset reads but the config leaves null: ImageNet for its
        pretraining runs (outside checkpoints need none), VOC and COCO for its detections. A null root makes
        the embedded synthetic set, which only the smoke preset may run on: a paper-scale preset on it would
        spend days of GPU time on meaningless numbers."""
        if self.preset == "smoke":
            return []
        needed = {"imagenet"} if self.pretrain_runs() else set()
        needed |= {"voc" if task.startswith("voc") else "coco" for _, task, _ in self.detections()}
        return [f"data.{key}" for key in ("imagenet", "voc", "coco")
                if key in needed and not _get(self.config, f"data.{key}")]
