# Shared helpers: where outputs go, which data roots the rules read (real or synthetic), and which runs,
# probes and detections the chosen preset makes (flatmix.experiments, shared with `flatmix plan` and
# `flatmix report`).
#
# Layout: each preset's outputs under RESULTS/PRESET/ (so presets never overwrite each other), and the data
# every preset shares under RESULTS/data/: the synthetic set, and each data set prepared from its real root
# (prepared/) or from the synthetic one (synth-prepared/: never mistaken for the real one).
import json
from pathlib import Path
import re
import shlex
import sys

from snakemake.logging import logger
from snakemake_interface_executor_plugins.settings import DeploymentMethod

from flatmix.errors import FlatmixError
from flatmix import atomic, launch, layout
from flatmix.experiments import Experiments
from flatmix.launch import launcher
from flatmix.layout import Detection, Flatness, Knn, Pretraining, Probe
from flatmix.presets import CIFAR_ARCH

RESULTS = layout.preset_folder(config)
DATA = layout.data_folder(config)
SYNTH = f"{DATA}/synth"
# A root's usual folder name, for the error that asks for it.
ROOT_EXAMPLES = {"imagenet": "ILSVRC", "voc": "VOCdevkit", "coco": "coco", "cifar10": "cifar-10-batches-bin",
                 "cifar100": "cifar-100-binary"}

try:
    EXPERIMENTS = Experiments(config)
except FlatmixError as e:
    sys.exit(f"flatmix: error: {e}")
for key, why in EXPERIMENTS.ignored():
    logger.warning(f"flatmix: warning: {key}: {why}")
if missing := EXPERIMENTS.missing_roots():
    example = ", ".join(f"{key[5:]}: /path/to/{ROOT_EXAMPLES[key[5:]]}" for key in missing)
    sys.exit(f"flatmix: error: preset {config['preset']} runs on real data only, but {', '.join(missing)} "
             f"{'is' if len(missing) == 1 else 'are'} null (null makes the synthetic set, for the smoke preset); "
             f"set {'it' if len(missing) == 1 else 'them'} in a file given with --configfile, e.g. "
             f"`data: {{{example}}}`")
PRETRAIN_RUNS = EXPERIMENTS.pretrain_runs()
OUTSIDE = EXPERIMENTS.outside


def container_binds():
    """The folders every rule's container needs beside the working directory: the data roots and the
    outside checkpoints' folders. Apptainer splits a --bind at ',' and ':' (src:dst:options) and no
    quoting escapes them, so such a path is refused here rather than bound wrongly."""
    roots = {f"data.{k}": config["data"][k] for k in ("imagenet", "voc", "coco", "cifar10", "cifar100")
             if config["data"][k]}
    roots |= {f"transfer.checkpoints.{name}": str(Path(path).resolve().parent)
              for name, path in (config["transfer"]["checkpoints"] or {}).items()}
    for key, root in roots.items():
        if "," in root or ":" in root:
            sys.exit(f"flatmix: error: {key}: {root!r} holds ',' or ':', which Apptainer cannot bind")
    return roots.values()


# The rules call `flatmix`: outside a container, the one installed beside this snakemake (even when .venv
# is not activated); inside the image (--sdm apptainer), the image's own.
if DeploymentMethod.APPTAINER in workflow.deployment_settings.deployment_method:
    shell.prefix("set -euo pipefail; ")
    # Snakemake splices apptainer_args unquoted into the `apptainer exec` line that its shell runs (and
    # hands them base64-encoded to each job's snakemake), so each root is shell-quoted here. Idempotent,
    # as each job's own snakemake reads this file again.
    for root in container_binds():
        bind = f"--bind {shlex.quote(root)}"
        if bind not in workflow.deployment_settings.apptainer_args:
            workflow.deployment_settings.apptainer_args += f" {bind}"
else:
    VENV_BIN = str(Path(sys.executable).parent)
    shell.prefix('set -euo pipefail; export PATH={VENV_BIN:q}:"$PATH"; ')  # formatted by Snakemake


container: config["container"]["image"]


def one_of(names):
    """A wildcard constraint matching exactly these names."""
    return "|".join(re.escape(n) for n in names) or "(?!)"


def results(path):
    return f"{RESULTS}/{path}"


def prepared_name(dataset):
    """A data set's folder under DATA (flatmix.layout), shared by the presets."""
    return layout.prepared_name(config, dataset)


def prepared(dataset):
    """The manifest that marks a data set as checked and ready."""
    return f"{layout.prepared_folder(config, dataset)}/manifest.json"


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
    return results(Pretraining(run).path)


# (GPUs per node, nodes) of each pretraining run (flatmix.launch, shared with `flatmix plan --commands`, as
# are `launcher` and the settings), checked against each run's batch before any job starts
try:
    RUN_SHAPES = {run: launch.run_shape(EXPERIMENTS, run, spec) for run, spec in PRETRAIN_RUNS.items()}
except FlatmixError as e:
    sys.exit(f"flatmix: error: {e}")


def run_shape(run):
    return RUN_SHAPES[run]


# A run on several nodes starts its torchruns with srun from the rule's shell, which under --sdm apptainer
# runs inside the image: the image has no SLURM client, so such a run is refused before any job starts.
if DeploymentMethod.APPTAINER in workflow.deployment_settings.deployment_method:
    if several := sorted(run for run, (_, nodes) in RUN_SHAPES.items() if nodes > 1):
        sys.exit(f"flatmix: error: {several[0]} runs on {RUN_SHAPES[several[0]][1]} nodes, which starts srun inside "
                 "the image, and the image has no SLURM client: run multi-node pretraining with the slurm profile "
                 "(docs/pages/cluster.md)")


# SLURM requests of this preset's scale (config `slurm.resources`: smoke, or paper for every other preset)
SLURM_REQUESTS = config["slurm"]["resources"][EXPERIMENTS.scale]


def _slurm_common():
    extra = {}
    if config["slurm"]["partition"]:
        extra["slurm_partition"] = config["slurm"]["partition"]
    if config["slurm"]["account"]:
        extra["slurm_account"] = config["slurm"]["account"]
    return extra


def job_resources(rule):
    """A rule's SLURM request from config (`slurm.resources`, smoke or paper), as Snakemake resources."""
    return {**SLURM_REQUESTS["default"], **SLURM_REQUESTS.get(rule, {}), **_slurm_common()}


def rule_gpus(rule):
    """GPUs of a (non-pretraining) rule's job: its torchrun processes."""
    return job_resources(rule).get("gpu", 0)


def pretrain_resources():
    """A pretraining job asks for its run's GPUs on each of its nodes. A run on several nodes starts its own
    srun (flatmix.launch): it is the SLURM executor's `mpi` kind of job, one task per node, whose shell the
    executor runs in the job itself rather than in a one-node step of it (where srun would see one node).
    `tasks_per_gpu: 0` keeps the executor from turning `tasks` into --ntasks-per-gpu."""
    r = SLURM_REQUESTS["pretrain"]
    return {
        "gres": lambda wildcards: f"gpu:{run_shape(wildcards.run)[0]}",
        "nodes": lambda wildcards: run_shape(wildcards.run)[1],
        "mpi": lambda wildcards: "srun" if run_shape(wildcards.run)[1] > 1 else "",
        "tasks": lambda wildcards: run_shape(wildcards.run)[1],
        "tasks_per_gpu": 0,
        "cpus_per_gpu": r["cpus_per_gpu"],
        "mem_mb": lambda wildcards: r["mem_mb_per_gpu"] * run_shape(wildcards.run)[0],
        "runtime": r["runtime"],
        **_slurm_common(),
    }


def backbone_checkpoint(name):
    """A pretraining run's checkpoint, or the file of an outside checkpoint (transfer.checkpoints)."""
    return OUTSIDE[name] if name in OUTSIDE else pretrained(name)


def converted(run):
    """The conversions a run gets: MoCo's backbone for each target, CMC's two halves for torchvision
    (mmdetection and detectron2 take RGB input), the CIFAR ResNet-18 for torchvision (the detectors'
    ResNets are Bottleneck ResNet-50s and deeper)."""
    if PRETRAIN_RUNS[run]["method"] == "cmc":
        return [results(f"convert/{run}/{part}-torchvision.pth") for part in ("l", "ab")]
    if PRETRAIN_RUNS[run]["model"]["arch"] == CIFAR_ARCH:
        return [results(f"convert/{run}/backbone-torchvision.pth")]
    return [results(f"convert/{run}/backbone-{t}") for t in ("torchvision.pth", "mmdet.pth", "detectron2.pkl")]


def linear_options(run):
    """`flatmix linear` arguments from config (null: the protocol's value; the smoke preset has its own),
    and the seed of the run's replica (seed 0, the default, unsaid: a probe made before seeds stays made)."""
    c = EXPERIMENTS.settings("linear")
    args = ["--batch-size", c["batch_size"], "--image-size", c["image_size"], "--workers", c["workers"]]
    if seed := EXPERIMENTS.seed_of(run):
        args += ["--seed", seed]
    if c["epochs"] is not None:
        args += ["--epochs", c["epochs"]]
    if c["lr"] is not None:
        args += ["--lr", c["lr"]]
    if c["milestones"] is not None:
        args += ["--milestones", ",".join(str(m) for m in c["milestones"])]
    if c["feature_norm"]:
        args += ["--feature-norm"]
    return args


def knn_options():
    """`flatmix knn` arguments from config `knn` (the smoke preset: `smoke.knn`)."""
    c = EXPERIMENTS.settings("knn")
    args = ["--k", c["k"], "--t", c["t"], "--batch-size", c["batch_size"], "--image-size", c["image_size"],
            "--workers", c["workers"]]
    return args + (["--max-images", c["max_images"]] if c["max_images"] is not None else [])


def pretrain_settings(run, data):
    """A run's spec and its data root as `--set key=value` arguments, in a list for the rule to quote one
    by one."""
    return launch.pretrain_settings(PRETRAIN_RUNS[run], data)


def flatness_backbones(figure):
    """`flatmix flatness`'s `--backbone NAME=CHECKPOINT` arguments, one per curve of a Figure 5 ("in1k",
    "in100": EXPERIMENTS.flatness)."""
    return [arg for name, run in EXPERIMENTS.flatness[figure].runs.items()
            for arg in ("--backbone", f"{name}={pretrained(run)}")]


def detection_backbone(backbone):
    """The checkpoint a detector's backbone is read from (flatmix detect converts it in memory, as the
    probe and Figure 5 do); nothing for random initialisation."""
    return [] if backbone == "random" else backbone_checkpoint(backbone)


def detections():
    return [results(d.path) for d in EXPERIMENTS.detections()]


def linear_results():
    return [results(Probe(run).path) for run in PRETRAIN_RUNS]


def knn_results():
    return [results(Knn(run).path) for run in PRETRAIN_RUNS]


def flatness_outputs():
    """The Figure 5s this preset makes, one folder each."""
    return [results(Flatness(figure).png) for figure in EXPERIMENTS.flatness]
