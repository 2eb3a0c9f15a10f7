"""Throughput benchmarks: `flatmix bench pretrain` times the real training step (pretrain.training_step)
with and without the paper's mixtures, and prints one JSON line per configuration.

Under torchrun it runs on every process (DDP) and reports the global pairs/s.
"""

import json
import time

import torch

from flatmix.distributed import Distributed
from flatmix.pretrain import build_training, training_step
from flatmix.presets import DEFAULTS, PRESETS
from flatmix.runconfig import resolve

# The full method of Table 5 (global n = 4 and region n = 5 with decay 0.2, p = 0.5).
MIXTURE = {"global": {"n": 4, "p": 0.5, "alpha": 1.0}, "region": {"n": 5, "p": 0.5, "beta": 1.0, "decay": 0.2}}


def _synchronise(device):
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def bench_pretrain(method="moco", arch="resnet50", batch_size=256, image_size=224, steps=20, warmup=5,
                   precision="bf16", channels_last=True, K=65536):
    """Yield one result dict per configuration (without, then with the mixtures)."""
    env = Distributed()
    try:
        for mixed in (False, True):
            sets = [f"method={method}", f"model.arch={arch}", f"train.batch_size={batch_size}",
                    f"train.precision={precision}", f"train.channels_last={channels_last}",
                    f"moco.K={K}", f"cmc.K={min(K, 16384)}"]
            if mixed:
                sets += [f"mixture.{level}.{key}={value}" for level, values in MIXTURE.items()
                         for key, value in values.items()]
            cfg = resolve(DEFAULTS, PRESETS, sets=sets)
            local = batch_size // env.world
            torch.manual_seed(0)
            model, optimizer, mixer = build_training(cfg, env, n_data=max(K, 4 * batch_size))
            net = env.wrap(model)
            model.train()
            views = [torch.randn(local, 3, image_size, image_size, device=env.device)
                     for _ in range(2 if method == "moco" else 1)]
            index = torch.arange(local, device=env.device) + env.rank * local
            for step in range(warmup + steps):
                if step == warmup:
                    _synchronise(env.device)
                    env.barrier()
                    start = time.perf_counter()
                training_step(cfg, net, model, optimizer, mixer, list(views), index)
            _synchronise(env.device)
            env.barrier()
            elapsed = time.perf_counter() - start
            if env.main:
                yield {"bench": "pretrain", "method": method, "arch": arch, "device": str(env.device),
                       "processes": env.world, "batch_size": batch_size, "image_size": image_size,
                       "precision": precision, "channels_last": channels_last, "loader": "synthetic",
                       "mixture": mixed, "steps": steps, "pairs_per_s": round(steps * batch_size / elapsed, 1)}
            del model, net, optimizer
    finally:
        env.close()


def run(args):
    for result in bench_pretrain(method=args.method, arch=args.arch, batch_size=args.batch_size,
                                 image_size=args.image_size, steps=args.steps, warmup=args.warmup,
                                 precision=args.precision, channels_last=args.channels_last, K=args.K):
        print(json.dumps(result), flush=True)
