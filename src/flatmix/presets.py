"""Pretraining presets: the defaults of a run and every pretraining run of the paper, by name.

A name says what the run is: data set, method, mixtures, epochs, negatives. For example
`in100-moco-g4p0.5-e400-k16384` is MoCo on ImageNet-100 with a global mixture of 4 images fired with
probability 0.5, 400 epochs, K = 16384; `-r5p0.5d0.2` is a region mixture of 5 images with context
decay 0.2. Tables that need the same run share it by name.

Where the paper is silent, the choices (stated in the README) are:
- MoCo mixtures fire with p = 0.5 at both levels (the paper: "0.5 or higher values can perform better"
  for MoCo); CMC's global p = 0.1 and region p = 0.1 (Table 4's best and its fixed region p).
- Table 2 varies the region count without decay (decay 1.0), Table 3 varies the decay with 2 images.
- Table 5's "+Global" is Table 1's best (n = 4), "+Region" Table 2-3's best (n = 5, decay 0.2).
- The step schedule x0.1 at 120/160/200 of 240 epochs is scaled to the epoch budget for both methods.
- bf16 autocast and channels_last (the authors trained in fp32).
"""

DEFAULTS = {
    "method": "moco",  # moco | cmc
    "seed": 0,
    "data": {
        "root": "",          # a prepared ImageNet-100 (or ImageNet) folder with train/<wnid>/
        "image_size": 224,
        "workers": 8,        # DataLoader workers per process
    },
    "model": {"arch": "resnet50", "dim": 128},
    "moco": {"K": 16384, "m": 0.99, "T": 0.07, "mlp": False, "aug": "v1"},  # aug: v1 | v2
    "cmc": {"K": 16384, "T": 0.07, "momentum": 0.5, "colour": "YCbCr"},      # colour: YCbCr | Lab
    "mixture": {
        "views": "joint",    # joint: query and key share draws (the authors' code) | query: query only
        # Un-Mix (AAAI 2022, MoCo only): also mix the queries with the reversed batch (one lam per batch)
        # and add lam * L(mixed, keys) + (1 - lam) * L(mixed, reversed keys) to the loss
        "unmix": False,
        "global": {"n": 1, "p": 0.0, "alpha": 1.0},
        "region": {"n": 1, "p": 0.0, "beta": 1.0, "decay": 1.0},
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
        "checkpoint_every": 1,  # epochs between last.pth writes
        "log_every": 10,        # steps between metrics.jsonl lines
    },
}

_MOCO_P, _CMC_P = 0.5, 0.1
# The paper's runs train in bf16 autocast with channels_last (about 2x the fp32 throughput on an H100);
# `--set train.precision=fp32` gives the authors' fp32.
_GPU = {"precision": "bf16", "channels_last": True}


def _global(n, p):
    return {"global": {"n": n, "p": p}}


def _region(n, p, decay):
    return {"region": {"n": n, "p": p, "decay": decay}}


def _tag(mixture):
    tag = ""
    if "global" in mixture:
        tag += f"-g{mixture['global']['n']}p{mixture['global']['p']}"
    if "region" in mixture:
        r = mixture["region"]
        tag += f"-r{r['n']}p{r['p']}d{r['decay']}"
    return tag


def _in100(method, epochs, mixture=None, K=16384):
    mixture = mixture or {}
    milestones = [round(e * epochs / 240) for e in (120, 160, 200)]
    run = {"method": method, "train": {"epochs": epochs, "batch_size": 128, "milestones": milestones, **_GPU}}
    if method == "moco":
        run["model"] = {"arch": "resnet50"}
        run["moco"] = {"K": K, "m": 0.99}
    else:
        run["model"] = {"arch": "resnet50half"}
        run["cmc"] = {"K": K, "colour": "YCbCr"}
    if mixture:
        run["mixture"] = mixture
    return f"in100-{method}{_tag(mixture)}-e{epochs}-k{K}", run


def _in1k(arch, mixture=None, K=65536):
    mixture = mixture or {}
    run = {"method": "moco", "model": {"arch": arch}, "moco": {"K": K, "m": 0.999},
           "train": {"epochs": 200, "batch_size": 256, "milestones": [120, 160], **_GPU}}
    if mixture:
        run["mixture"] = mixture
    return f"in1k-moco-{arch}{_tag(mixture)}-e200-k{K}", run


def _ours(method):
    """The full method of Table 5: global + region mixtures, each at its best setting."""
    if method == "moco":
        return {**_global(4, _MOCO_P), **_region(5, _MOCO_P, 0.2)}
    return {**_global(2, _CMC_P), **_region(5, _CMC_P, 0.2)}


def paper_runs():
    """{table: [(name, run)]} for every pretraining run of Tables 1-6 and Figure 4."""
    tables = {
        "table1": [_in100("moco", 400, _global(n, _MOCO_P)) for n in range(2, 8)],
        "table2": [_in100("moco", 400, _region(n, _MOCO_P, 1.0)) for n in range(2, 8)],
        "table3": [_in100("moco", 400, _region(2, _MOCO_P, d))
                   for d in (0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9, 0.99, 1.0)],
        "table4": [_in100("cmc", 800)]
        + [_in100("cmc", 800, _global(2, p)) for p in (0.1, 0.2, 0.3, 0.4)]
        + [_in100("cmc", 800, {**_global(2, p), **_region(2, 0.1, 1.0)}) for p in (0.1, 0.2, 0.3, 0.4)],
        "table5": [_in100("moco", 240), _in100("moco", 800),
                   _in100("moco", 800, _global(4, _MOCO_P)), _in100("moco", 800, _region(5, _MOCO_P, 0.2)),
                   _in100("moco", 800, _ours("moco")),
                   _in100("cmc", 240, K=4096), _in100("cmc", 800),
                   _in100("cmc", 800, _global(2, _CMC_P)), _in100("cmc", 800, _region(5, _CMC_P, 0.2)),
                   _in100("cmc", 800, _ours("cmc"))],
        "figure4": [_in100(m, e, mix) for m in ("moco", "cmc") for e in (240, 400, 600, 800)
                    for mix in (None, _ours(m))],
        "table6": [_in1k(arch, mix) for arch in ("resnet50", "resnet50w2") for mix in (None, _ours("moco"))],
    }
    return tables


def _smoke(method, mixed):
    """The real architectures (so the checkpoints feed mmdetection) on 32-pixel images, for a CPU."""
    run = {"method": method, "seed": 0,
           "data": {"image_size": 32, "workers": 0},
           "model": {"arch": "resnet50" if method == "moco" else "resnet50half", "dim": 32},
           "train": {"epochs": 2, "batch_size": 16, "lr": 0.03, "milestones": [1], "log_every": 1}}
    if method == "moco":
        run["moco"] = {"K": 64, "m": 0.99}
    else:
        run["cmc"] = {"K": 32}
    if mixed:
        run["mixture"] = _ours(method)
        if method == "moco":  # fire often enough to matter within a few steps
            run["mixture"]["global"]["p"] = run["mixture"]["region"]["p"] = 0.5
    return run


PRESETS = {name: run for table in paper_runs().values() for name, run in table}
PRESETS.update({
    "smoke-moco": _smoke("moco", False), "smoke-moco-mix": _smoke("moco", True),
    "smoke-cmc": _smoke("cmc", False), "smoke-cmc-mix": _smoke("cmc", True),
})
