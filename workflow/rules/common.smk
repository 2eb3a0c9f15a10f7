# Shared helpers: where outputs go, and which data roots the rules read (real or synthetic).
from pathlib import Path
import sys

RESULTS = config["results"]
SYNTH = f"{RESULTS}/data/synth"

# The rules call `flatmix`: take the one installed beside this snakemake, even when .venv is not
# activated (inside a container that folder does not exist and the image's own `flatmix` is found).
shell.prefix(f'set -euo pipefail; export PATH="{Path(sys.executable).parent}:$PATH"; ')


container: config["container"]["image"]


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


# The pretraining runs each preset makes (preset names of `flatmix pretrain`).
PRETRAIN_RUNS = {
    "smoke": ["smoke-moco", "smoke-moco-mix", "smoke-cmc", "smoke-cmc-mix"],
}


def pretrained(run):
    return results(f"pretrain/{run}/checkpoint.pth")

# Figure 5's curves: {label: run} per preset.
FLATNESS_RUNS = {
    "smoke": {"MoCo": "smoke-moco", "MoCo + mixtures": "smoke-moco-mix"},
}


def converted(run):
    """The conversions a run gets: MoCo's backbone for each target, CMC's two halves for torchvision
    (mmdetection and detectron2 take RGB input)."""
    if "-cmc" in run:
        return [results(f"convert/{run}/{part}-torchvision.pth") for part in ("l", "ab")]
    return [results(f"convert/{run}/backbone-{t}") for t in ("torchvision.pth", "mmdet.pth", "detectron2.pkl")]


def linear_options():
    """`flatmix linear` flags from config.yaml's `linear` section (null: the protocol's value)."""
    c = config["linear"]
    flags = [f"--batch-size {c['batch_size']}", f"--image-size {c['image_size']}", f"--workers {c['workers']}"]
    if c["epochs"] is not None:
        flags.append(f"--epochs {c['epochs']}")
    if c["lr"] is not None:
        flags.append(f"--lr {c['lr']}")
    if c["milestones"] is not None:
        flags.append("--milestones " + ",".join(str(m) for m in c["milestones"]))
    return " ".join(flags)

# The paper's four detection settings (Tables 7-8): (task, bn).
DETECTION_SETTINGS = [("voc-faster-rcnn", "train"), ("voc-faster-rcnn", "frozen"),
                      ("coco-retinanet", "frozen"), ("coco-mask-rcnn", "frozen")]
# The backbones each preset benchmarks on them (pretraining runs, or "random").
DETECTION_BACKBONES = {
    "smoke": ["smoke-moco-mix"],
}


def detection_backbone(backbone):
    """The mmdetection conversion of a pretraining run; nothing for random initialisation."""
    return [] if backbone == "random" else results(f"convert/{backbone}/backbone-mmdet.pth")


def detections():
    return [results(f"detect/{b}/{task}-{bn}/metrics.json")
            for b in DETECTION_BACKBONES[config["preset"]] for task, bn in DETECTION_SETTINGS]
