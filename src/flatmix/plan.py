"""The cost of a preset before running it: per table, the pretraining runs, the images they process and
the GPU-hours of pretraining, linear probes and detection fine-tuning, and the total with every shared
run counted once; or each pretraining run's command, as the workflow runs it (flatmix.launch).

GPU-hours follow from per-GPU rates, each measured where RATES says (bf16 + channels_last, mixtures on,
data already on the GPU: the loader must keep up, see `flatmix bench pretrain`) and, for detection,
mmdetection's model-zoo times on V100s; the CIFAR presets' from the MoCo CIFAR demo's V100 log (fp32:
bf16 on a newer GPU is faster, so these hours are an upper bound there). All are hours on one GPU.
Every rate is a flag; the data set sizes are the real ones (flatmix.paper, flatmix.data.cifar), or the
embedded set's for the smoke preset.
"""

from flatmix import paper
from flatmix.data import cifar
from flatmix.detect import TASKS
from flatmix.experiments import PRESET_PARTS, Experiments
from flatmix.launch import pretrain_command, run_shape
from flatmix.linear import PROTOCOLS
from flatmix.presets import CIFAR_ARCH
from flatmix.workflow_config import get

# (per-GPU rate, where it was measured). The H200's: `tools/gpu-check`, 2026-12-04, torch 2.11, bench-synthetic
# (eager, as the workflow trains); the H100's: the design notes' anchors, not yet measured on the H200.
RATES = {
    "moco_pairs_per_s": (2793.0, "H200: MoCo v1 R50, batch 256, K 65536, global + region mixtures"),
    "cmc_pairs_per_s": (2096.0, "H100: CMC, two R50-half, K 16384, batch 128"),
    "probe_images_per_s": (12720.0, "H100: frozen R50 forward + linear layer"),
    "faster_rcnn_s_per_iter": (0.216, "V100, mmdetection's model zoo: R50-FPN, 2 images (also RetinaNet's)"),
    "mask_rcnn_s_per_iter": (0.265, "V100, mmdetection's model zoo: R50-FPN, 2 images"),
    "cifar_pairs_per_s": (2480.0, "V100, the MoCo CIFAR demo's log: ResNet-18 CIFAR, batch 512, asymmetric, fp32, "
                                  "97 steps in about 20 s"),
    "cifar_images_per_s": (14000.0, "V100, the MoCo CIFAR demo's log: its 50,000-image kNN bank in about 3.5 s"),
}
# Compute of an encoder relative to ResNet-50 (FLOPs): R50 w2x has every stage twice as wide. The CIFAR
# ResNet-18 has rates of its own (cifar_*).
ARCH_COST = {"resnet50": 1.0, "resnet50w2": 3.9, "resnet50half": 1.0, "resnet18cifar": 1.0}


def loss_passes(spec):
    """A MoCo step's encoder work relative to the asymmetric loss's (one query forward and backward, about
    3 forwards' worth, and one key forward): the symmetric loss does it twice, Un-Mix adds one mixed
    query (+0.75)."""
    moco, mixture = spec.get("moco", {}), spec.get("mixture", {})
    return (2 if moco.get("symmetric") else 1) + (0.75 if mixture.get("unmix") else 0)
DETECTION_EPOCHS = 12


def _sizes(experiments):
    """Training images per data set: the real ones, or the embedded set's for the smoke preset."""
    if experiments.smoke:
        s = experiments.config["synth"]
        return {"imagenet100": (100 * s["train_per_class"], 100 * s["val_per_class"]),
                "voc": 2 * s["voc_images"], "coco": s["coco_images"]}
    return {"imagenet100": (paper.IMAGENET100_TRAIN, paper.IMAGENET100_VAL),
            "imagenet1k": (paper.IMAGENET1K_TRAIN, paper.IMAGENET1K_VAL),
            "cifar10": (cifar.TRAIN_IMAGES, cifar.TEST_IMAGES), "cifar100": (cifar.TRAIN_IMAGES, cifar.TEST_IMAGES),
            "voc": paper.VOC0712_TRAINVAL, "coco": paper.COCO_TRAIN2017}


def _arch(spec):
    return spec.get("model", {}).get("arch", "resnet50")


class Plan:
    def __init__(self, config, preset=None, rates=None):
        self.experiments = Experiments(config, preset)
        self.rates = {**{name: rate for name, (rate, _) in RATES.items()}, **(rates or {})}
        self.sources = {name: "given" if name in (rates or {}) else source for name, (_, source) in RATES.items()}
        self.sizes = _sizes(self.experiments)

    def pretrain_cost(self, run, spec):
        """(images processed, GPU-hours) of one pretraining run."""
        dataset = self.experiments.dataset_of(run)
        images = spec["train"]["epochs"] * self.sizes[dataset][0]
        arch = _arch(spec)
        rate = self.rates["cifar_pairs_per_s" if arch == CIFAR_ARCH else
                          "cmc_pairs_per_s" if spec["method"] == "cmc" else "moco_pairs_per_s"]
        return images, images * ARCH_COST[arch] * loss_passes(spec) / rate / 3600

    def probe_cost(self, run, spec):
        """GPU-hours of one run's linear probe, at the epochs the workflow gives it (config `linear`, or
        `smoke.linear` for the smoke preset; null: the protocol's). The probe validates after every epoch
        (flatmix.linear), so each epoch reads the training and the validation images."""
        dataset = self.experiments.dataset_of(run)
        linear = self.experiments.settings("linear")
        epochs = PROTOCOLS[dataset]["epochs"] if linear["epochs"] is None else linear["epochs"]
        train, val = self.sizes[dataset]
        return self._frozen_forward_gpu_h(epochs * (train + val), spec)

    def _frozen_forward_gpu_h(self, images, spec):
        """GPU-hours of `images` through a run's frozen encoder, at the probe's rate."""
        arch = _arch(spec)
        rate = self.rates["cifar_images_per_s" if arch == CIFAR_ARCH else "probe_images_per_s"]
        return images * ARCH_COST[arch] / rate / 3600

    def knn_cost(self, run, spec):
        """GPU-hours of one run's kNN: the monitor's checks during pretraining (every train.knn_every epochs
        and after the last, each encoding at most train.knn_max_images of train and of val) and the final
        `flatmix knn` (config `knn`), at the probe's rate (the same frozen forward, nothing to train)."""
        train, val = self.sizes[self.experiments.dataset_of(run)]
        t = spec["train"]
        every, cap = t.get("knn_every", 0), t.get("knn_max_images")
        checks = len({*range(every, t["epochs"] + 1, every), t["epochs"]}) if every else 0
        final_cap = self.experiments.settings("knn")["max_images"]
        images = checks * sum(min(n, cap or n) for n in (train, val)) + sum(min(n, final_cap or n)
                                                                            for n in (train, val))
        return self._frozen_forward_gpu_h(images, spec)

    def detection_gpu_h(self, task):
        images = DETECTION_EPOCHS * self.sizes[TASKS[task]]
        s_per_iter = self.rates["mask_rcnn_s_per_iter" if task == "coco-mask-rcnn" else "faster_rcnn_s_per_iter"]
        return images / 2 * s_per_iter / 3600

    def rows(self):
        """One row per part of the preset, each costing only the runs and detections no earlier part
        counted, and the total."""
        e = self.experiments
        runs = e.pretrain_runs()
        # the smoke preset makes no part of the paper: one row of all it makes
        parts = [("smoke", list(runs), e.detections())] if e.smoke else \
            [(part, [r for r in runs if r in e.part_runs(part)], e.part_detections(part)) for part in e.parts()]
        counted_runs, counted_detections, rows = set(), set(), []
        for part, part_runs, detections in parts:
            new_runs = [r for r in part_runs if r not in counted_runs]
            new_detections = [d for d in detections if d not in counted_detections]
            counted_runs.update(new_runs)
            counted_detections.update(new_detections)
            costs = [self.pretrain_cost(r, runs[r]) for r in new_runs]
            rows.append({"part": part, "runs": len(part_runs), "new_runs": len(new_runs),
                         "pretrain_images": sum(images for images, _ in costs),
                         "pretrain_gpu_h": sum(hours for _, hours in costs),
                         "probe_gpu_h": sum(self.probe_cost(r, runs[r]) for r in new_runs),
                         "knn_gpu_h": sum(self.knn_cost(r, runs[r]) for r in new_runs),
                         "detections": len(detections),
                         "detect_gpu_h": sum(self.detection_gpu_h(task) for _, task, _ in new_detections)})
        total = {key: sum(row[key] for row in rows) for key in rows[0] if key != "part"}
        total.update(part="total", runs=total["new_runs"], detections=len(counted_detections))
        for row in rows + [total]:
            row["gpu_h"] = row["pretrain_gpu_h"] + row["probe_gpu_h"] + row["knn_gpu_h"] + row["detect_gpu_h"]
        return rows + [total]

    def text(self):
        lines = [f"preset {self.experiments.preset}: GPU-hours per GPU at these rates (bf16; each a flag):"]
        lines += [f"  --{name.replace('_', '-')} {rate:g}  ({self.sources[name]})" for name, rate in self.rates.items()]
        seeds = get(self.experiments.config, "experiments.seeds")
        seeds = (", ".join(f"{part} {n}" for part, n in seeds.items()) + ", the rest 1") if isinstance(seeds, dict) \
            else str(seeds)
        lines += [f"seeds per run (experiments.seeds): {seeds}; each seed is a run of its own, counted below"]
        lines += [f"{'part':<16}{'runs':>6}{'new':>6}{'pretrain images':>18}{'pretrain GPU-h':>16}"
                  f"{'probe GPU-h':>13}{'kNN GPU-h':>11}{'detections':>12}{'detect GPU-h':>14}{'GPU-h':>12}"]
        for row in self.rows():
            lines.append(f"{row['part']:<16}{row['runs']:>6}{row['new_runs']:>6}{row['pretrain_images']:>18,}"
                         f"{row['pretrain_gpu_h']:>16,.1f}{row['probe_gpu_h']:>13,.1f}{row['knn_gpu_h']:>11,.1f}"
                         f"{row['detections']:>12}"
                         f"{row['detect_gpu_h']:>14,.1f}{row['gpu_h']:>12,.1f}")
        e = self.experiments
        if e.cifar and all(run_shape(e, run, spec) == (1, 1) for run, spec in e.pretrain_runs().items()):
            # every run on one GPU: the total is the wall time on one
            lines.append(f"on one GPU: about {self.rows()[-1]['gpu_h']:,.1f} hours, the runs one after another, at the "
                         "rates above (the cifar_* ones a V100's in fp32: less on a newer GPU in bf16)")
        return "\n".join(lines)

    def note(self):
        """The values the preset ignores and the data roots the workflow will ask for first, one line each,
        or None. A cost is worth knowing before the data is in place, so the plan notes them rather than
        refusing."""
        lines = [f"flatmix: warning: {key}: {why}" for key, why in self.experiments.ignored()]
        if missing := self.experiments.missing_roots():
            lines.append(f"flatmix: note: {', '.join(missing)} null: the workflow refuses preset "
                         f"{self.experiments.preset} until set (only the smoke preset runs on the synthetic set)")
        return "\n".join(lines) or None

    def commands(self):
        """One line per run for running it outside Snakemake: exactly the command the workflow's pretrain
        rule runs (flatmix.launch; less its log redirect), then a bash comment naming the parts of the paper
        that need it (for the smoke preset: the parts of the runs it stands in for)."""
        e = self.experiments
        needs = {part: e.part_runs(part) for part in e.parts() or PRESET_PARTS["paper"]}
        lines = []
        for run, spec in e.pretrain_runs().items():
            parts = ", ".join(part for part, runs in needs.items() if run in runs)
            nodes = run_shape(e, run, spec)[1]
            lines.append(f"{pretrain_command(e, run, spec)}  # {'stands in for ' if e.smoke else ''}"
                         f"{parts}{f' (srun: inside a SLURM job of {nodes} nodes)' if nodes > 1 else ''}")
        return lines
