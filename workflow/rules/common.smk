# Shared helpers: where outputs go, which data roots the rules read (real or synthetic), and which runs,
# probes and detections the chosen preset makes (flatmix.experiments, shared with `flatmix plan` and
# `flatmix report`).
import json
from pathlib import Path
import re
import sys

from flatmix.errors import FlatmixError
from flatmix.experiments import Experiments
from flatmix.runconfig import set_flags

RESULTS = config["results"]
SYNTH = f"{RESULTS}/data/synth"
SMOKE = config["preset"] == "smoke"

try:
    EXPERIMENTS = Experiments(config)
except FlatmixError as e:
    sys.exit(f"flatmix: error: {e}")
PRETRAIN_RUNS = EXPERIMENTS.pretrain_runs()
OUTSIDE = EXPERIMENTS.outside

# The rules call `flatmix`: take the one installed beside this snakemake, even when .venv is not
# activated (inside a container that folder does not exist and the image's own `flatmix` is found).
shell.prefix(f'set -euo pipefail; export PATH="{Path(sys.executable).parent}:$PATH"; ')


container: config["container"]["image"]


def one_of(names):
    """A wildcard constraint matching exactly these names."""
    return "|".join(re.escape(n) for n in names) or "(?!)"


def results(path):
    return f"{RESULTS}/{path}"


def prepared(dataset):
    """The manifest that marks a data set as checked and ready."""
    return results(f"data/prepared/{dataset}/manifest.json")


def synth_marker():
    return f"{SYNTH}/synth.json"


def data_root(key):
    """(root, inputs) for data set `key`: the configured real root, or the synthetic one it depends on."""
    real = config["data"][key]
    if real:
        return real, []
    sub = {"imagenet": "imagenet", "voc": "VOCdevkit", "coco": "coco"}[key]
    return f"{SYNTH}/{sub}", [synth_marker()]


def pretrained(run):
    return results(f"pretrain/{run}/checkpoint.pth")


def gpus(run):
    """GPUs (torchrun processes) per pretraining run: from config per data set; smoke runs take one."""
    if SMOKE:
        return 1
    return config["experiments"][EXPERIMENTS.dataset_of(run)]["gpus"]


def launcher(processes):
    """`flatmix`, or flatmix under torchrun with one process per GPU."""
    if processes == 1:
        return "flatmix"
    return f"torchrun --standalone --nproc_per_node={processes} -m flatmix"


def backbone_checkpoint(name):
    """A pretraining run's checkpoint, or the file of an outside checkpoint (transfer.checkpoints)."""
    return OUTSIDE[name] if name in OUTSIDE else pretrained(name)


def converted(run):
    """The conversions a run gets: MoCo's backbone for each target, CMC's two halves for torchvision
    (mmdetection and detectron2 take RGB input)."""
    if PRETRAIN_RUNS[run]["method"] == "cmc":
        return [results(f"convert/{run}/{part}-torchvision.pth") for part in ("l", "ab")]
    return [results(f"convert/{run}/backbone-{t}") for t in ("torchvision.pth", "mmdet.pth", "detectron2.pkl")]


def linear_options():
    """`flatmix linear` flags from config (null: the protocol's value); the smoke preset has its own."""
    c = config["smoke"]["linear"] if SMOKE else config["linear"]
    flags = [f"--batch-size {c['batch_size']}", f"--image-size {c['image_size']}", f"--workers {c['workers']}"]
    if c["epochs"] is not None:
        flags.append(f"--epochs {c['epochs']}")
    if c["lr"] is not None:
        flags.append(f"--lr {c['lr']}")
    if c["milestones"] is not None:
        flags.append("--milestones " + ",".join(str(m) for m in c["milestones"]))
    return " ".join(flags)


def detection_backbone(backbone):
    """The mmdetection conversion of a backbone; nothing for random initialisation."""
    return [] if backbone == "random" else results(f"convert/{backbone}/backbone-mmdet.pth")


def detections():
    return [results(f"detect/{b}/{task}-{bn}/metrics.json") for b, task, bn in EXPERIMENTS.detections()]


def linear_results():
    return [results(f"linear/{run}/metrics.json") for run in PRETRAIN_RUNS]


def flatness_outputs():
    return [results("flatness/flatness.png")] if EXPERIMENTS.makes_flatness() else []
