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
