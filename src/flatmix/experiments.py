"""What the paper's experiments train, for one workflow config: the pretraining runs each table and figure
needs, the detections the transfer tables fine-tune, and what the chosen preset makes of them. The DAG
(workflow/rules/common.smk) and `flatmix plan` read it; flatmix.tables lays the same runs out as the
paper's tables for the report, so the three agree on every run name. A run that two tables need has one
name and is trained once. The smoke preset trains four tiny runs, which stand in for the paper's runs
they imitate (Table 5's 800-epoch baselines and full methods, Tables 7-8's "ours").

Where the paper is silent (see docs/pages/differences.md):
- MoCo's mixtures fire with p = 0.5 (the paper: "0.5 or higher values can perform better" for MoCo),
  CMC's with p = 0.1 (Table 4's best and its fixed region p).
- Counts are mixing steps (`mixes`, the authors' num_mix), Tables 1-2's "numbers of mixtures".
- Table 2 varies the region count without decay, Table 3 the decay at Table 2's best count (5 mixes: its
  decay-1.0 cell, 76.5, is not Table 2's 2 mixes, 76.02); Table 4's "G+R" adds a 2-mix region mixture
  without decay (the authors' code defaults).
- Table 5's "+Global" is Table 1's best (4 mixes) and "+Region" Tables 2-3's best (5 mixes, decay 0.2) for
  both methods (Table 4's caption: CMC's best uses global mixtures of 4).
- The transfer backbones (Tables 7-8) are ImageNet-1K ResNet-50 runs of 200 epochs.

The CIFAR presets are no part of the paper: one GPU's check against published kNN numbers (the MoCo CIFAR
demo's, Un-Mix's), a row per `cifar.runs` entry (flatmix.presets.cifar_run).
"""

from dataclasses import dataclass, replace
import re

from flatmix.detect import TASKS
from flatmix.errors import FlatmixError
from flatmix.layout import Detection
from flatmix.layout import ROOT_OF
from flatmix.presets import PRESETS as SMOKE_RUNS, cifar_run, in100_run, in1k_run, mixture, seed_replica
from flatmix.workflow_config import check_renamed, get, merge

PRESET_PARTS = {
    "smoke": (),
    "in100-ablation": ("table1", "table2", "table3", "table4", "figure4"),
    "in100-main": ("table5", "figure5-in100"),
    "in1k": ("table6", "figure5"),
    "transfer": ("table7a", "table7b", "table8a", "table8b"),
}
PRESET_PARTS["paper"] = tuple(part for parts in PRESET_PARTS.values() for part in parts)
# the transfer tables for the outside checkpoints alone: no pretraining, so no ImageNet
PRESET_PARTS["benchmark"] = PRESET_PARTS["transfer"]
CIFAR_PARTS = ("cifar10", "cifar100")  # each a preset of its own, its part and its data set
PRESET_PARTS |= {part: (part,) for part in CIFAR_PARTS}
PRESETS = tuple(PRESET_PARTS)
# What each preset makes, for `flatmix plan --help` (docs/pages/paper.md's preset table says it at length).
PRESET_DESCRIPTIONS = {
    "smoke": "four tiny runs (smoke-moco, smoke-moco-mix, smoke-cmc, smoke-cmc-mix) through every stage on the "
             "embedded data, on a CPU",
    "in100-ablation": "Tables 1-4 and Figure 4: the ImageNet-100 ablations of mixture count, decay, probability "
                      "and epochs",
    "in100-main": "Table 5 (ImageNet-100 MoCo and CMC, 800 epochs) and Figure 5 on ImageNet-100",
    "in1k": "Table 6 (ImageNet-1K, R50 and R50 w2x, 200 epochs) and Figure 5 on ImageNet-1K",
    "transfer": "Tables 7-8: VOC Faster R-CNN, COCO RetinaNet and Mask R-CNN from ImageNet-1K R50 backbones",
    "paper": "all of the above",
    "benchmark": "Tables 7-8 for your own checkpoints alone (transfer.checkpoints), beside the paper's rows: no "
                 "pretraining, VOC and/or COCO only",
    "cifar10": "one GPU: MoCo (the MoCo CIFAR demo's recipe), the paper's mixtures and Un-Mix on CIFAR-10, kNN "
               "beside the demo's and Un-Mix's published numbers",
    "cifar100": "the same on CIFAR-100, beside Un-Mix's published numbers",
}
# The parts that make a Figure 5, and the key of each in Experiments.flatness (RESULTS/PRESET/flatness/KEY/): the
# paper's (ImageNet-1K) first, then the ImageNet-100 one that the smoke and in100-main presets make.
FIGURE5_PARTS = {"figure5": "in1k", "figure5-in100": "in100"}
# The transfer tables' fine-tuning: (task, bn) of each
DETECTION_PARTS = {"table7a": ("voc-faster-rcnn", "train"), "table7b": ("voc-faster-rcnn", "frozen"),
                   "table8a": ("coco-retinanet", "frozen"), "table8b": ("coco-mask-rcnn", "frozen")}
SMOKE_STANDINS = {  # the smoke runs, and which paper run (by its role) each imitates
    "smoke-moco": "moco-800", "smoke-moco-mix": "moco-ours-800", "smoke-cmc": "cmc-800",
    "smoke-cmc-mix": "cmc-ours-800",
}
SEEDED_PARTS = (*PRESET_PARTS["paper"], "smoke", *CIFAR_PARTS)  # the keys of a per-part `experiments.seeds` map
MAX_SEEDS = 100  # as the workflow's schema
DATA_NAMES = {"imagenet": "ImageNet", "voc": "VOC", "coco": "COCO", "cifar10": "CIFAR-10",
              "cifar100": "CIFAR-100"}  # by data root key
SMOKE_TRANSFER = "smoke-moco-mix"  # the smoke run fine-tuned in the transfer tables' first "ours" row
_SAFE_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._+-]*$")


@dataclass(frozen=True)
class Figure5:
    """One Figure 5: its title, the prepared data set whose whole val/ it is measured on, and the run
    behind each curve ({label: run})."""
    title: str
    dataset: str  # "imagenet100" | "imagenet1k"
    runs: dict


@dataclass(frozen=True)
class Backbone:
    """A row of the transfer tables: `random`, a pretraining run or an outside checkpoint's name."""
    name: str
    kind: str          # random | moco | ours | outside
    K: int | None = None


class Experiments:
    """The runs and detections of every table and figure of the paper for one workflow config; `preset`
    picks what to make. Each part's runs are laid out by parameter (`grids[part]`) for flatmix.tables."""

    def __init__(self, config, preset=None):
        check_renamed(config)
        self.preset = preset or get(config, "preset")
        if self.preset not in PRESET_PARTS:
            raise FlatmixError(f"unknown preset {self.preset!r}; known: {', '.join(PRESETS)}")
        self.config = config
        self.smoke = self.preset == "smoke"
        self.benchmark = self.preset == "benchmark"
        self.cifar = self.preset in CIFAR_PARTS
        self.runs = {}          # name -> spec of every pretraining run a table names
        self.datasets = {}      # name -> "imagenet100" | "imagenet1k"
        self.outside = dict(get(config, "transfer.checkpoints") or {})
        self.grids = {part: getattr(self, "_" + part.replace("-", "_"))() for part in PRESET_PARTS["paper"]
                      if part not in DETECTION_PARTS}
        self.grids |= {part: self._cifar(part) for part in CIFAR_PARTS}
        self.backbones = self._backbones()
        self.grids |= {part: self._detections(task, bn) for part, (task, bn) in DETECTION_PARTS.items()}
        table5 = {method: self.grids["table5"][method] for method in ("moco", "cmc")}
        self.roles = {**{f"{m}-800": runs["800"] for m, runs in table5.items()},  # role -> run (the stand-ins')
                      **{f"{m}-ours-800": runs["G+R"] for m, runs in table5.items()}}
        self.standins = {self.roles[role]: smoke for smoke, role in SMOKE_STANDINS.items()} if self.smoke else {}
        made = {"in100"} if self.smoke else {FIGURE5_PARTS[p] for p in self.parts() if p in FIGURE5_PARTS}
        self.flatness = {key: self._figure5_made(self.grids[part]) for part, key in FIGURE5_PARTS.items()
                         if key in made}
        self.seeds = self._seeds()
        self.base = {replica: run for run in self.seeds for replica in self.replicas(run)}  # replica -> its run
        if self.benchmark and not self.outside:
            raise FlatmixError("preset benchmark fine-tunes the checkpoints of transfer.checkpoints alone, and it is "
                               "empty: set it in a file given with --configfile, e.g. "
                               "`transfer: {checkpoints: {mine: /path/to/r50.pth}}`")

    # ---- the runs -------------------------------------------------------------------------------
    def _seeds(self):
        """{run: how many seeds it is trained with}: `experiments.seeds`, one number for every part or a
        map from part (or `smoke`) to a number, the rest 1; a run several parts share takes the most."""
        setting = get(self.config, "experiments.seeds")
        if isinstance(setting, dict):
            if unknown := sorted(map(str, set(setting) - set(SEEDED_PARTS))):
                raise FlatmixError(f"experiments.seeds: unknown part {unknown[0]!r}; known: {', '.join(SEEDED_PARTS)}")
            per_part = {part: setting.get(part, 1) for part in SEEDED_PARTS}
        else:
            per_part = dict.fromkeys(SEEDED_PARTS, setting)
        for part, n in per_part.items():  # `flatmix plan` reads the config without the workflow's schema
            if isinstance(n, bool) or not isinstance(n, int) or not 1 <= n <= MAX_SEEDS:
                key = f"experiments.seeds.{part}" if isinstance(setting, dict) else "experiments.seeds"
                raise FlatmixError(f"{key}: {n!r} is not a number of seeds from 1 to {MAX_SEEDS}")
        seeds = dict.fromkeys(SMOKE_RUNS, per_part["smoke"])
        for part in (*PRESET_PARTS["paper"], *CIFAR_PARTS):
            for run in self._named_runs(part):
                seeds[run] = max(seeds.get(run, 1), per_part[part])
        return seeds

    def replicas(self, run):
        """The names of a run's seeds, seed 0 first (its own name); a backbone that is not a pretraining
        run here (random init., an outside checkpoint) has one."""
        return [seed_replica(run, s) for s in range(self.seeds.get(run, 1))]

    def _spec(self, replica):
        """The spec of one seed of a run: the run's, with that seed."""
        run = self.base[replica]
        spec = SMOKE_RUNS[run] if run in SMOKE_RUNS else self.runs[run]
        seed = self.replicas(run).index(replica)
        return merge(spec, {"seed": seed}) if seed else spec

    def _in100(self, method, epochs, mix=None, K=None):
        c = get(self.config, "experiments.imagenet100")
        name, spec = in100_run(method, epochs, mix or {}, K or c["K"], c["batch_size"])
        return self._add(name, spec, "imagenet100")

    def _in1k(self, arch, mix=None, K=None):
        c = get(self.config, "experiments.imagenet1k")
        name, spec = in1k_run(arch, c["epochs"], mix or {}, K or c["K"], c["batch_size"])
        return self._add(name, spec, "imagenet1k")

    def _add(self, name, spec, dataset):
        how = get(self.config, "experiments.pretrain")
        knn = get(self.config, "knn")  # the monitor votes as the final kNN does
        self.runs[name] = merge(spec, {"data": {"loader": how["loader"], "workers": how["workers"]},
                                       "train": {"compile": how["compile"], "knn_every": how["knn_every"],
                                                 "knn_max_images": how["knn_max_images"], "knn_k": knn["k"],
                                                 "knn_t": knn["t"]}})
        self.datasets[name] = dataset
        return name

    def _cifar(self, dataset):
        """{row: run} of a CIFAR preset (`cifar.runs`), one GPU each, its kNN monitor the metric."""
        c = get(self.config, "cifar")
        rows = {}
        for row in c["runs"]:
            name, spec = cifar_run(dataset, row, c["epochs"], c["batch_size"], c["bn_splits"], c["mixture_loss"],
                                   c["mixture"])
            self.runs[name] = merge(spec, {"data": {"loader": "pil", "workers": c["pretrain"]["workers"]},
                                           "train": {"knn_every": c["pretrain"]["knn_every"], "knn_k": c["knn"]["k"],
                                                     "knn_t": c["knn"]["t"], "knn_max_images": c["knn"]["max_images"]}})
            self.datasets[name] = dataset
            rows[row] = name
        return rows

    def _e(self, key):
        return get(self.config, f"experiments.{key}")

    def _p(self, method):
        return self._e(f"imagenet100.{method}_p")

    def best_mixture(self, method, which="G+R"):
        """Table 5's mixtures: '+Global', '+Region' or both, at their best settings."""
        best, p = self._e(f"best.{method}"), self._p(method)
        g = {"global_mixes": best["global_mixes"], "global_p": p} if "G" in which else {}
        r = {"region_mixes": best["region_mixes"], "region_p": p, "decay": best["decay"]} if "R" in which else {}
        return mixture(**g, **r)

    # ---- each part's runs, by the parameter its table varies --------------------------------------
    def _count_sweep(self, key, level):
        """Tables 1-2: {mixes: run}, MoCo with one level's mixture at each count."""
        t, p = self._e(key), self._p("moco")
        return {k: self._in100("moco", t["epochs"], mixture(**{f"{level}_mixes": k, f"{level}_p": p}))
                for k in t[f"{level}_mixes"]}

    def _table1(self):
        return self._count_sweep("table1", "global")

    def _table2(self):
        return self._count_sweep("table2", "region")

    def _table3(self):
        """{decay: run} at Table 2's best count."""
        t, p = self._e("table3"), self._p("moco")
        return {d: self._in100("moco", t["epochs"], mixture(region_mixes=t["region_mixes"], region_p=p, decay=d))
                for d in t["decay"]}

    def _table4(self):
        """{"baseline": run, "G": {p: run}, "G+R": {p: run}}: CMC at each global probability."""
        t = self._e("table4")
        region = {"region_mixes": t["region_mixes"], "region_p": t["region_p"]}
        return {"baseline": self._in100("cmc", t["epochs"]),
                **{level: {p: self._in100("cmc", t["epochs"], mixture(global_mixes=t["global_mixes"], global_p=p,
                                                                      **(region if level == "G+R" else {})))
                           for p in t["global_p"]}
                   for level in ("G", "G+R")}}

    def _table5(self):
        """{method: {"240", "800", "G", "R", "G+R": run}}: the short baseline, then each mixture."""
        t = self._e("table5")
        return {method: {"240": self._in100(method, t["baseline_epochs"],
                                            K=t["cmc_baseline_K"] if method == "cmc" else None),
                         "800": self._in100(method, t["epochs"]),
                         **{key: self._in100(method, t["epochs"], self.best_mixture(method, key))
                            for key in ("G", "R", "G+R")}}
                for method in ("moco", "cmc")}

    def _figure4(self):
        """{method: {"baseline" | "ours": {epochs: run}}}."""
        return {method: {series: {ep: self._in100(method, ep, self.best_mixture(method) if series == "ours" else None)
                                  for ep in self._e("figure4.epochs")}
                         for series in ("baseline", "ours")}
                for method in ("moco", "cmc")}

    def _table6(self):
        """{arch: {"baseline" | "ours": run}} on ImageNet-1K."""
        return {arch: {"baseline": self._in1k(arch), "ours": self._in1k(arch, self.best_mixture("moco"))}
                for arch in self._e("imagenet1k.archs")}

    def _figure5(self):
        """The paper's: Table 6's ResNet-50 runs (the same names: trained once), ImageNet-1K val."""
        return Figure5(f"Figure 5: ResNet-50 on ImageNet-1K val (Table 6's {self._e('imagenet1k.epochs')}-epoch MoCo "
                       "and ours)", "imagenet1k",
                       {"MoCo": self._in1k("resnet50"),
                        "MoCo + mixtures": self._in1k("resnet50", self.best_mixture("moco"))})

    def _figure5_in100(self):
        runs = self._table5()["moco"]
        return Figure5(f"Figure 5 on ImageNet-100 (not the paper's setting: Table 5's {self._e('table5.epochs')}-epoch "
                       "ResNet-50 runs, ImageNet-100 val)", "imagenet100",
                       {"MoCo": runs["800"], "MoCo + mixtures": runs["G+R"]})

    def _figure5_made(self, figure):
        """A Figure 5 as this preset makes it: the smoke runs stand in for the ImageNet-100 one's."""
        if not self.smoke:
            return figure
        return replace(figure, title=f"{figure.title}, smoke runs standing in",
                       runs={"MoCo": "smoke-moco", "MoCo + mixtures": "smoke-moco-mix"})

    # ---- the transfer tables ----------------------------------------------------------------------
    def _backbones(self):
        """The transfer tables' rows: random init., MoCo at baseline_K, ours at each of ours_K, then the
        outside checkpoints."""
        tr = get(self.config, "transfer")
        rows = [Backbone("random", "random"),
                Backbone(self._in1k("resnet50", K=tr["baseline_K"]), "moco", tr["baseline_K"])]
        rows += [Backbone(self._in1k("resnet50", self.best_mixture("moco"), K=K), "ours", K) for K in tr["ours_K"]]
        for name in self.outside:
            if not _SAFE_NAME.match(str(name)) or name in self.runs or name == "random":
                raise FlatmixError(f"transfer.checkpoints: {name!r} must be a new name of letters, digits, . _ + -")
            rows.append(Backbone(name, "outside"))
        return rows

    def _detections(self, task, bn):
        """{backbone name: Detection, or None where the paper has no such run (random init. with frozen BN)}
        of one transfer table; random init. only on VOC."""
        return {b.name: None if (b.kind, bn) == ("random", "frozen") else Detection(b.name, task, bn)
                for b in self.backbones if b.kind != "random" or TASKS[task] == "voc"}

    def stand_in(self, run):
        """(the run whose result fills a cell of `run`, whether it is a smoke stand-in)."""
        return (self.standins[run], True) if run in self.standins else (run, False)

    def stand_in_detection(self, detection):
        """The smoke preset fine-tunes its mixed run in place of the first "ours" backbone."""
        ours = next((b.name for b in self.backbones if b.kind == "ours"), None)
        if self.smoke and detection.backbone == ours:
            return detection._replace(backbone=SMOKE_TRANSFER), True
        return detection, False

    # ---- what the preset makes --------------------------------------------------------------------
    def parts(self):
        return PRESET_PARTS[self.preset]

    def settings(self, section):
        """A stage's settings for this preset: config `smoke.SECTION` for the smoke preset, `cifar.SECTION`
        for the CIFAR presets (linear, knn: they make no Figure 5), else `SECTION` (linear, knn, flatness)."""
        if self.smoke:
            return self.config["smoke"][section]
        return self.config["cifar"][section] if self.cifar and section != "flatness" else self.config[section]

    def shape_setting(self, run):
        """(config key, {gpus, nodes}) of a pretraining run's shape: `smoke.pretrain`, `cifar.pretrain` or
        `experiments.DATASET`."""
        if self.smoke or self.cifar:
            key = "smoke.pretrain" if self.smoke else "cifar.pretrain"
            return key, get(self.config, key)
        dataset = self.dataset_of(run)
        return f"experiments.{dataset}", get(self.config, f"experiments.{dataset}")

    @property
    def scale(self):
        """smoke | paper: the sizes the stages run at (detection's --scale, slurm.resources' key)."""
        return "smoke" if self.smoke else "paper"

    def _named_runs(self, part):
        """The pretraining runs one table or figure names (one name each, not its seeds)."""
        if part in DETECTION_PARTS:
            return {d.backbone for d in self.grids[part].values() if d and d.backbone in self.runs}
        return set(_runs(self.grids[part]))

    def part_runs(self, part):
        """The pretraining runs one table or figure needs, every seed of each (in the smoke preset: the
        stand-ins in place of the runs they stand in for)."""
        if part in DETECTION_PARTS:
            return {d.backbone for d in self.part_detections(part) if d.backbone in self.base}
        return {replica for run in _runs(self.grids[part]) for replica in self.replicas(self.stand_in(run)[0])}

    def part_detections(self, part):
        """[Detection] one table fine-tunes, from every seed of each backbone (in the smoke preset: the
        stand-in's in place of "ours")."""
        if part not in DETECTION_PARTS:
            return []
        made = [d._replace(backbone=replica) for d in (self.stand_in_detection(d)[0] for d in self.grids[part].values()
                                                       if d)
                for replica in self.replicas(d.backbone)]
        if self.benchmark:  # the outside checkpoints, on the data sets whose roots are set
            return [d for d in made if d.backbone in self.outside and get(self.config, f"data.{TASKS[d.task]}")]
        return made

    def pretrain_runs(self):
        """{name: spec} of the runs this preset trains, every seed of each, seed 0 first (for smoke: the four
        smoke runs, with `smoke.pretrain.workers` and the votes of `smoke.knn`)."""
        if self.smoke:
            knn = get(self.config, "smoke.knn")
            settings = {"data": {"workers": get(self.config, "smoke.pretrain.workers")},
                        "train": {"knn_k": knn["k"], "knn_t": knn["t"]}}
            return {r: merge(self._spec(r), settings) for run in SMOKE_RUNS for r in self.replicas(run)}
        names = set().union(*(self.part_runs(p) for p in self.parts()))
        return {r: self._spec(r) for run in self.runs for r in self.replicas(run) if r in names}

    def dataset_of(self, run):
        base = self.base.get(run, run)
        return "imagenet100" if base in SMOKE_RUNS else self.datasets[base]

    def seed_of(self, run):
        """The seed a run (one of a run's replicas) trains with."""
        return self.replicas(self.base[run]).index(run)

    def detections(self):
        """[Detection] this preset fine-tunes (smoke: its mixed run's and the outside checkpoints', at smoke
        scale)."""
        if self.smoke:
            return [Detection(r, task, bn) for r in [*self.replicas(SMOKE_TRANSFER), *self.outside]
                    for task, bn in DETECTION_PARTS.values()]
        return list(dict.fromkeys(d for part in self.parts() for d in self.part_detections(part)))

    def ignored(self):
        """[(key, why)] of the values set in the config that this preset never reads, so that a setting
        that would silently do nothing is said: outside checkpoints where nothing is fine-tuned, data roots
        nothing reads."""
        notes = []
        if self.outside and not self.detections():
            notes.append(("transfer.checkpoints", f"ignored by preset {self.preset}, which fine-tunes no detector "
                                                  "(the smoke, transfer, benchmark and paper presets do)"))
        if self.smoke:
            return notes
        read = self._roots_read()
        notes += [(f"data.{key}", f"ignored by preset {self.preset}, which reads no {DATA_NAMES[key]} data")
                  for key in DATA_NAMES if get(self.config, f"data.{key}") and key not in read]
        return notes

    def _roots_read(self):
        """The data roots (keys of `data`) this preset's runs and detections read."""
        return {ROOT_OF[self.dataset_of(run)] for run in self.pretrain_runs()} | \
            {TASKS[d.task] for d in self.detections()}

    def missing_roots(self):
        """The data roots (`data.KEY`) this preset reads but the config leaves null: ImageNet for its
        pretraining runs (outside checkpoints need none), VOC and COCO for its detections. A null root makes
        the embedded synthetic set, which only the smoke preset may run on: a paper-scale preset on it would
        spend days of GPU time on meaningless numbers."""
        if self.smoke:
            return []
        if self.benchmark:  # VOC, COCO or both: the tables of whichever is set
            return [] if get(self.config, "data.voc") or get(self.config, "data.coco") else ["data.voc", "data.coco"]
        needed = self._roots_read()
        return [f"data.{key}" for key in DATA_NAMES if key in needed and not get(self.config, f"data.{key}")]


def _runs(grid):
    """The run names a part's grid holds."""
    if isinstance(grid, dict):
        for value in grid.values():
            yield from _runs(value)
    elif isinstance(grid, Figure5):
        yield from grid.runs.values()
    else:
        yield grid
