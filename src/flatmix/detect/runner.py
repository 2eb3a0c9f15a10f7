"""`flatmix detect`: check the backbone, write DIR/config.py, then train and evaluate it with mmengine's
Runner (one CPU process, one GPU, or under torchrun) and write DIR/metrics.json with stable names. The
terminal shows flatmix's progress lines; mmengine's own log is DIR/work/<timestamp>/<timestamp>.log.
Once DIR/metrics.json is written the checkpoints go (unless kept): a resume point is for a run that did
not finish.

Resume: a restarted run continues from the checkpoint DIR/work/last_checkpoint names. Anyone who can
write to DIR could plant a pickle there, so that file must lie inside DIR/work and is read first
through flatmix.checkpoint_io (a refusal is one line, before any training); mmengine 0.10.7's own
torch.load calls (the resume, the Pretrained backbone) run under torch's weights_only unpickler too,
with MMENGINE_GLOBALS allowlisted: exactly the types mmengine stores in its checkpoints. The user's
backbone checkpoint is checked here (a refusal before any training) and read by the detector through
flatmix.detect.backbone, converted in memory: no copy of it is written.
"""

import os
from pathlib import Path
import pickle
import time

from mmengine.logging import HistoryBuffer
import numpy as np
import torch
import torch.distributed as dist

from flatmix import atomic, provenance
from flatmix.checkpoint_io import load_checkpoint
from flatmix.convert import extract, mmdet_backbone_cfg
from flatmix.detect import TASKS
from flatmix.detect.configs import build_config, override_text
from flatmix.distributed import launched_processes
from flatmix.errors import FlatmixError


def _history_buffer_method(cls, name):
    """What mmengine's checkpoints call builtins.getattr for, and nothing more: HistoryBuffer pickles its
    statistics methods as getattr(HistoryBuffer, "min"). The real getattr would reach any module
    (getattr(getattr, "__self__") is builtins) and HistoryBuffer.__setstate__ registers what it gets as
    methods that mmengine then calls."""
    if cls is HistoryBuffer and name in ("min", "max", "current", "mean"):
        return getattr(cls, name)
    raise pickle.UnpicklingError(f"getattr(..., {name!r}) refused: only HistoryBuffer's statistics methods")


# What mmengine 0.10.7 stores in a checkpoint besides tensors and containers, found with
# torch.serialization.get_unsafe_globals_in_checkpoint and loading smoke checkpoints of every task: the
# message hub's HistoryBuffers (numpy float64/int64 arrays, their statistics methods) and numpy scalars.
MMENGINE_GLOBALS = [HistoryBuffer, np.ndarray, np.dtype, np.dtypes.Float64DType, np.dtypes.Int64DType,
                    np._core.multiarray._reconstruct, np._core.multiarray.scalar,
                    (_history_buffer_method, "builtins.getattr")]
RANDOM_BACKBONE = {"type": "ResNet", "depth": 50, "stem_channels": 64, "base_channels": 64, "in_channels": 3,
                   "style": "pytorch"}
REQUIRED = {
    "voc": ["VOC2007/ImageSets/Main/trainval.txt", "VOC2007/ImageSets/Main/test.txt",
            "VOC2012/ImageSets/Main/trainval.txt"],
    "coco": ["annotations/instances_train2017.json", "annotations/instances_val2017.json", "train2017", "val2017"],
}


def _check_data(dataset, root):
    root = Path(root)
    if not root.is_dir():
        raise FlatmixError(f"--data {root} is not a directory")
    for rel in REQUIRED[dataset]:
        if not (root / rel).exists():
            raise FlatmixError(f"--data {root}: {root / rel} is missing")


def _stable_metrics(task, dataset, raw):
    """mmdetection's metric names (fractions) as the paper's (percentages)."""
    if dataset == "voc":
        return {"AP50": 100 * raw["pascal_voc/mAP"], "recall": 100 * raw["pascal_voc/recall"]}
    out = {}
    kinds = (("bbox", "bbox"), ("segm", "mask")) if task == "coco-mask-rcnn" else (("bbox", "bbox"),)
    for kind, prefix in kinds:
        for name, suffix in (("AP", ""), ("AP50", "_50"), ("AP75", "_75"), ("APs", "_s"), ("APm", "_m"), ("APl", "_l")):
            # mmdetection reports nothing when there is no detection at all (an AP of 0), and -1 where
            # the data has no object of that size (no AP: null)
            value = raw.get(f"coco/{kind}_mAP{suffix}", 0.0)
            out[f"{prefix}_{name}"] = 100 * value if value >= 0 else None
    return out


def write_config(task, backbone, data, bn, out, scale):
    """DIR/config.py and DIR/override.py, the backbone checked first (unless random); returns config.py's
    path."""
    if task not in TASKS:
        raise FlatmixError(f"unknown detection task {task!r}; known: {', '.join(TASKS)}")
    _check_data(TASKS[task], data)
    out = Path(out).resolve()
    out.mkdir(parents=True, exist_ok=True)
    if backbone == "random":
        mmdet_backbone, init = RANDOM_BACKBONE, None
    else:
        arch = extract(backbone).arch
        if arch["in_channels"] != 3:
            raise FlatmixError(f"{backbone}: a {arch['in_channels']}-channel encoder cannot take RGB images")
        mmdet_backbone, init = mmdet_backbone_cfg(arch), backbone
    cfg = build_config(task, data, mmdet_backbone, init, bn, scale,
                       synced_bn=launched_processes() > 1 and torch.cuda.is_available())
    path = out / "config.py"
    atomic.write_text(path, cfg.pretty_text)  # every rank writes the same text, each under its own temporary name
    atomic.write_text(out / "override.py", override_text(task, cfg))
    return path


def _resume_from(work):
    """The checkpoint WORK/last_checkpoint names (None: none to resume), refused unless it lies inside
    WORK and passes the weights_only loader with MMENGINE_GLOBALS."""
    pointer = work / "last_checkpoint"
    if not pointer.is_file():
        return None
    named = pointer.read_text(errors="replace").strip()
    path = Path(named).resolve()  # relative to the working directory, as mmengine reads it
    if not path.is_relative_to(work.resolve()):
        raise FlatmixError(f"{pointer} names {named!r}, which is not inside {work}; refusing to resume from it")
    load_checkpoint(path, MMENGINE_GLOBALS)
    return path


def train(config_path, out, desc):
    """Train and test the config with mmengine's Runner, showing progress as `desc`; returns
    mmdetection's raw test metrics."""
    from mmengine.config import Config

    from flatmix.detect.progress import ProgressHook, QuietRunner

    os.environ.pop("TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD", None)  # it would turn mmengine's loads into full unpickling

    cfg = Config.fromfile(str(config_path))
    cfg.work_dir = str(Path(out) / "work")
    if launched_processes() > 1:
        cfg.launcher = "pytorch"
        if not torch.cuda.is_available():
            # mmengine's launcher calls torch.cuda.set_device: on CPUs start gloo ourselves, and wrap
            # without device ids.
            if not dist.is_initialized():
                dist.init_process_group("gloo")
            cfg.model_wrapper_cfg = dict(type="MMDistributedDataParallel", device_ids=None, broadcast_buffers=False)
    resume_from = _resume_from(Path(cfg.work_dir))
    if resume_from is not None:
        cfg.resume, cfg.load_from = True, str(resume_from)
    runner = QuietRunner.from_cfg(cfg)
    runner.register_hook(ProgressHook(desc))
    with torch.serialization.safe_globals(MMENGINE_GLOBALS):
        runner.train()
        return runner.test()


def remove_checkpoints(work):
    """A finished run's resume point and checkpoints (mmengine's epoch_N.pth / iter_N.pth and the
    last_checkpoint naming one), and nothing else of WORK: left there, a rerun with a new backbone
    would resume the finished run and report its detector. The logs and TensorBoard events stay."""
    for path in [work / "last_checkpoint", *work.glob("epoch_*.pth"), *work.glob("iter_*.pth")]:
        path.unlink(missing_ok=True)


def run(task, backbone, data, bn, out, scale="paper", dry_run=False, keep_checkpoints=False):
    start = time.time()
    config_path = write_config(task, backbone, data, bn, out, scale)
    if dry_run:
        return {"config": str(config_path)}
    raw = train(config_path, out, f"detect {task}")
    metrics = {**_stable_metrics(task, TASKS[task], raw), "task": task, "bn": bn, "scale": scale, "backbone": str(backbone),
               "data": str(data), "config": str(config_path), "raw": {k: float(v) for k, v in raw.items()},
               "processes": launched_processes(), "device": "cuda" if torch.cuda.is_available() else "cpu",
               "wall_time_s": round(time.time() - start, 1), "provenance": provenance.collect()}
    if not dist.is_initialized() or dist.get_rank() == 0:
        atomic.write_json(Path(out) / "metrics.json", metrics)
        if not keep_checkpoints:
            remove_checkpoints(Path(out) / "work")
    return {k: v for k, v in metrics.items() if k not in ("raw", "provenance")}
