"""The published CIFAR numbers the CIFAR presets are set beside, and the claims they support. Every number
is kNN top-1 (%) of the MoCo CIFAR demo's monitor (k 200, t 0.1, on the L2-normalised 128-d head output,
the test set as queries and the training set as the bank), unless said otherwise:

- facebookresearch/moco, colab/moco_cifar10_demo.ipynb: ResNet-18 on CIFAR-10, the asymmetric and the
  symmetric loss at 200/400/800 epochs; and the linear top-1 of its symmetric 800-epoch model, 90.7.
- szq0214/Un-Mix, README.md, from unmix_c10.py and unmix_c100.py (the demo with Un-Mix added): MoCo and
  MoCo + Un-Mix, asymmetric and symmetric, 1000 epochs, CIFAR-10 and CIFAR-100. The README calls them
  "acc. (Top-1)"; its scripts evaluate with the demo's kNN monitor alone.
"""

DEMO = "MoCo CIFAR demo"
UNMIX = "Un-Mix README"
SOURCES = {DEMO: "facebookresearch/moco, colab/moco_cifar10_demo.ipynb",
           UNMIX: "szq0214/Un-Mix, README.md (unmix_c10.py, unmix_c100.py)"}

# data set -> anchor key (anchor_key) -> {epochs: (top-1, source)}
KNN = {
    "cifar10": {
        "asymmetric": {200: (82.6, DEMO), 400: (86.3, DEMO), 800: (88.7, DEMO), 1000: (89.11, UNMIX)},
        "symmetric": {200: (85.3, DEMO), 400: (88.5, DEMO), 800: (89.7, DEMO), 1000: (90.49, UNMIX)},
        "unmix-asymmetric": {1000: (91.34, UNMIX)},
        "unmix-symmetric": {1000: (92.25, UNMIX)},
    },
    "cifar100": {
        "asymmetric": {1000: (63.64, UNMIX)},
        "symmetric": {1000: (65.49, UNMIX)},
        "unmix-asymmetric": {1000: (67.33, UNMIX)},
        "unmix-symmetric": {1000: (68.83, UNMIX)},
    },
}
LINEAR = {"cifar10": {"symmetric": {800: (90.7, DEMO)}}}  # linear top-1, lr 30, wd 0, 100 epochs


def anchor_key(row, loss):
    """The key of a CIFAR row's anchors: its loss, with Un-Mix's name before it; None for the paper's
    mixtures, which nobody has published on CIFAR."""
    if row in ("asymmetric", "symmetric"):
        return row
    return f"unmix-{loss}" if row == "unmix" else None


def claims(part, mixture_loss):
    """The claims a CIFAR preset judges, as flatmix.paper.CLAIMS (addresses (part, row) of its table): the
    demo's (symmetric beats asymmetric), Un-Mix's, and the paper's carried to CIFAR (its mixtures improve
    MoCo), each against the baseline of the loss the mixture rows train with."""
    name = {"cifar10": "CIFAR-10", "cifar100": "CIFAR-100"}[part]
    base = (part, mixture_loss)
    rows = [{"id": f"{part}-symmetric", "claim": f"{name}: the symmetric loss beats the asymmetric one",
             "source": DEMO, "terms": ((+1, (part, "symmetric")), (-1, (part, "asymmetric")))},
            {"id": f"{part}-unmix", "claim": f"{name}: Un-Mix improves MoCo ({mixture_loss} loss)", "source": UNMIX,
             "terms": ((+1, (part, "unmix")), (-1, base))}]
    rows += [{"id": f"{part}-{row}", "claim": f"{name}: {what} improve MoCo ({mixture_loss} loss)",
              "source": "the paper's claim, on CIFAR (no published number)", "sign": +1,
              "terms": ((+1, (part, row)), (-1, base))}
             for row, what in (("global", "global mixtures"), ("region", "region mixtures"),
                               ("global+region", "global and region mixtures"))]
    return tuple(rows)
