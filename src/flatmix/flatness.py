"""Figure 5: how flat the final-layer distribution is. Each validation image's pooled final-layer
features (ResNet-50: 2048-d; CMC: both halves) go through a softmax; the probabilities are sorted in
descending order and averaged over the images. A flatter curve, with a lower mean maximum probability,
is the paper's claim for training with mixtures.
"""

from pathlib import Path
import textwrap

import matplotlib
import torch
from torch.utils.data import DataLoader

from flatmix import atomic, provenance
from flatmix.convert import extract_all
from flatmix.data.eval_transforms import val_transform
from flatmix.data.loading import image_folder
from flatmix.errors import FlatmixError
from flatmix.linear import LinearProbe
from flatmix.progress import Progress

matplotlib.use("Agg")
from matplotlib import pyplot as plt  # noqa: E402  (after choosing the headless backend)


def sorted_softmax(features):
    """[B, D] features -> [B, D] softmax probabilities in descending order."""
    return torch.softmax(features.float(), dim=1).sort(dim=1, descending=True).values


def measure(checkpoint, data, image_size, batch_size, workers, device):
    """The mean sorted distribution and the mean maximum probability of one backbone over data/val."""
    backbones = extract_all(checkpoint)
    probe = LinearProbe(backbones, num_classes=1).to(device).eval()
    dataset = image_folder(Path(data) / "val", transform=val_transform(image_size, backbones[0].colour))
    loader = DataLoader(dataset, batch_size=batch_size, num_workers=workers)
    progress = Progress(f"flatness {Path(checkpoint).parent.name}", len(loader), unit="img", per_step=batch_size)
    total, count = None, 0
    with torch.no_grad():
        for images, _ in progress.batches(loader):
            p = sorted_softmax(probe.features(images.to(device))).sum(0).cpu().double()
            total = p if total is None else total + p
            count += images.shape[0]
            progress.show_count("batch")
    progress.close()
    curve = total / count
    return {"checkpoint": str(checkpoint), "images": count, "feature_dim": probe.feature_dim,
            "max_probability": curve[0].item(), "curve": curve.tolist()}


TITLE = "Figure 5: flatness of the final-layer distribution"


def plot(models, path, title=TITLE):
    """The paper's Figure 5: one curve per model, its mean maximum probability as a dotted line. The title
    and the names are plain text (matplotlib would otherwise read `$...$` in them as maths, and fail on bad
    maths); the log axis keeps its maths tick labels."""
    fig, ax = plt.subplots(figsize=(9, 4.5), dpi=120)
    for i, (name, m) in enumerate(models.items()):
        colour = f"C{i}"
        ax.plot(range(1, len(m["curve"]) + 1), m["curve"], color=colour, label=name)
        ax.axhline(m["max_probability"], color=colour, linestyle=":", linewidth=1.2,
                   label=f"{name}: max p = {m['max_probability']:.4f}")
    ax.set_xscale("log")
    ax.set_xlabel("dimension of the final-layer output, sorted by probability")
    ax.set_ylabel("mean softmax probability")
    ax.set_title("\n".join(textwrap.wrap(title, 80)), fontsize=11, parse_math=False)
    legend = ax.legend(fontsize=10, loc="upper left", bbox_to_anchor=(1.02, 1), borderaxespad=0)
    for text in legend.get_texts():
        text.set_parse_math(False)
    fig.tight_layout()
    with atomic.atomic_path(path) as tmp:
        fig.savefig(tmp, format="png")
    plt.close(fig)


def run(named_checkpoints, data, out, image_size=224, batch_size=256, workers=8, title=None):
    """Measure every NAME=CKPT pair; writes DIR/flatness.json and DIR/flatness.png, titled `title`."""
    title = title or TITLE
    if not (Path(data) / "val").is_dir():
        raise FlatmixError(f"--data {data}: {Path(data) / 'val'} is not a folder of class folders")
    models = {}
    for item in named_checkpoints:
        name, sep, checkpoint = item.partition("=")
        if not sep or not name or not checkpoint:
            raise FlatmixError(f"--backbone {item!r} must look like NAME=CHECKPOINT")
        if name in models:
            raise FlatmixError(f"--backbone name {name!r} is given twice")
        models[name] = None
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    for item in named_checkpoints:
        name, _, checkpoint = item.partition("=")
        models[name] = measure(checkpoint, data, image_size, batch_size, workers, device)
    out = Path(out)
    plot(models, out / "flatness.png", title)
    atomic.write_json(out / "flatness.json", {"title": title, "data": str(data), "image_size": image_size,
                                              "models": models, "provenance": provenance.collect()})
    return {name: m["max_probability"] for name, m in models.items()}
