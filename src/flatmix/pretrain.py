"""One pretraining run (MoCo or CMC, with or without the paper's mixtures), as one CPU process or under
torchrun on any number of GPUs and nodes.

The global batch size and learning rate mean the same whatever the number of processes. DIR/last.pth
(atomic) holds everything needed to continue exactly: the model with its queue or memory bank, the
optimizer, the epoch and step, and every process's random states (torch, CUDA, numpy, python, the
Mixer); data order and augmentations are functions of (seed, epoch, index). A restarted
command resumes from it by itself. SIGTERM or SIGUSR1 (SLURM pre-emption; flatmix.preemption), to this
process, its loader workers or torchrun, saves it after the current step and exits with status 143, so
that a requeued job continues. DIR/checkpoint.pth is written once, at the end.
"""

import hashlib
import json
import math
from pathlib import Path
import random
import sys
import time

import jsonschema
import numpy as np
import torch
import yaml

from flatmix import atomic, paths, provenance
from flatmix.checkpoint_io import load_own_state
from flatmix.data.augment import cmc_transform, moco_transform
from flatmix.data.batches import LOADERS, PretrainBatches
from flatmix.distributed import Distributed
from flatmix.errors import FlatmixError
from flatmix.knn import KnnMonitor
from flatmix.metrics_log import TENSORBOARD, MetricsLog
from flatmix.mixture import Mixer
from flatmix.models.cmc import CMC, cmc_loss
from flatmix.models.moco import MoCo, info_nce
from flatmix.models.resnet import ARCHS
from flatmix.preemption import PREEMPTED_EXIT, StopFlag
from flatmix.presets import DEFAULTS, SCHEMA
from flatmix.progress import Progress, Window
from flatmix.runconfig import flatten

# all a run writes
RUN_FILES = ("config.yaml", "metrics.jsonl", TENSORBOARD, "last.pth", "checkpoint.pth", "summary.json")
CHECKPOINT_FORMAT = "flatmix-pretrain/1"
# Settings that only watch the run (the kNN monitor reads the model and leaves it and every random stream
# as they were: tests/test_knn.py): a run continues, or counts as complete, whatever they are.
WATCHING = ("train.knn_every", "train.knn_k", "train.knn_t", "train.knn_max_images", "train.knn_features")


def _validate(cfg):
    """The run spec against its schema (every key's type and range), then what depends on several keys."""
    for key, value in flatten(cfg).items():
        if isinstance(value, float) and not math.isfinite(value):
            raise FlatmixError(f"run spec: {key} must be a finite number, got {value}")
    error = jsonschema.exceptions.best_match(jsonschema.Draft202012Validator(SCHEMA).iter_errors(cfg))
    if error is not None:
        key = ".".join(map(str, error.absolute_path)) or "the run spec"
        raise FlatmixError(f"run spec: {key}: {error.message}")
    checks = [
        (bool(cfg["data"]["root"]), "data.root is not set (a prepared ImageNet-100 folder)"),
        (cfg["model"]["arch"] in ARCHS, f"model.arch must be one of {', '.join(ARCHS)}, got {cfg['model']['arch']!r}"),
        (cfg["data"]["loader"] in LOADERS, f"data.loader must be one of {', '.join(LOADERS)}, got {cfg['data']['loader']!r}"),
        (not (cfg["mixture"]["unmix"] and cfg["method"] == "cmc"), "mixture.unmix is defined for MoCo only"),
        (cfg["model"]["bn_splits"] == 1 or cfg["method"] == "moco", "model.bn_splits is defined for MoCo only"),
        (cfg["train"]["knn_features"] == "pooled" or cfg["method"] == "moco",
         "train.knn_features embedding is defined for MoCo only (CMC's two heads embed two views)"),
        (cfg["train"]["batch_size"] >= 2 or not (cfg["mixture"]["global"]["mixes"] or cfg["mixture"]["region"]["mixes"]),
         "the mixtures need train.batch_size of at least 2 (a partner is another image of the global batch)"),
    ]
    for ok, message in checks:
        if not ok:
            raise FlatmixError(message)


def step_lr(base, epoch, milestones):
    """The step schedule of MoCo, CMC and the linear probe: x0.1 at each milestone reached."""
    return base * 0.1 ** sum(epoch >= m for m in milestones)


def learning_rate(cfg, epoch):
    t = cfg["train"]
    if t["schedule"] == "cosine":
        return t["lr"] * 0.5 * (1.0 + math.cos(math.pi * epoch / t["epochs"]))
    return step_lr(t["lr"], epoch, t["milestones"])


def adjust_learning_rate(optimizer, cfg, epoch):
    """As main_moco.py's: the epoch's learning rate on every parameter group."""
    for group in optimizer.param_groups:
        group["lr"] = learning_rate(cfg, epoch)


def build_model(cfg, n_data):
    if cfg["method"] == "moco":
        m = cfg["moco"]
        return MoCo(cfg["model"]["arch"], dim=cfg["model"]["dim"], K=m["K"], m=m["m"], T=m["T"], mlp=m["mlp"],
                    symmetric=m["symmetric"], bn_splits=cfg["model"]["bn_splits"])
    c = cfg["cmc"]
    return CMC(n_data, arch=cfg["model"]["arch"], dim=cfg["model"]["dim"], K=c["K"], T=c["T"],
               momentum=c["momentum"])


def build_training(cfg, env, n_data):
    """The model on its device (in its memory format, its encoders compiled if asked), its SGD optimizer
    (fused on a GPU) and this rank's Mixer."""
    t = cfg["train"]
    model = build_model(cfg, n_data).to(env.device)
    if t["channels_last"]:
        model = model.to(memory_format=torch.channels_last)
    if t["compile"]:
        for encoder in model.encoders():
            encoder.compile(dynamic=False)  # in place: the state dict keeps its keys
    optimizer = torch.optim.SGD([p for p in model.parameters() if p.requires_grad], lr=t["lr"],
                                momentum=t["momentum"], weight_decay=t["weight_decay"],
                                fused=env.device.type == "cuda")
    mixer = Mixer(cfg["mixture"], cfg["seed"], env.rank)
    return model, optimizer, mixer


def pretrain_views(cfg):
    """The method's augmentation and its number of views (MoCo 2, CMC 1), built here from the run spec as
    main_moco.py builds its TwoCropsTransform, so that the loaders take a transform and know no config."""
    size = cfg["data"]["image_size"]
    if cfg["method"] == "moco":
        return moco_transform(size, cfg["moco"]["aug"]), 2
    return cmc_transform(size, cfg["cmc"]["colour"]), 1


def pretrain_batches(cfg, env, root):
    """This rank's training batches of the images in `root` as the run spec says (`bench` times the same);
    refused where the images make no batch (an epoch of none would loop for ever)."""
    d, batch_size = cfg["data"], cfg["train"]["batch_size"]
    batches = PretrainBatches(root, *pretrain_views(cfg), env, loader=d["loader"], workers=d["workers"],
                              seed=cfg["seed"], batch_size=batch_size)
    if batches.steps_per_epoch() == 0:
        raise FlatmixError(f"{len(batches)} training images make no batch of train.batch_size {batch_size}")
    return batches


def contrastive_loss(method, net, mixer, views, index):
    """The method's loss on a batch of (mixed) views: MoCo's InfoNCE (each direction's, with `symmetric`
    both; with Un-Mix each direction's two extra terms) or CMC's two-way loss against the memory bank; and
    the logits of its main terms (CMC: both directions'), for `contrastive_top1`."""
    if method == "cmc":
        scores = net(views[0], index)
        return cmc_loss(*scores), scores
    if not mixer.unmix:
        main, _ = net(*views)
        return sum(map(info_nce, main)), main
    im_mix, lam = mixer.unmix_queries(views[0])
    main, mixed = net(*views, im_mix)
    return sum(map(info_nce, main)) + sum(lam * info_nce(own) + (1 - lam) * info_nce(reversed_)
                                          for own, reversed_ in mixed), main


def contrastive_top1(*logits):
    """The % of rows whose positive (index 0) has the largest logit, as MoCo's Acc@1: the chance level is
    100 / (1 + K), so a run stuck there shows."""
    return torch.cat([scores.argmax(1) == 0 for scores in logits]).float().mean() * 100


def training_step(cfg, net, optimizer, mixer, views, index):
    """One step on a batch of normalised views: the mixtures, forward and loss, update; returns the loss
    and the contrastive top-1 (%), as tensors: reading them waits for the GPU, so only log steps do.

    `net` is the model itself, or the model wrapped in DistributedDataParallel.
    """
    t = cfg["train"]
    views = mixer(views)
    if t["channels_last"]:
        views = [v.contiguous(memory_format=torch.channels_last) for v in views]
    with torch.autocast(views[0].device.type, dtype=torch.bfloat16, enabled=t["precision"] == "bf16"):
        loss, logits = contrastive_loss(cfg["method"], net, mixer, views, index)
    optimizer.zero_grad(set_to_none=True)
    loss.backward()
    optimizer.step()
    return loss.detach(), contrastive_top1(*logits)


def _rng_state(mixer):
    np_state = np.random.get_state()
    return {"torch": torch.get_rng_state(),
            "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else [],
            "numpy": [np_state[0], torch.from_numpy(np_state[1].astype(np.int64)), *np_state[2:]],
            "python": random.getstate(),
            "mixture": mixer.state_dict()}


def _set_rng_state(state, mixer):
    torch.set_rng_state(state["torch"])
    if state["cuda"] and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])
    name, key, *rest = state["numpy"]
    np.random.set_state((name, key.numpy().astype(np.uint32), *rest))
    random.setstate(state["python"])
    mixer.load_state_dict(state["mixture"])


def _config_difference(saved, cfg):
    """The keys whose values differ, a key added to DEFAULTS since `saved` was written counting as its
    default (so that an upgraded flatmix continues an earlier run)."""
    a, b = {**flatten(DEFAULTS), **flatten(saved)}, flatten(cfg)
    return sorted(k for k in set(a) | set(b) if a.get(k) != b.get(k) and k not in WATCHING)


def _load_last(path, cfg, force):
    state = load_own_state(path, ("epoch", "step", "model", "optimizer", "rng"), "pretraining last.pth")
    changed = _config_difference(state["config"], cfg)
    if changed and not force:
        raise FlatmixError(f"{path} was made with a different config ({', '.join(changed)} differ); "
                           "use the same config, delete it to start the run over, another --out, or --force to "
                           "continue anyway")
    return state


def _finished(out, state, epochs):
    """The summary of a run that is already complete (its last.pth at the final epoch, its checkpoint and
    summary written), so that a rerun leaves it untouched; None otherwise."""
    summary = out / "summary.json"
    if state is None or state["epoch"] < epochs or not (out / "checkpoint.pth").is_file() or not summary.is_file():
        return None
    try:
        return json.loads(summary.read_text())
    except (ValueError, UnicodeDecodeError):
        return None


def _trim_metrics(path, epoch, step):
    """Keep the metrics lines up to the resume point (epoch, step done), so that each step appears once;
    lines after it (logged before a kill, then trained again) and a torn last line are dropped."""
    if not path.is_file():
        return
    kept = []
    for line in path.read_text(errors="replace").splitlines():
        try:
            entry = json.loads(line)
            done = (entry["epoch"], entry["step"]) <= (epoch, step)
        except (ValueError, KeyError, TypeError):
            continue
        if done:
            kept.append(line + "\n")
    atomic.write_text(path, "".join(kept))


class _LastCheckpoint:
    """DIR/last.pth, which a restarted command continues from: written after an epoch, and where a signal
    (SIGTERM, SIGUSR1) stops the loop, before exiting with PREEMPTED_EXIT so that a requeued job continues.
    Every rank saves together: each gives its random states (env.gather), and all wait for the write
    (env.barrier)."""

    def __init__(self, path, cfg, model, optimizer, mixer, env, loss, earlier_s, signalled):
        self.path, self.cfg, self.model, self.optimizer, self.mixer, self.env = path, cfg, model, optimizer, mixer, env
        self.loss = loss  # the last logged loss, which last.pth and the result report
        self.knn = []  # the kNN monitor's results so far, [{"epoch", "top1", ...}]
        self.earlier_s, self.started = earlier_s, time.time()
        self.signalled = signalled

    def stop_requested(self):
        """Whether any rank got a stop signal (a collective call: every rank asks at the same point)."""
        return self.env.any(self.signalled.raised)

    def wall_time_s(self):
        """Seconds of training, those of the runs this one continues included."""
        return self.earlier_s + time.time() - self.started

    def save(self, epoch, step):
        rng = self.env.gather(_rng_state(self.mixer))
        if self.env.main:
            atomic.write_torch(self.path, {"config": self.cfg, "epoch": epoch, "step": step,
                                           "model": self.model.state_dict(), "optimizer": self.optimizer.state_dict(),
                                           "rng": rng, "loss": self.loss, "knn": self.knn,
                                           "wall_time_s": self.wall_time_s()})
        self.env.barrier()

    def stop(self, epoch, step, progress):
        """Save at (epoch, step), step 0 being the start of `epoch`, say where, and exit for the requeue."""
        self.save(epoch, step)
        progress.close()
        if self.env.main:
            where = f"epoch {epoch + 1} step {step}" if step else f"epoch {epoch} done"
            print(f"pretrain: stopped by a signal; {self.path} holds {where}", file=sys.stderr)
        raise SystemExit(PREEMPTED_EXIT)


def run(cfg, out, force=False):
    """Train according to the resolved config `cfg`, writing into `out`; returns the final metrics."""
    signalled = StopFlag()  # first: a signal during the start-up is answered after the first step
    _validate(cfg)
    out = Path(out)
    env = Distributed()
    try:
        return _train(cfg, out, env, force, signalled)
    finally:
        env.close()


def _train(cfg, out, env, force, signalled):
    t = cfg["train"]
    if t["batch_size"] % env.world:
        raise FlatmixError(f"train.batch_size {t['batch_size']} is not divisible by {env.world} processes")
    if (t["batch_size"] // env.world) % cfg["model"]["bn_splits"]:
        raise FlatmixError(f"model.bn_splits {cfg['model']['bn_splits']} does not divide the "
                           f"{t['batch_size'] // env.world} images of each process's batch")
    root = Path(cfg["data"]["root"]) / "train"
    if not root.is_dir():
        raise FlatmixError(f"data.root: {root} is not a folder of class folders")
    batches = pretrain_batches(cfg, env, root)
    monitor = KnnMonitor(cfg, env)
    if env.main:
        paths.claim_folder(out, "pretrain", RUN_FILES)
    last = out / "last.pth"
    state = _load_last(last, cfg, force) if last.exists() else None
    finished = _finished(out, state, t["epochs"])
    if finished is not None:
        if env.main:
            print(f"pretrain: {out} is already complete; nothing to do", flush=True)
        return {k: v for k, v in finished.items() if k != "provenance"}
    if env.main:
        atomic.write_text(out / "config.yaml", yaml.safe_dump(cfg, sort_keys=False))
        _trim_metrics(out / "metrics.jsonl", *((state["epoch"], state["step"]) if state else (0, 0)))

    torch.manual_seed(cfg["seed"])  # the same initial model, queue and memory bank on every rank
    model, optimizer, mixer = build_training(cfg, env, len(batches))
    torch.manual_seed(cfg["seed"] + env.rank)  # then each rank its own stream (shuffles, negatives)
    np.random.seed(cfg["seed"] + env.rank)
    random.seed(cfg["seed"] + env.rank)
    epoch, start_step, loss, earlier_s = _resume(state, last, model, optimizer, mixer, env)
    checkpoint = _LastCheckpoint(last, cfg, model, optimizer, mixer, env, loss, earlier_s, signalled)
    checkpoint.knn = state.get("knn", []) if state else []
    net = env.wrap(model)
    steps = batches.steps_per_epoch()
    progress = Progress("pretrain", t["epochs"] * steps, done=epoch * steps + start_step, unit="pairs",
                        per_step=t["batch_size"], enabled=env.main)
    resumed = epoch * steps + start_step if state else None
    metrics = MetricsLog(out, "pretrain", resume_step=resumed) if env.main else None

    def end_epoch(epoch):
        """After `epoch` epochs: the kNN monitor when due, then last.pth. A stop signal exits here (before
        the kNN, or cutting it short; the continued run does it first), unless all is done."""
        stopping = checkpoint.stop_requested()
        if monitor.due(epoch, checkpoint.knn) and not stopping:
            _knn(monitor, model, epoch, steps, progress, metrics, checkpoint)
            stopping = checkpoint.stop_requested()
        if stopping and (epoch < t["epochs"] or monitor.due(epoch, checkpoint.knn)):
            checkpoint.stop(epoch, 0, progress)
        if stopping or epoch % t["checkpoint_every"] == 0 or epoch == t["epochs"]:
            checkpoint.save(epoch, 0)

    if start_step == 0 and monitor.due(epoch, checkpoint.knn) and epoch > 0:  # a stop came before its kNN
        end_epoch(epoch)
    while epoch < t["epochs"]:
        adjust_learning_rate(optimizer, cfg, epoch)
        _train_epoch(cfg, net, optimizer, mixer, batches, epoch, start_step, progress, metrics, checkpoint)
        epoch, start_step = epoch + 1, 0
        end_epoch(epoch)
    progress.close()
    weights = env.gather(_parameters_sha256(model))
    if len(set(weights)) > 1:
        raise FlatmixError(f"the {env.world} processes ended with different weights (sha256 {', '.join(weights)}); "
                           "checkpoint.pth is not written")
    final_knn = next((h["top1"] for h in checkpoint.knn if h["epoch"] == t["epochs"]), None)
    result = {"epochs": t["epochs"], "final_loss": checkpoint.loss, "knn": checkpoint.knn, "knn_top1": final_knn,
              "knn_features": t["knn_features"], "processes": env.world,
              "parameters_sha256_by_rank": weights,
              "device": str(env.device), "wall_time_s": round(checkpoint.wall_time_s(), 1)}
    if env.main:
        metrics.close()
        _write_result(cfg, out, model, result)
    return result


def _parameters_sha256(model):
    """sha256 of the model's parameters, in order: the same on every rank when DDP kept them in step (the
    BN statistics are per rank, as in MoCo's shuffle BN, and are not hashed)."""
    digest = hashlib.sha256()
    for p in model.parameters():
        digest.update(p.detach().cpu().contiguous().numpy().tobytes())
    return digest.hexdigest()


def _train_epoch(cfg, net, optimizer, mixer, batches, epoch, start_step, progress, metrics, checkpoint):
    """The steps of `epoch` from `start_step` on, with a progress and metrics line every train.log_every
    steps and at the last; a signal stops it (checkpoint.stop) after a step, unless the epoch is done."""
    t, lr = cfg["train"], optimizer.param_groups[0]["lr"]  # as adjust_learning_rate set it
    steps = batches.steps_per_epoch()
    net.train()
    logged = Window()  # the steps since the last metrics line
    epoch_batches = progress.batches(logged.batches(batches.epoch(epoch, start_step)))
    for step, (*views, index) in enumerate(epoch_batches, start=start_step):
        loss, acc1 = training_step(cfg, net, optimizer, mixer, views, index)
        if (step + 1) % t["log_every"] == 0 or step + 1 == steps:
            loss_value, acc1_value = loss.item(), acc1.item()
            checkpoint.loss = loss_value
            steps_per_s, data_wait = logged.read()
            pairs = steps_per_s * t["batch_size"]
            progress.show(f"epoch {epoch + 1}/{t['epochs']} step {step + 1}/{steps} loss {loss_value:.4f} "
                          f"acc1 {acc1_value:.1f}% lr {lr:.4g}", force=step + 1 == steps)
            if metrics:
                metrics.write({"epoch": epoch, "step": step + 1, "loss": loss_value, "acc1": acc1_value, "lr": lr,
                               "pairs_per_s": pairs, "data_wait": data_wait, "skipped_images": batches.skipped_images(),
                               "time": time.time()}, epoch * steps + step + 1)
        if checkpoint.stop_requested() and step + 1 < steps:
            checkpoint.stop(epoch, step + 1, progress)


def _knn(monitor, model, epoch, steps, progress, metrics, checkpoint):
    """The kNN monitor after `epoch` epochs: into last.pth's history, metrics.jsonl (a line at the epoch's
    last step) and the progress log; nothing when a stop signal cut it short."""
    result = monitor.evaluate(model, lambda: checkpoint.signalled.raised)
    if result is None:
        return
    checkpoint.knn = [*checkpoint.knn, {"epoch": epoch, **result}]
    if progress.enabled:  # a line of its own: the progress lines' rate is the training's
        print(f"pretrain epoch {epoch}/{monitor.epochs} knn top1 {result['top1']:.2f}% top5 {result['top5']:.2f}% "
              f"({result['queries']} queries, bank {result['bank']}, {result['seconds']:.0f} s)", file=sys.stderr,
              flush=True)
    if metrics:
        metrics.write({"epoch": epoch - 1, "step": steps, "knn_top1": result["top1"], "knn_top5": result["top5"],
                       "time": time.time()}, epoch * steps)


def _resume(state, last, model, optimizer, mixer, env):
    """Put last.pth's `state` (None: a fresh run) into the model, optimizer and random streams; returns
    (epoch, step, loss, seconds trained before) to continue from."""
    if state is None:
        return 0, 0, None, 0.0
    model.load_state_dict(state["model"])
    optimizer.load_state_dict(state["optimizer"])
    if env.main:
        print(f"pretrain: continuing from {last} at epoch {state['epoch'] + 1} step {state['step']}", file=sys.stderr)
    if len(state["rng"]) == env.world:
        _set_rng_state(state["rng"][env.rank], mixer)
    elif env.main:
        print(f"pretrain: {last} was written by {len(state['rng'])} processes, now {env.world}: "
              "continuing with fresh random states", flush=True)
    return state["epoch"], state["step"], state.get("loss"), state.get("wall_time_s", 0.0)


def _write_result(cfg, out, model, result):
    """The finished run: summary.json with its provenance, and checkpoint.pth, the file every consumer reads."""
    atomic.write_json(out / "summary.json", {**result, "provenance": provenance.collect()})
    atomic.write_torch(out / "checkpoint.pth", {"format": CHECKPOINT_FORMAT, "method": cfg["method"],
                                                "arch": cfg["model"]["arch"], "config": cfg,
                                                "state_dict": model.state_dict()})
