"""Weighted k-nearest-neighbour classification on frozen features (InstDisc, Wu et al. 2018, as the MoCo
CIFAR demo runs it): each validation image votes for the classes of its k most similar training images,
each vote weighted exp(cosine / T); k 200 and T 0.1 by default. A cheap second opinion beside the linear
probe: nothing is trained, so it can watch a run while it trains.

The features are those the linear probe reads (flatmix.models.resnet.pooled_features: the pooled backbone
features, CMC's two halves side by side), L2-normalised, of the resize + centre-crop view. The same code
serves the monitor that pretraining runs every `train.knn_every` epochs on its live query encoder
(KnnMonitor) and `flatmix knn` on any checkpoint `flatmix convert` reads (run).

Under DDP each process encodes every world-th image; the bank (the training images' features) is gathered
to every process, which classifies its own share of the queries, and the hits are summed. ImageNet-1K's
bank, 1.28 M x 2048 in fp16 on a GPU, takes 5.2 GB on each.
"""

import math
from pathlib import Path
import time

import numpy as np
import torch
import torch.nn.functional as F
from torch.utils.data import DataLoader, Dataset, Subset

from flatmix import atomic, preemption, provenance
from flatmix.convert import arch_name, extract_all
from flatmix.data.eval_transforms import val_transform
from flatmix.data.loading import SkipUnreadable, image_folder, open_rgb
from flatmix.distributed import Distributed, concat_all_gather
from flatmix.errors import FlatmixError
from flatmix.metrics_log import MetricsLog
from flatmix.models.resnet import frozen_backbone, pooled_features
from flatmix.presets import DEFAULTS
from flatmix.progress import Progress

K, T = DEFAULTS["train"]["knn_k"], DEFAULTS["train"]["knn_t"]
QUERY_CHUNK = 256  # queries scored against the whole bank at once


class ReadableImages(Dataset):
    """An image folder whose files that fail to decode are passed over for the next readable one, with
    that one's label (flatmix.data.loading.SkipUnreadable, warned about once, as kNN's): the monitor must not fail
    a run that training carries over a bad image."""

    def __init__(self, images):
        self.images, self.classes = images, images.classes
        self.labels = dict(images.samples)
        self.files = SkipUnreadable([path for path, _ in images.samples], reader="skipped by kNN")

    def __len__(self):
        return len(self.images)

    def __getitem__(self, index):
        return self.files.load(index, lambda path: (self.images.transform(open_rgb(path)), self.labels[path]))


def evaluation_sets(data, colour, image_size, max_images=None):
    """(bank, queries): DATA/train and DATA/val as centre crops, each at most `max_images` images spread
    evenly over its class-sorted list (so every class keeps its share); None: all."""
    data = Path(data)
    sets = []
    for split in ("train", "val"):
        if not (data / split).is_dir():
            raise FlatmixError(f"{data / split} is not a folder of class folders (kNN reads train/ and val/)")
        images = ReadableImages(image_folder(data / split, transform=val_transform(image_size, colour)))
        if max_images is not None and len(images) > max_images:
            images = Subset(images, np.linspace(0, len(images) - 1, max_images).round().astype(int).tolist())
        sets.append(images)
    classes = [s.dataset.classes if isinstance(s, Subset) else s.classes for s in sets]
    if classes[0] != classes[1]:
        raise FlatmixError(f"{data}: train/ and val/ hold different classes")
    return sets[0], sets[1], len(classes[0])


@torch.no_grad()
def encode(features, images, env, batch_size, workers, bf16=False, stop=None, progress=None):
    """(L2-normalised features, labels) of this process's share of `images` (every world-th), or None when
    `stop()` turned true on any process (asked after each batch, by every process together).

    Its loader's workers ignore the stop signals, as pretraining's do (flatmix.preemption), and its base
    seed comes from a generator of its own: a pretraining run's global random stream stays untouched."""
    shard = Subset(images, range(env.rank, len(images), env.world))
    loader = DataLoader(shard, batch_size=batch_size, num_workers=workers, generator=torch.Generator(),
                        worker_init_fn=preemption.ignore_in_worker, pin_memory=env.device.type == "cuda")
    steps = math.ceil(len(images) / env.world / batch_size)  # every process the same count of batches
    with preemption.blocked():  # the workers start, each then ignoring a stop signal
        batches = iter(loader)
    if progress is not None:
        batches = progress.batches(batches)
    parts, labels = [], []
    for _ in range(steps):
        batch = next(batches, None)
        if batch is not None:
            with torch.autocast(env.device.type, dtype=torch.bfloat16, enabled=bf16):
                parts.append(F.normalize(features(batch[0].to(env.device, non_blocking=True)).float(), dim=1))
            labels.append(batch[1].to(env.device))
            if progress is not None:
                progress.show_count("batch")
        if stop is not None and env.any(stop()):
            return None
    return torch.cat(parts), torch.cat(labels)


def _gathered(tensor, n, env):
    """Every process's share of n rows (every world-th, as `encode` takes them) on every process."""
    if not env.enabled:
        return tensor
    most = math.ceil(n / env.world)
    padded = tensor.new_zeros((most, *tensor.shape[1:]))
    padded[:len(tensor)] = tensor
    shares = concat_all_gather(padded).view(env.world, most, *tensor.shape[1:])
    return torch.cat([shares[r, :len(range(r, n, env.world))] for r in range(env.world)])


@torch.no_grad()
def hits(queries, query_labels, bank, bank_labels, classes, k=K, t=T):
    """[top-1 hits, top-5 hits, queries] of the weighted vote of each query's k nearest bank entries; tied
    classes rank by their index."""
    k = min(k, len(bank))
    counts = torch.zeros(3, dtype=torch.float64)
    for start in range(0, len(queries), QUERY_CHUNK):
        q, y = queries[start:start + QUERY_CHUNK], query_labels[start:start + QUERY_CHUNK]
        similarity, neighbours = (q.to(bank.dtype) @ bank.T).topk(k, dim=1)
        votes = torch.zeros(len(q), classes, device=q.device).scatter_add_(
            1, bank_labels[neighbours], (similarity.float() / t).exp())
        # a stable sort: tied classes (a class no neighbour voted for) rank by index, so top-5 is reproducible
        top = votes.sort(dim=1, descending=True, stable=True).indices[:, :5] == y[:, None]
        counts += torch.tensor([top[:, 0].sum().item(), top.any(1).sum().item(), len(q)], dtype=torch.float64)
    return counts


def accuracy(features, bank_set, query_set, classes, env, batch_size, workers, k=K, t=T, bf16=False, stop=None,
             progress=None):
    """(top-1 %, top-5 %) of the kNN classifier on `features`, or None when `stop` cut it short."""
    bank = encode(features, bank_set, env, batch_size, workers, bf16, stop, progress)
    queries = None if bank is None else encode(features, query_set, env, batch_size, workers, bf16, stop, progress)
    if queries is None:
        return None
    store = torch.float16 if env.device.type == "cuda" else torch.float32
    bank_features = _gathered(bank[0].to(store), len(bank_set), env)
    counts = hits(*queries, bank_features, _gathered(bank[1], len(bank_set), env), classes, k, t)
    counts = env.sum(counts.to(env.device)).cpu()
    return 100 * counts[0].item() / counts[2].item(), 100 * counts[1].item() / counts[2].item()


class KnnMonitor:
    """Pretraining's kNN monitor: every `train.knn_every` epochs and after the last, the kNN accuracy of the
    live query encoder (CMC: both encoders) with data.root's train/ as the bank and val/ as the queries (at
    most `train.knn_max_images` of each), in eval mode and without a gradient, leaving the model and every
    random stream as they were. 0: off. On the pooled backbone features, or with `train.knn_features`
    embedding on the encoder's output, its head included, as the MoCo CIFAR demo's monitor (the anchors
    of the CIFAR presets)."""

    def __init__(self, cfg, env):
        t = cfg["train"]
        self.every, self.epochs, self.env = t["knn_every"], t["epochs"], env
        self.k, self.t, self.bf16 = t["knn_k"], t["knn_t"], t["precision"] == "bf16"
        self.batch_size, self.workers = t["batch_size"] // env.world, cfg["data"]["workers"]
        self.embedding = t["knn_features"] == "embedding"
        if self.every:
            colour = "RGB" if cfg["method"] == "moco" else cfg["cmc"]["colour"]
            try:
                self.bank, self.queries, self.classes = evaluation_sets(
                    cfg["data"]["root"], colour, cfg["data"]["image_size"], t["knn_max_images"])
            except FlatmixError as e:
                raise FlatmixError(f"train.knn_every {self.every}: {e}; train.knn_every=0 trains without the "
                                   "kNN monitor") from None

    def due(self, epoch, history):
        """Whether a kNN belongs after `epoch` epochs and is not among `history` yet."""
        return bool(self.every) and (epoch % self.every == 0 or epoch == self.epochs) and \
            all(h["epoch"] != epoch for h in history)

    def evaluate(self, model, stop):
        """{"top1", "top5", "bank", "queries", "seconds"} of `model`'s backbones now, or None when a stop
        signal cut it short."""
        backbones = model.backbones()
        modes = [b.training for b in backbones]
        start = time.time()
        for b in backbones:
            b.eval()
        features = backbones[0] if self.embedding else (lambda x: pooled_features(backbones, x))
        try:
            result = accuracy(features, self.bank, self.queries, self.classes, self.env, self.batch_size,
                              self.workers, self.k, self.t, self.bf16, stop)
        finally:
            for b, mode in zip(backbones, modes, strict=False):
                b.train(mode)
        if result is None:
            return None
        return {"top1": result[0], "top5": result[1], "bank": len(self.bank), "queries": len(self.queries),
                "seconds": round(time.time() - start, 1)}


def run(backbone, data, out, k=K, t=T, batch_size=256, image_size=224, workers=8, max_images=None):
    """`flatmix knn`: the kNN accuracy of a checkpoint's backbone over all of DATA/val with all of
    DATA/train as the bank (or `max_images` of each); writes DIR/metrics.json and returns it."""
    start = time.time()
    backbones = extract_all(backbone)
    bank_set, query_set, classes = evaluation_sets(data, backbones[0].colour, image_size, max_images)
    env = Distributed()
    try:
        if batch_size % env.world:
            raise FlatmixError(f"--batch-size {batch_size} is not divisible by {env.world} processes")
        encoders = [frozen_backbone(b.arch, b.state).to(env.device).eval() for b in backbones]
        local = batch_size // env.world
        steps = sum(math.ceil(len(range(0, len(s), env.world)) / local) for s in (bank_set, query_set))
        progress = Progress("knn", steps, unit="img", per_step=batch_size, enabled=env.main)
        top1, top5 = accuracy(lambda x: pooled_features(encoders, x), bank_set, query_set, classes, env, local,
                              workers, k, t,
                              progress=progress)  # fp32, as the probe
        progress.close()
        b = backbones[0]
        metrics = {"top1": top1, "top5": top5, "k": k, "t": t, "backbone": str(backbone), "data": str(data),
                   "bank_images": len(bank_set), "val_images": len(query_set), "classes": classes,
                   "image_size": image_size, "max_images": max_images, "source_format": b.source_format,
                   "method": b.method, "colour": b.colour, "arch": arch_name(b.arch),
                   "feature_dim": sum(e.feature_dim for e in encoders),
                   "processes": env.world, "device": str(env.device), "wall_time_s": round(time.time() - start, 1),
                   "provenance": provenance.collect()}
        if env.main:
            atomic.write_json(Path(out) / "metrics.json", metrics)
            board = MetricsLog(out, "knn", jsonl=None)
            board.write({"top1": top1, "top5": top5}, 0)
            board.close()
        return metrics
    finally:
        env.close()
