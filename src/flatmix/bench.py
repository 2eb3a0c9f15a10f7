"""Throughput benchmarks. `flatmix bench pretrain` times the real training step (pretrain.training_step)
with and without the paper's mixtures (Table 5's, as the workflow config sets them), fed by synthetic
tensors already on the device or by a real loader (pil or gpu) from JPEG files, and prints one JSON line
per configuration; with a real loader it first times the loader alone (the gpu loader also part by part:
its workers, then the decode, resize and colour ops on the device), and after the mixed step it times the
Mixer alone on the step's views (its share of the step). `flatmix bench mixer` times the Mixer alone,
against a copy of the views, in seconds on a CPU. `flatmix bench jpegs` writes ImageNet-like JPEGs to run
it on.

Each step is timed on its own, and a line reports the median step time with its spread (min, max,
interquartile range over `steps` steps), pairs/s from the median: one slow step (a compile, a loader
stall, another job on the machine) shows as spread instead of skewing a mean. It also reports the share
of the timed wall time spent waiting for the next batch (data_wait: near 1, the loader is the limit).

A real loader starts with batches made ahead (flatmix.data.batches.batches_ahead: 32 for 16 pil workers).
Timing them would time a queue draining, so its rows need a warmup of at least that many batches and
STEADY_STEPS times as many timed ones (the head start then under 5% of them); the bench refuses less.

Precision defaults to bf16 on CUDA and fp32 on a CPU (where bf16 autocast is usually slower: few CPUs
compute in bf16).

Under torchrun it runs on every process (DDP) and reports the global pairs/s.
"""

from collections import deque
from itertools import count
import json
from multiprocessing import Pool
import os
from pathlib import Path
import time

import numpy as np
from PIL import Image
import torch
from tqdm import tqdm

from flatmix.data.batches import LOADERS as DATA_LOADERS, batches_ahead
from flatmix.data.classes import IMAGENET100
from flatmix.distributed import Distributed
from flatmix.errors import FlatmixError
from flatmix.experiments import Experiments
from flatmix.mixture import Mixer
from flatmix.pretrain import build_training, pretrain_batches, training_step
from flatmix.presets import DEFAULTS, PRESETS
from flatmix.progress import Window
from flatmix.runconfig import flatten, resolve
from flatmix.workflow_config import load_config

LOADERS = ("synthetic", *DATA_LOADERS)

# ImageNet's most common image shapes (width, height). At quality 90 the files come out near 78 KB, like
# the ~75 KB JPEGs behind the loader measurements in the design notes.
JPEG_SHAPES = ((500, 375), (375, 500), (500, 333), (333, 500), (500, 500), (500, 400))
ALONE_CALLS = 20  # at most this many timed calls of a part timed alone: the Mixer, the gpu loader's device parts
STEADY_STEPS = 20  # timed batches per batch made ahead: the loader's head start is under 5% of them


def _synchronise(device):
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _forever(epoch_batches):
    """Batches of epoch after epoch: `epoch_batches(epoch)` is PretrainBatches.epoch or .worker_batches."""
    for epoch in count():
        yield from epoch_batches(epoch)


def _step_times(env, stream, steps, warmup, step=None):
    """(seconds of each of `steps` batches of `stream` after `warmup`, each passed to `step` when given;
    the share of their wall time spent waiting for the next batch).

    On a GPU a step's time is the interval between the GPU finishing it and finishing the step before
    (CUDA events, nothing synchronised inside the loop, so steps overlap as they do in training; waiting
    for data shows as a longer interval); on a CPU it is wall-clock time."""
    def take(batches):
        *views, index = next(batches)
        if step is not None:
            step(list(views), index)

    for _ in range(warmup):
        take(stream)
    _synchronise(env.device)
    env.barrier()
    window = Window()
    timed = window.batches(stream)
    marks = [_mark(env.device)]
    for _ in range(steps):
        take(timed)
        marks.append(_mark(env.device))
    _synchronise(env.device)
    env.barrier()
    data_wait = window.read()[1]
    if env.device.type == "cuda":
        return [start.elapsed_time(end) / 1000 for start, end in zip(marks, marks[1:])], data_wait
    return [end - start for start, end in zip(marks, marks[1:])], data_wait


def _mark(device):
    """Now: a recorded CUDA event on a GPU (read after synchronising), else the wall clock."""
    if device.type != "cuda":
        return time.perf_counter()
    event = torch.cuda.Event(enable_timing=True)
    event.record()
    return event


def _rates(timed, batch_size):
    """pairs/s at the median step time, the step times' median and spread in seconds, the data-wait share."""
    times, data_wait = timed
    low, q1, median, q3, high = map(float, np.percentile(times, [0, 25, 50, 75, 100]))
    return {"pairs_per_s": round(batch_size / median, 1), "step_s_median": round(median, 6),
            "step_s_min": round(low, 6), "step_s_max": round(high, 6), "step_s_iqr": round(q3 - q1, 6),
            "data_wait": round(data_wait, 3)}


def _call_times(call, steps, warmup, device):
    """Seconds of each of `steps` calls of `call` after `warmup`, the device synchronised around each."""
    for _ in range(warmup):
        call()
    times = []
    for _ in range(steps):
        _timed(times, device, call)
    return times


def _timed(times, device, call, *args):
    """call(*args), its seconds (the device synchronised around it) appended to `times`."""
    _synchronise(device)
    start = time.perf_counter()
    out = call(*args)
    _synchronise(device)
    times.append(time.perf_counter() - start)
    return out


def _median(times):
    """The median seconds to 4 significant figures (a copy can take microseconds)."""
    return float(f"{float(np.median(times)):.4g}")


def gpu_loader_parts(batches, steps, warmup, batch_size, device):
    """The gpu loader's parts, each timed alone: its workers (the wait for their next batch with nothing
    else running: the files read and the parameters drawn), then, on the device, the decode, the crops'
    resize and the colour ops of the last ALONE_CALLS of their batches. Beside the step's time they say
    what holds the loader back: the workers (CPU), or the device time its parts take from the step's."""
    stream = _forever(batches.worker_batches)
    for _ in range(warmup):
        next(stream)
    waits, held = [], deque(maxlen=ALONE_CALLS)
    for _ in range(steps):
        held.append(_timed(waits, torch.device("cpu"), next, stream))
    stream.close()  # its workers stop: nothing runs beside the device parts
    parts = {"decode": [], "resize": [], "colour": []}
    batches.recipe(batches.decoded(held[0]), held[0][2])  # once untimed: the decoder's and kernels' start-up
    for batch in held:
        params = batch[2]
        images = _timed(parts["decode"], device, batches.decoded, batch)
        x = _timed(parts["resize"], device, batches.recipe.resize, images, params)
        _timed(parts["colour"], device, batches.recipe.colour, x, params)
    device_s = _median([sum(times) for times in zip(*parts.values(), strict=True)])
    workers_s = _median(waits)
    return {"workers_s_median": workers_s, "workers_pairs_per_s": round(batch_size / workers_s, 1),
            **{f"{part}_s_median": _median(times) for part, times in parts.items()},
            "device_s_median": device_s, "device_pairs_per_s": round(batch_size / device_s, 1),
            "part_calls": len(held)}


def mixer_rates(mixer, views, steps, warmup):
    """The Mixer's median seconds on `views` (a fresh draw each call) beside a plain copy of them."""
    device = views[0].device
    mix = _median(_call_times(lambda: mixer(views), steps, warmup, device))
    copy = _median(_call_times(lambda: [v.clone() for v in views], steps, warmup, device))
    return {"mixer_s_median": mix, "copy_s_median": copy, "ratio_to_copy": round(mix / copy, 2)}


def bench_mixer(mixture, method="moco", batch_size=64, image_size=224, steps=20, warmup=3, precision="fp32",
                device=None):
    """One result dict: `mixture` (a run spec's mixture section) applied by the Mixer to random views (two
    for MoCo, one for CMC, which mixes its one image before the colour split) against copying them."""
    cfg = resolve(DEFAULTS, PRESETS, sets=[f"method={method}"]
                  + [f"mixture.{key}={value}" for key, value in flatten(mixture).items()])
    device = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
    dtype = {"fp32": torch.float32, "bf16": torch.bfloat16}[precision]
    torch.manual_seed(0)
    views = [torch.randn(batch_size, 3, image_size, image_size, device=device).to(dtype)
             for _ in range(2 if method == "moco" else 1)]
    return {"bench": "mixer", "stage": "mixer", "method": method, "device": str(device),
            "device_name": torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu",
            "threads": torch.get_num_threads(), "batch_size": batch_size, "image_size": image_size,
            "views": len(views), "precision": precision, "steps": steps, "warmup": warmup,
            "mixture_spec": cfg["mixture"], **mixer_rates(Mixer(cfg["mixture"], seed=0), views, steps, warmup)}


def _steady_state(loader, workers, steps, warmup):
    """(batches `loader` makes ahead, timed steps, warmup): None takes the least that times steady state
    (and at least 20 and 5); values that would time the made-ahead batches are refused."""
    ahead = 0 if loader == "synthetic" else batches_ahead(loader, workers)
    steps = max(20, STEADY_STEPS * ahead) if steps is None else steps
    warmup = max(5, ahead) if warmup is None else warmup
    if warmup < ahead or steps < STEADY_STEPS * ahead:
        raise FlatmixError(f"--warmup {warmup} --steps {steps} would time the {loader} loader's queue draining: its "
                           f"{workers} workers make {ahead} batches ahead, so steady state needs --warmup {ahead} "
                           f"--steps {STEADY_STEPS * ahead} or more (or fewer --workers)")
    return ahead, steps, warmup


def bench_pretrain(mixture, method="moco", arch="resnet50", batch_size=256, image_size=224, steps=None, warmup=None,
                   precision=None, channels_last=True, K=65536, device=None, loader="synthetic", data=None,
                   workers=8, compile=False):
    """Yield one result dict per configuration: the loader alone (real loaders), then the training step
    without and with the mixtures (`mixture`: a run spec's mixture section, e.g. Table 5's from the
    workflow config), then the Mixer alone on the step's views and its share of the mixed step's median.
    precision None: bf16 on CUDA, fp32 on a CPU."""
    if loader not in LOADERS:
        raise FlatmixError(f"--loader must be one of {', '.join(LOADERS)}, got {loader!r}")
    if loader != "synthetic" and not (data and (Path(data) / "train").is_dir()):
        raise FlatmixError(f"--loader {loader} needs --data DIR with DIR/train/<class>/ images, got {data!r}")
    ahead, steps, warmup = _steady_state(loader, workers, steps, warmup)
    env = Distributed(device)
    precision = precision or ("bf16" if env.device.type == "cuda" else "fp32")
    try:
        sets = [f"method={method}", f"model.arch={arch}", f"train.batch_size={batch_size}",
                f"train.precision={precision}", f"train.channels_last={channels_last}", f"train.compile={compile}",
                f"moco.K={K}", f"cmc.K={min(K, 16384)}", f"data.image_size={image_size}"]
        if loader != "synthetic":
            sets += [f"data.root={data}", f"data.loader={loader}", f"data.workers={workers}"]
        local = batch_size // env.world
        common = {"bench": "pretrain", "method": method, "arch": arch, "device": str(env.device),
                  "device_name": torch.cuda.get_device_name(env.device) if env.device.type == "cuda" else "cpu",
                  "cpus": os.cpu_count(), "processes": env.world, "batch_size": batch_size,
                  "image_size": image_size, "precision": precision, "channels_last": channels_last,
                  "compile": compile, "loader": loader, "workers": workers if loader != "synthetic" else 0,
                  "batches_ahead": ahead, "warmup": warmup, "steps": steps}
        if loader != "synthetic":
            batches = pretrain_batches(resolve(DEFAULTS, PRESETS, sets=sets), env, Path(data) / "train")
            timed = _step_times(env, _forever(batches.epoch), steps, warmup)
            if env.main:
                yield {**common, "stage": "loader", "mixture": False, **_rates(timed, batch_size)}
            if loader == "gpu":
                parts = gpu_loader_parts(batches, steps, warmup, batch_size, env.device)
                if env.main:
                    yield {**common, "stage": "loader_parts", "mixture": False, **parts}
        for mixed in (False, True):
            mix = [f"mixture.{key}={value}" for key, value in flatten(mixture).items()] if mixed else []
            cfg = resolve(DEFAULTS, PRESETS, sets=sets + mix)
            torch.manual_seed(0)
            if loader == "synthetic":
                n_data = max(K, 4 * batch_size)
                views = [torch.randn(local, 3, image_size, image_size, device=env.device)
                         for _ in range(2 if method == "moco" else 1)]
                index = torch.arange(local, device=env.device) + env.rank * local
                stream = iter(lambda: (*views, index), None)
            else:
                batches = pretrain_batches(cfg, env, Path(data) / "train")
                n_data, stream = len(batches), _forever(batches.epoch)
            model, optimizer, mixer = build_training(cfg, env, n_data=n_data)
            net = env.wrap(model)
            model.train()
            timed = _step_times(env, stream, steps, warmup,
                                lambda v, i: training_step(cfg, net, optimizer, mixer, v, i))
            rates = _rates(timed, batch_size)
            if env.main:
                yield {**common, "stage": "train", "mixture": mixed, "mixture_spec": cfg["mixture"], **rates}
            if mixed:
                *views, _ = next(stream)
                calls = min(steps, ALONE_CALLS)  # the Mixer has no queue to drain: a real loader's steps are many
                alone = mixer_rates(mixer, list(views), calls, min(warmup, ALONE_CALLS))
                if env.main:
                    yield {**common, "stage": "mixer", "mixture": True, "mixture_spec": cfg["mixture"], **alone,
                           "mixer_calls": calls,
                           "step_share": round(alone["mixer_s_median"] / rates["step_s_median"], 4)}
            del model, net, optimizer, stream
    finally:
        env.close()


def _write_jpeg(job):
    """One ImageNet-like photo stand-in: a smooth colour field, texture and sensor noise, which JPEG
    compresses about as much as a photograph (so decoding costs what it costs on ImageNet)."""
    path, seed = job
    rng = np.random.default_rng(seed)
    width, height = JPEG_SHAPES[rng.integers(len(JPEG_SHAPES))]
    low = Image.fromarray(rng.integers(0, 256, (4, 5, 3), dtype=np.uint8)).resize((width, height), Image.BICUBIC)
    mid = Image.fromarray(rng.integers(0, 256, (height // 3, width // 3, 3), dtype=np.uint8)).resize(
        (width, height), Image.BICUBIC)
    pixels = 0.7 * np.asarray(low, np.float32) + 0.3 * np.asarray(mid, np.float32)
    pixels += rng.normal(0, 6, pixels.shape)
    image = Image.fromarray(pixels.clip(0, 255).astype(np.uint8))
    tmp = path.with_name(path.name + ".tmp")
    image.save(tmp, format="JPEG", quality=90)
    tmp.rename(path)
    return path.stat().st_size


def write_jpegs(out, images, classes=10, seed=0):
    """DIR/train/<wnid>/<wnid>_<i>.JPEG, `images` in all over `classes` ImageNet-100 classes."""
    if images < 1 or not 1 <= classes <= len(IMAGENET100):
        raise FlatmixError(f"--images must be at least 1 and --classes 1-{len(IMAGENET100)}")
    jobs = []
    for i in range(images):
        wnid = IMAGENET100[i % classes]
        folder = Path(out) / "train" / wnid
        folder.mkdir(parents=True, exist_ok=True)
        jobs.append((folder / f"{wnid}_{i}.JPEG", [seed, i]))
    with Pool(os.cpu_count()) as pool:
        sizes = list(tqdm(pool.imap(_write_jpeg, jobs, chunksize=16), total=images, desc="jpegs", unit="img"))
    return {"images": images, "classes": classes, "mean_kb": round(sum(sizes) / len(sizes) / 1024, 1),
            "out": str(out)}


def run(args):
    mixture = Experiments(load_config(*(args.config or ["config.yaml"]))).best_mixture(args.method)
    for result in bench_pretrain(mixture, method=args.method, arch=args.arch, batch_size=args.batch_size,
                                 image_size=args.image_size, steps=args.steps, warmup=args.warmup,
                                 precision=args.precision, channels_last=args.channels_last, K=args.K,
                                 device=args.device, loader=args.loader, data=args.data, workers=args.workers,
                                 compile=args.compile):
        print(json.dumps(result), flush=True)


def run_mixer(args):
    mixture = Experiments(load_config(*(args.config or ["config.yaml"]))).best_mixture(args.method)
    print(json.dumps(bench_mixer(mixture, method=args.method, batch_size=args.batch_size, image_size=args.image_size,
                                 steps=args.steps, warmup=args.warmup, precision=args.precision, device=args.device)))


def run_jpegs(args):
    print(json.dumps(write_jpegs(args.out, args.images, classes=args.classes, seed=args.seed)))
