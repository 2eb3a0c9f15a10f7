"""ImageNet-100 from an ImageNet root: class folders of symlinks to the original images, and a manifest.

Accepted roots: a folder with train/ and val/ (the usual extraction), or the Kaggle download whose images
are under ILSVRC/Data/CLS-LOC/. val/ may hold class folders, or the flat ILSVRC2012_val_*.JPEG files
labelled by LOC_val_solution.csv (beside the images, beside val/, or at the root). Files that are not
images (by suffix) and hidden files are skipped. Nothing is ever written into the source tree.
"""

import csv
import os
from pathlib import Path
import sys

from flatmix import atomic, paths, provenance
from flatmix.data.classes import WNID, read_class_list
from flatmix.errors import FlatmixError

IMAGE_SUFFIXES = {".jpeg", ".jpg", ".png"}
VAL_SOLUTION = "LOC_val_solution.csv"


def image_files(folder):
    """The image files of one folder, sorted by name (symlinks to files count)."""
    return sorted(p for p in folder.iterdir()
                  if p.suffix.lower() in IMAGE_SUFFIXES and not p.name.startswith(".") and p.is_file())


def _locate(root):
    root = Path(root)
    if not root.is_dir():
        raise FlatmixError(f"ImageNet root {root} is not a directory")
    for images in (root, root / "ILSVRC" / "Data" / "CLS-LOC"):
        if (images / "train").is_dir():
            break
    else:
        raise FlatmixError(f"ImageNet root {root} has no train/ folder (nor ILSVRC/Data/CLS-LOC/train)")
    val = images / "val"
    if not val.is_dir():
        raise FlatmixError(f"ImageNet root {root}: {val} is missing")
    return images / "train", val, [val / VAL_SOLUTION, images / VAL_SOLUTION, root / VAL_SOLUTION]


def _val_from_solution(val, solution):
    """{wnid: [image paths]} of a flat val/ folder, from the first label of each LOC_val_solution.csv row."""
    by_class = {}
    try:
        with open(solution, newline="", encoding="utf-8") as f:
            rows = list(csv.reader(f))
    except UnicodeDecodeError as e:
        raise FlatmixError(f"{solution}: not UTF-8 text (byte {e.start})") from None
    except (OSError, csv.Error) as e:
        raise FlatmixError(f"{solution}: cannot read it ({e})") from None
    if not rows or rows[0][:2] != ["ImageId", "PredictionString"]:
        raise FlatmixError(f"{solution}: expected the header 'ImageId,PredictionString'")
    for line, row in enumerate(rows[1:], start=2):
        if len(row) < 2 or not row[1].split():
            raise FlatmixError(f"{solution}:{line}: no label for {row[0] if row else 'this row'}")
        if not WNID.match(row[1].split()[0]) or "/" in row[0] or row[0].startswith("."):
            raise FlatmixError(f"{solution}:{line}: {row[0]!r} labelled {row[1].split()[0]!r} is not an image id and wnid")
        by_class.setdefault(row[1].split()[0], []).append(row[0])
    found = {}
    for wnid, ids in by_class.items():
        paths = []
        for image_id in sorted(ids):
            candidates = [val / f"{image_id}{s}" for s in (".JPEG", ".jpeg", ".jpg", ".png")]
            path = next((p for p in candidates if p.is_file()), None)
            if path is None:
                raise FlatmixError(f"{solution} labels {image_id} but {candidates[0]} is missing")
            paths.append(path)
        found[wnid] = paths
    return found


def _collect(train, val, solutions, wnids):
    """{split: {wnid: [paths]}}, or an error naming every missing or empty class."""
    class_folders = any(WNID.match(p.name) and p.is_dir() for p in val.iterdir())
    if class_folders:
        val_images = None
    else:
        solution = next((p for p in solutions if p.is_file()), None)
        if solution is None:
            raise FlatmixError(f"{val} holds no class folders and no {VAL_SOLUTION} was found at "
                               + ", ".join(str(p) for p in solutions))
        val_images = _val_from_solution(val, solution)
    found, missing, empty = {"train": {}, "val": {}}, [], []
    for wnid in wnids:
        for split, folder in (("train", train / wnid), ("val", val / wnid)):
            if split == "val" and val_images is not None:
                paths = val_images.get(wnid)
            else:
                paths = image_files(folder) if folder.is_dir() else None
            if paths is None:
                missing.append(f"{split}/{wnid}")
            elif not paths:
                empty.append(f"{split}/{wnid}")
            else:
                found[split][wnid] = paths
    problems = []
    if missing:
        problems.append(f"{len(missing)} class(es) missing: {' '.join(missing)}")
    if empty:
        problems.append(f"{len(empty)} class(es) with no images: {' '.join(empty)}")
    if problems:
        raise FlatmixError(f"ImageNet root {train.parent}: " + "; ".join(problems))
    return found, "folders" if val_images is None else "flat"


def _drop_unreadable(found):
    """Leave out the images whose header PIL cannot read (empty, cut short, not an image), each named in a
    warning line; returns [(path, reason)]. A class left with no image is refused."""
    from flatmix.data.loading import check_images  # torch-heavy; imported when needed

    every = [path for classes in found.values() for files in classes.values() for path in files]
    unreadable = check_images(every)
    bad = {path for path, _ in unreadable}
    for path, reason in unreadable:
        print(f"flatmix: warning: {path}: not a readable image ({reason}); left out", file=sys.stderr)
    for split, classes in found.items():
        for wnid, files in classes.items():
            classes[wnid] = [p for p in files if p not in bad]
            if not classes[wnid]:
                raise FlatmixError(f"{split}/{wnid}: none of its {len(files)} images is readable")
    return unreadable


PREPARED_ENTRIES = ("train", "val", "manifest.json", ".staging")


def prepare(imagenet_root, out, class_list=None, every_class=False):
    """Build O/train/<wnid>, O/val/<wnid> (symlinks) and O/manifest.json; returns the manifest.

    The classes are the class list's (default: ImageNet-100), or with `every_class` all of train/ (ImageNet-1K).
    `out` must be new, empty or an earlier output of this command (flatmix.paths.claim_folder), and neither
    inside nor around the ImageNet root; a rerun replaces only its own symlink trees.
    """
    command = "prepare imagenet1k" if every_class else "prepare imagenet100"
    source = Path(imagenet_root).resolve()
    paths.refuse_overlap({"--out": out}, {"--imagenet-root": imagenet_root})
    train, val, solutions = _locate(source)
    if every_class:
        wnids = sorted(p.name for p in train.iterdir() if WNID.match(p.name) and p.is_dir())
        if not wnids:
            raise FlatmixError(f"ImageNet root {source}: {train} holds no class folders")
    else:
        wnids = read_class_list(class_list)
    found, val_layout = _collect(train, val, solutions, wnids)
    unreadable = _drop_unreadable(found)
    out = paths.claim_folder(Path(out).resolve(), command, PREPARED_ENTRIES)

    for tree in ("train", "val", ".staging"):  # all refusals before any change
        paths.check_links_tree(out / tree)
    (out / "manifest.json").unlink(missing_ok=True)
    staging = out / ".staging"
    paths.remove_links_tree(staging)
    for split, classes in found.items():
        for wnid, files in classes.items():
            folder = staging / split / wnid
            folder.mkdir(parents=True)
            for path in files:
                os.symlink(path.resolve(), folder / path.name)
    for split in ("train", "val"):
        paths.remove_links_tree(out / split)
        (staging / split).rename(out / split)
    staging.rmdir()

    manifest = {
        "classes": len(wnids),
        "train_images": sum(len(p) for p in found["train"].values()),
        "val_images": sum(len(p) for p in found["val"].values()),
        "per_class": {w: {"train": len(found["train"][w]), "val": len(found["val"][w])} for w in wnids},
        "source": str(source),
        "val_layout": val_layout,
        "unreadable": [{"path": str(path), "reason": reason} for path, reason in unreadable],
        "provenance": provenance.collect(),
    }
    atomic.write_json(out / "manifest.json", manifest)
    return manifest
