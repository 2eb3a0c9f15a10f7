"""Pretraining run specs: the defaults of a run, how the paper's runs are specified and named, and the
smoke runs.

A name says what the run is: data set, method, mixtures, epochs, negatives. For example
`in100-moco-gm4p0.5-e400-k16384` is MoCo on ImageNet-100 with a global mixture of 4 mixing steps (up to 5
images) each fired with probability 0.5, 400 epochs, K = 16384; `-rm5p0.5d0.2` is a region mixture of 5
mixing steps with context decay 0.2. Tables that need the same run share it by name (flatmix.experiments
builds them from config).

The step schedule x0.1 at 120/160/200 of 240 epochs (ImageNet-100) and at 120/160 of 200 (ImageNet-1K)
is scaled to the epoch budget; runs train in bf16 autocast with channels_last (the authors: fp32).
"""

DEFAULTS = {
    "method": "moco",  # moco | cmc
    "seed": 0,
    "data": {
        "root": "",          # a prepared ImageNet-100 (or ImageNet) folder with train/<wnid>/
        "image_size": 224,
        "workers": 8,        # DataLoader workers per process
        # pil: the reference (PIL decode and torchvision transforms in the workers) | gpu: the workers read
        # JPEG bytes, decoding and augmentation run batched on the GPU (flatmix.data.gpu_augment)
        "loader": "pil",
    },
    # bn_splits: BatchNorm over that many shares of each process's batch (flatmix.models.split_bn; MoCo)
    "model": {"arch": "resnet50", "dim": 128, "bn_splits": 1},
    # aug: v1 | v2 | cifar (the MoCo CIFAR demo's); symmetric: also the swapped pair's loss (the demo's option)
    "moco": {"K": 16384, "m": 0.99, "T": 0.07, "mlp": False, "aug": "v1", "symmetric": False},
    "cmc": {"K": 16384, "T": 0.07, "momentum": 0.5, "colour": "YCbCr"},      # colour: YCbCr | Lab
    "mixture": {
        "views": "joint",    # joint: query and key share draws (the authors' code) | query: query only
        # Un-Mix (AAAI 2022, MoCo only): also mix the queries with the reversed batch (one lam per batch)
        # and add lam * L(mixed, keys) + (1 - lam) * L(mixed, reversed keys) to the loss
        "unmix": False,
        "unmix_prob": 0.5,   # Un-Mix's share of mixup; CutMix otherwise (the authors' run.sh --unmix_prob)
        # mixes: mixing steps, each fired with probability p, adding one partner (the authors' num_mix); 0: off
        "global": {"mixes": 0, "p": 0.0, "alpha": 1.0},
        "region": {"mixes": 0, "p": 0.0, "beta": 1.0, "decay": 1.0},
    },
    "train": {
        "epochs": 240,
        "batch_size": 128,   # global batch over all processes
        "lr": 0.03,          # for the global batch
        "momentum": 0.9,
        "weight_decay": 1e-4,
        "schedule": "step",  # step | cosine
        "milestones": [120, 160, 200],
        "precision": "fp32",  # fp32 | bf16
        "channels_last": False,
        "compile": False,       # torch.compile the encoders (fixed shapes; the first steps compile)
        "checkpoint_every": 1,  # epochs between last.pth writes
        "log_every": 10,        # steps between metrics.jsonl lines
        # the kNN monitor (flatmix.knn): every knn_every epochs and after the last (0: off), InstDisc's
        # weighted vote of the knn_k nearest training images at temperature knn_t, data.root's train/ the
        # bank and val/ the queries, at most knn_max_images of each (null: all), on knn_features: pooled (the
        # backbone's, as `flatmix knn` and the probe) | embedding (the head's output, as the MoCo CIFAR demo)
        "knn_every": 0,
        "knn_k": 200,
        "knn_t": 0.1,
        "knn_max_images": None,
        "knn_features": "pooled",
    },
}


def _obj(**properties):
    return {"type": "object", "additionalProperties": False, "required": list(properties), "properties": properties}


def _int(low):
    return {"type": "integer", "minimum": low}


def _num(low, high=None, above=False):
    """A number in [low, high] (with `above`, strictly greater than low)."""
    bound = {"exclusiveMinimum": low} if above else {"minimum": low}
    return {"type": "number", **bound, **({"maximum": high} if high is not None else {})}


# Every key's type and range (JSON schema), checked before any work starts (flatmix.pretrain). The
# architectures and loaders are listed where they are defined (flatmix.models.resnet, flatmix.data.batches).
SCHEMA = _obj(
    method={"enum": ["moco", "cmc"]},
    seed=_int(0) | {"maximum": 2**31 - 1},
    data=_obj(root={"type": "string"}, image_size=_int(16), workers=_int(0), loader={"type": "string"}),
    model=_obj(arch={"type": "string"}, dim=_int(1), bn_splits=_int(1)),
    moco=_obj(K=_int(1), m=_num(0, 1), T=_num(0, above=True), mlp={"type": "boolean"},
              aug={"enum": ["v1", "v2", "cifar"]}, symmetric={"type": "boolean"}),
    cmc=_obj(K=_int(1), T=_num(0, above=True), momentum=_num(0, 1), colour={"enum": ["YCbCr", "Lab"]}),
    mixture=_obj(
        views={"enum": ["joint", "query"]}, unmix={"type": "boolean"}, unmix_prob=_num(0, 1),
        **{"global": _obj(mixes=_int(0), p=_num(0, 1), alpha=_num(0, above=True))},
        region=_obj(mixes=_int(0), p=_num(0, 1), beta=_num(0, above=True), decay=_num(0, 1)),
    ),
    train=_obj(
        epochs=_int(1), batch_size=_int(1), lr=_num(0, above=True), momentum=_num(0, 1), weight_decay=_num(0),
        schedule={"enum": ["step", "cosine"]}, milestones={"type": "array", "items": _int(1)},
        precision={"enum": ["fp32", "bf16"]}, channels_last={"type": "boolean"}, compile={"type": "boolean"},
        checkpoint_every=_int(1), log_every=_int(1), knn_every=_int(0), knn_k=_int(1), knn_t=_num(0, above=True),
        knn_max_images={"anyOf": [{"type": "null"}, _int(1)]}, knn_features={"enum": ["pooled", "embedding"]},
    ),
)

# The paper's runs train in bf16 autocast with channels_last (about 2x the fp32 throughput on an H100);
# `--set train.precision=fp32` gives the authors' fp32.
_GPU = {"precision": "bf16", "channels_last": True}


# Keys an earlier flatmix spelled otherwise, and what the new key says.
MIXES_NOTE = "(mixing steps, the authors' num_mix; n images were n - 1 mixes)"
RENAMED = {"mixture.global.n": f"mixture.global.mixes {MIXES_NOTE}", "mixture.region.n": f"mixture.region.mixes {MIXES_NOTE}"}


def mixture(global_mixes=0, global_p=0.0, region_mixes=0, region_p=0.0, decay=1.0):
    """The `mixture` section of a run; a level with 0 mixes is off and left out."""
    mix = {}
    if global_mixes:
        mix["global"] = {"mixes": global_mixes, "p": global_p}
    if region_mixes:
        mix["region"] = {"mixes": region_mixes, "p": region_p, "decay": decay}
    return mix


def _tag(mix):
    tag = ""
    if "global" in mix:
        tag += f"-gm{mix['global']['mixes']}p{mix['global']['p']}"
    if "region" in mix:
        r = mix["region"]
        tag += f"-rm{r['mixes']}p{r['p']}d{r['decay']}"
    return tag


def in100_run(method, epochs, mix, K, batch_size):
    """(name, spec) of an ImageNet-100 run: MoCo on ResNet-50, or CMC on two ResNet-50-half (YCbCr)."""
    milestones = [round(e * epochs / 240) for e in (120, 160, 200)]
    run = {"method": method, "train": {"epochs": epochs, "batch_size": batch_size, "milestones": milestones, **_GPU}}
    if method == "moco":
        run["model"] = {"arch": "resnet50"}
        run["moco"] = {"K": K, "m": 0.99}
    else:
        run["model"] = {"arch": "resnet50half"}
        run["cmc"] = {"K": K, "colour": "YCbCr"}
    if mix:
        run["mixture"] = mix
    return f"in100-{method}{_tag(mix)}-e{epochs}-k{K}", run


def in1k_run(arch, epochs, mix, K, batch_size):
    """(name, spec) of an ImageNet-1K MoCo run (momentum 0.999, x0.1 at 120 and 160 of 200 epochs)."""
    milestones = [round(e * epochs / 200) for e in (120, 160)]
    run = {"method": "moco", "model": {"arch": arch}, "moco": {"K": K, "m": 0.999},
           "train": {"epochs": epochs, "batch_size": batch_size, "milestones": milestones, **_GPU}}
    if mix:
        run["mixture"] = mix
    return f"in1k-moco-{arch}{_tag(mix)}-e{epochs}-k{K}", run


# The rows of the CIFAR presets (config `cifar.runs`): the MoCo CIFAR demo's two losses, then the paper's
# mixtures and Un-Mix, each with `cifar.mixture_loss`
CIFAR_RUNS = ("asymmetric", "symmetric", "global", "region", "global+region", "unmix")
CIFAR_K = 4096
CIFAR_ARCH = "resnet18cifar"  # the demo's ResNet-18 with the CIFAR stem


def cifar_run(dataset, row, epochs, batch_size, bn_splits, mixture_loss, mixture_settings):
    """(name, spec) of a CIFAR run: the MoCo CIFAR demo's recipe (ResNet-18 with the CIFAR stem, 128-d
    head, lr 0.06 for batch 512 and in proportion to another (the demo's comment: 0.03 for 256), cosine,
    wd 5e-4, K 4096, m 0.99, T 0.1, its 32-pixel augmentation, its kNN monitor on the head's output) with
    the row's loss and mixture: the paper's global and/or region
    mixture (`mixture_settings`: {mixes, p, decay}, Un-Mix's CIFAR settings by default), or Un-Mix (MoCo
    only: mixup or CutMix with the reversed batch, even odds, as unmix_c10.py's --prob 0.5)."""
    loss = row if row in ("asymmetric", "symmetric") else mixture_loss
    m = mixture_settings
    mix = mixture(global_mixes=m["mixes"] if "global" in row else 0, global_p=m["p"],
                  region_mixes=m["mixes"] if "region" in row else 0, region_p=m["p"], decay=m["decay"])
    if row == "unmix":
        mix = {"unmix": True, "unmix_prob": 0.5}
    run = {"method": "moco", "data": {"image_size": 32},
           "model": {"arch": CIFAR_ARCH, "dim": 128, "bn_splits": bn_splits},
           "moco": {"K": CIFAR_K, "m": 0.99, "T": 0.1, "aug": "cifar", "symmetric": loss == "symmetric"},
           "train": {"epochs": epochs, "batch_size": batch_size, "lr": 0.06 * batch_size / 512, "schedule": "cosine",
                     "weight_decay": 5e-4,
                     "knn_features": "embedding", "precision": "bf16",
                     # SplitBatchNorm regroups the batch into a tensor no channels_last layout can view: each BN
                     # would copy to and from it
                     "channels_last": bn_splits == 1}}
    if mix:
        run["mixture"] = mix
    tag = "-unmix" if row == "unmix" else _tag(mix)
    short = {"asymmetric": "asym", "symmetric": "sym"}[loss]
    return f"{dataset}-moco-{short}{tag}-b{batch_size}-bn{bn_splits}-e{epochs}-k{CIFAR_K}", run


def seed_replica(name, seed):
    """The name of a run's copy trained with seed `seed` (experiments.seeds): seed 0 keeps the run's own
    name, so results made before there were seeds stay valid; seed s > 0 adds `-s<s>`."""
    return name if seed == 0 else f"{name}-s{seed}"


def _smoke(method, mixed):
    """The real architectures (so the checkpoints feed mmdetection) on 32-pixel images, for a CPU."""
    run = {"method": method, "seed": 0,
           "data": {"image_size": 32, "workers": 0},
           "model": {"arch": "resnet50" if method == "moco" else "resnet50half", "dim": 32},
           "train": {"epochs": 2, "batch_size": 16, "lr": 0.03, "milestones": [1], "log_every": 1, "knn_every": 1}}
    if method == "moco":
        run["moco"] = {"K": 64, "m": 0.99}
    else:
        run["cmc"] = {"K": 32}
    if mixed:  # both levels, firing often enough to matter within a few steps
        run["mixture"] = mixture(global_mixes=4, global_p=0.5, region_mixes=5, region_p=0.5, decay=0.2)
    return run


# Named runs for `flatmix pretrain --preset`: the smoke runs. The paper's runs are built from the
# workflow config (flatmix.experiments); `flatmix plan --commands` prints their command lines.
PRESETS = {
    "smoke-moco": _smoke("moco", False), "smoke-moco-mix": _smoke("moco", True),
    "smoke-cmc": _smoke("cmc", False), "smoke-cmc-mix": _smoke("cmc", True),
}
# What each smoke run is, for `flatmix pretrain --list-presets`.
PRESET_DESCRIPTIONS = {
    "smoke-moco": "MoCo v1 on ResNet-50, no mixtures; 2 epochs of 32-pixel images, batch 16, K 64 (a CPU run)",
    "smoke-moco-mix": "smoke-moco with the global (4 mixes) and region (5 mixes, decay 0.2) mixtures, p 0.5",
    "smoke-cmc": "CMC on two ResNet-50-half encoders (YCbCr), no mixtures; 2 epochs of 32-pixel images, batch 16, K 32",
    "smoke-cmc-mix": "smoke-cmc with the global (4 mixes) and region (5 mixes, decay 0.2) mixtures, p 0.5",
}
