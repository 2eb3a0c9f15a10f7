"""The linear classification protocol: a frozen backbone in eval mode, a linear layer on its pooled
features (CMC: both halves' features concatenated), SGD with momentum 0.9 and no weight decay, a step
schedule; random-resized crop + flip for training, resize + centre crop for validation; top-1 and top-5.

Protocol defaults come from the data set (ImageNet-100: lr 10, 60 epochs, x0.1 at 30/40/50;
ImageNet-1K: lr 30, 100 epochs, x0.1 at 60/80/90; CIFAR-10 and CIFAR-100, by their manifest: lr 30,
100 epochs, x0.1 at 60/80, the MoCo CIFAR demo's advice with main_lincls.py's steps); every value can be
overridden. Runs as one process
or under torchrun; DIR/last.pth (every epoch) makes a restarted command continue exactly. Every image
is seen each epoch (the last batch may be partial, as main_lincls.py's drop_last=False), and the probe is
validated after every epoch, as main_lincls.py does: DIR/metrics.json keeps each epoch's mean training
loss and top-1 ("history"), and flags a probe whose loss diverged (DIVERGENCE_FACTOR).
"""

import json
import math
from pathlib import Path
import time

import torch
from torch import nn
from torch.utils.data import DataLoader, DistributedSampler, Subset

from flatmix import atomic, provenance
from flatmix.checkpoint_io import load_own_state
from flatmix.convert import arch_name, extract_all
from flatmix.data.augment import AugmentedImages
from flatmix.data.eval_transforms import train_transform, val_transform
from flatmix.data.loading import image_folder
from flatmix.distributed import Distributed
from flatmix.errors import FlatmixError
from flatmix.metrics_log import MetricsLog
from flatmix.models.resnet import frozen_backbone, pooled_features
from flatmix.pretrain import step_lr
from flatmix.progress import Progress

PROTOCOLS = {
    "imagenet100": {"lr": 10.0, "epochs": 60, "milestones": [30, 40, 50]},
    "imagenet1k": {"lr": 30.0, "epochs": 100, "milestones": [60, 80, 90]},
    "cifar10": {"lr": 30.0, "epochs": 100, "milestones": [60, 80]},
}
PROTOCOLS["cifar100"] = PROTOCOLS["cifar10"]
# A probe diverged when an epoch's mean loss is not finite (None), or its last epoch's is above this many times its
# first's: a converging probe's loss falls, and a mere plateau stays well under 2x; its top-1 is then noise.
DIVERGENCE_FACTOR = 2.0


def protocol_of(data, classes):
    """The protocol of a prepared data set: its manifest's data set where it names one with a protocol (the
    CIFARs'), else ImageNet-1K's from 1000 classes, ImageNet-100's below."""
    try:
        dataset = json.loads((Path(data) / "manifest.json").read_text()).get("dataset")
    except (OSError, ValueError, AttributeError):
        dataset = None
    if dataset in PROTOCOLS:
        return dataset
    return "imagenet1k" if classes >= 1000 else "imagenet100"


def diverged(history):
    losses = [h["loss"] for h in history]
    return None in losses or losses[-1] > DIVERGENCE_FACTOR * losses[0]


class LinearProbe(nn.Module):
    """Frozen backbone(s) (always in eval mode) and the head trained on their pooled features: the linear
    layer, after a parameter-free BatchNorm when `feature_norm` (MAE's linear probe; off in the paper's
    protocol, on for the smoke preset, whose 2-epoch backbones give features of very different scales)."""

    def __init__(self, backbones, num_classes, feature_norm=False):
        super().__init__()
        encoders = [frozen_backbone(b.arch, b.state) for b in backbones]
        self.encoders = nn.ModuleList(encoders)
        self.feature_dim = sum(e.feature_dim for e in encoders)
        linear = nn.Linear(self.feature_dim, num_classes)
        nn.init.normal_(linear.weight, 0.0, 0.01)
        nn.init.zeros_(linear.bias)
        norm = nn.BatchNorm1d(self.feature_dim, affine=False, eps=1e-6) if feature_norm else nn.Identity()
        self.head = nn.Sequential(norm, linear)

    def train(self, mode=True):
        super().train(mode)
        self.encoders.eval()  # frozen: BN keeps its pretrained statistics
        return self

    def features(self, x):
        with torch.no_grad():
            return pooled_features(self.encoders, x)

    def forward(self, x):
        return self.head(self.features(x))


def _accuracy_counts(logits, labels):
    top5 = logits.topk(min(5, logits.shape[1]), dim=1).indices
    hits = top5 == labels[:, None]
    return torch.tensor([hits[:, 0].sum().item(), hits.any(1).sum().item(), labels.numel()], dtype=torch.float64)


def evaluate(probe, dataset, env, batch_size, workers):
    """Top-1 and top-5 (%) over the whole validation set, each process taking every world-th image."""
    probe.eval()
    shard = Subset(dataset, range(env.rank, len(dataset), env.world))
    counts = torch.zeros(3, dtype=torch.float64)
    with torch.no_grad():
        for images, labels in DataLoader(shard, batch_size=batch_size, num_workers=workers):
            counts += _accuracy_counts(probe(images.to(env.device)).float().cpu(), labels)
    counts = env.sum(counts.to(env.device)).cpu()
    return 100 * counts[0].item() / counts[2].item(), 100 * counts[1].item() / counts[2].item()


def run(backbone, data, out, epochs=None, lr=None, milestones=None, batch_size=256, weight_decay=0.0,
        image_size=224, workers=8, seed=0, feature_norm=False):
    """Train and evaluate the probe; writes DIR/metrics.json and returns it."""
    data, out = Path(data), Path(out)
    for split in ("train", "val"):
        if not (data / split).is_dir():
            raise FlatmixError(f"--data {data}: {data / split} is not a folder of class folders")
    backbones = extract_all(backbone)
    colour = backbones[0].colour
    train_set = AugmentedImages(data / "train", train_transform(image_size, colour), views=1, seed=seed)
    val_set = image_folder(data / "val", transform=val_transform(image_size, colour))
    classes = len(train_set.images.classes)
    if val_set.classes != train_set.images.classes:
        raise FlatmixError(f"--data {data}: train/ and val/ hold different classes")
    protocol_name = protocol_of(data, classes)
    protocol = PROTOCOLS[protocol_name]
    cfg = {"backbone": str(backbone), "data": str(data), "protocol": protocol_name,
           "epochs": epochs if epochs is not None else protocol["epochs"],
           "lr": lr if lr is not None else protocol["lr"],
           "milestones": milestones if milestones is not None else protocol["milestones"],
           "batch_size": batch_size, "weight_decay": weight_decay, "momentum": 0.9,
           "image_size": image_size, "seed": seed, "feature_norm": feature_norm}

    env = Distributed()
    try:
        return _train(cfg, backbones, train_set, val_set, classes, out, env, workers)
    finally:
        env.close()


def _train(cfg, backbones, train_set, val_set, classes, out, env, workers):
    start_time = time.time()
    if cfg["batch_size"] % env.world:
        raise FlatmixError(f"--batch-size {cfg['batch_size']} is not divisible by {env.world} processes")
    if cfg["feature_norm"] and math.ceil(len(train_set) / env.world) % (cfg["batch_size"] // env.world) == 1:
        raise FlatmixError(f"--batch-size {cfg['batch_size']} leaves a last batch of one image per process, which "
                           "--feature-norm cannot normalise; pick another batch size")
    torch.manual_seed(cfg["seed"])  # the same initial linear layer on every rank and every restart
    probe = LinearProbe(backbones, classes, cfg["feature_norm"]).to(env.device)
    optimizer = torch.optim.SGD(probe.head.parameters(), lr=cfg["lr"], momentum=0.9, weight_decay=cfg["weight_decay"])
    # main_lincls.py's sampling: a (seed, epoch) shuffle padded to equal shares, so every rank takes the same
    # number of steps, partial last batch included
    sampler = DistributedSampler(train_set, num_replicas=env.world, rank=env.rank, seed=cfg["seed"])
    loader = DataLoader(train_set, batch_size=cfg["batch_size"] // env.world, sampler=sampler,
                        num_workers=workers, pin_memory=env.device.type == "cuda")
    labels_of = torch.tensor(train_set.images.targets)
    last = out / "last.pth"
    epoch, history = 0, []
    if last.exists():
        state = load_own_state(last, ("epoch", "head", "optimizer", "history"), "linear-probe last.pth")
        if state["config"] != cfg:
            changed = sorted(k for k in cfg if state["config"].get(k) != cfg[k])
            raise FlatmixError(f"{last} was made with other settings ({', '.join(changed)}); delete it to start "
                               "this probe over, or use another --out")
        probe.head.load_state_dict(state["head"])
        optimizer.load_state_dict(state["optimizer"])
        epoch, history = state["epoch"], state["history"]
    head = env.wrap(probe.head)
    if env.main:
        out.mkdir(parents=True, exist_ok=True)
    steps = len(loader)
    board = MetricsLog(out, "linear", jsonl=None, resume_step=epoch if history else None) if env.main else None
    progress = Progress("linear", cfg["epochs"] * steps, done=epoch * steps, unit="img", per_step=cfg["batch_size"],
                        enabled=env.main)
    while epoch < cfg["epochs"]:
        lr = step_lr(cfg["lr"], epoch, cfg["milestones"])
        for group in optimizer.param_groups:
            group["lr"] = lr
        probe.train()
        train_set.set_epoch(epoch)
        sampler.set_epoch(epoch)
        loss_sum = torch.zeros(2, dtype=torch.float64, device=env.device)  # summed loss, images: no sync per step
        for step, (images, index) in enumerate(progress.batches(loader)):
            images, labels = images.to(env.device, non_blocking=True), labels_of[index].to(env.device)
            loss = nn.functional.cross_entropy(head(probe.features(images)), labels)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            loss_sum[0] += loss.detach() * labels.numel()
            loss_sum[1] += labels.numel()
            if progress.due() or step + 1 == steps:  # loss.item() waits for the GPU: only when shown
                progress.show(f"epoch {epoch + 1}/{cfg['epochs']} step {step + 1}/{steps} loss {loss.item():.4f} "
                              f"lr {lr:.4g}", force=True)
        loss_sum = env.sum(loss_sum).cpu()
        top1, top5 = evaluate(probe, val_set, env, cfg["batch_size"] // env.world, workers)
        epoch += 1
        mean_loss = (loss_sum[0] / loss_sum[1]).item()
        history.append({"epoch": epoch, "loss": mean_loss if math.isfinite(mean_loss) else None,  # JSON has no NaN
                        "top1": top1, "top5": top5})
        if board:
            board.write(history[-1], epoch)
        if env.main:
            atomic.write_torch(last, {"config": cfg, "epoch": epoch, "head": probe.head.state_dict(),
                                      "optimizer": optimizer.state_dict(), "history": history})
        env.barrier()
    progress.close()
    if board:
        board.close()
    bad = diverged(history)
    b = backbones[0]
    metrics = {"top1": None if bad else history[-1]["top1"], "top5": None if bad else history[-1]["top5"],
               "diverged": bad, "history": history, **cfg, "classes": classes, "train_images": len(train_set),
               "val_images": len(val_set), "source_format": b.source_format, "method": b.method,
               "colour": b.colour, "arch": arch_name(b.arch), "feature_dim": probe.feature_dim,
               "processes": env.world, "device": str(env.device), "wall_time_s": round(time.time() - start_time, 1),
               "provenance": provenance.collect()}
    if env.main:
        atomic.write_json(out / "metrics.json", metrics)
        atomic.write_torch(out / "linear.pth", {"head": probe.head.state_dict(), "config": cfg})
    return metrics
