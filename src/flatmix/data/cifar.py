"""CIFAR-10 and CIFAR-100 from their published binary versions, written as PNG class folders O/train/<class>/
and O/val/<class>/ (the test set), which flatmix's loaders, probe and kNN read as they read ImageNet-100.

The binary version is fixed-size records: the label byte(s), then 3,072 pixel bytes (the 1,024 red, green
and blue values of a 32 x 32 image, row by row). CIFAR-10: data_batch_1..5.bin and test_batch.bin, one
label byte, class names in batches.meta.txt; CIFAR-100: train.bin and test.bin, a coarse then a fine label
byte (the fine one is the class), names in fine_label_names.txt. Given the .tar.gz, its published MD5 is
checked first and only those members are read from it, nothing extracted. The "python version" is pickles,
and flatmix never unpickles a file it did not write: it is refused without being opened.
"""

from dataclasses import dataclass
import hashlib
import io
from pathlib import Path
import tarfile

import numpy as np
from PIL import Image

from flatmix import atomic, paths, provenance
from flatmix.errors import FlatmixError

SIDE = 32
PIXELS = 3 * SIDE * SIDE


@dataclass(frozen=True)
class Binary:
    """One data set's binary version as published (https://www.cs.toronto.edu/~kriz/cifar.html)."""
    archive: str
    md5: str
    folder: str  # the archive's one folder
    train: tuple
    test: str
    names: str
    label_bytes: int
    classes: int
    pickled: tuple  # the python version's folder and archive: refused

    @property
    def record(self):
        return self.label_bytes + PIXELS


BINARIES = {
    "cifar10": Binary("cifar-10-binary.tar.gz", "c32a1d4ab5d03f1284b67883e8d87530", "cifar-10-batches-bin",
                      tuple(f"data_batch_{i}.bin" for i in range(1, 6)), "test_batch.bin", "batches.meta.txt", 1, 10,
                      ("cifar-10-batches-py", "cifar-10-python.tar.gz")),
    "cifar100": Binary("cifar-100-binary.tar.gz", "03b5dce01913d631647c71ecec9e9cb8", "cifar-100-binary",
                       ("train.bin",), "test.bin", "fine_label_names.txt", 2, 100,
                       ("cifar-100-python", "cifar-100-python.tar.gz")),
}
COARSE_CLASSES = 20  # CIFAR-100's first label byte
TRAIN_IMAGES, TEST_IMAGES = 50_000, 10_000  # each data set's, as published (the plan's sizes before any prepare)
PREPARED_ENTRIES = ("train", "val", "manifest.json", ".staging")


class _Folder:
    """The binary files in an extracted folder."""

    def __init__(self, folder):
        self.where = folder

    def read(self, name):
        path = self.where / name
        if not path.is_file():
            raise FlatmixError(f"{path} is missing")
        return path.read_bytes()


class _Archive:
    """The binary files inside the published .tar.gz, its MD5 checked first; nothing is extracted."""

    def __init__(self, path, binary):
        with open(path, "rb") as f:
            md5 = hashlib.file_digest(f, "md5").hexdigest()
        if md5 != binary.md5:
            raise FlatmixError(f"{path}: MD5 {md5} is not the published {binary.md5}: a damaged or different download")
        self.where, self.folder, self.tar = path, binary.folder, tarfile.open(path, "r:gz")

    def read(self, name):
        try:
            member = self.tar.getmember(f"{self.folder}/{name}")
        except KeyError:
            raise FlatmixError(f"{self.where}: {self.folder}/{name} is missing") from None
        if not member.isfile():
            raise FlatmixError(f"{self.where}: {member.name} is not a regular file")
        return self.tar.extractfile(member).read()


def _source(root, binary):
    """Where the binary files are: ROOT/<folder>/, ROOT itself, or ROOT/<archive> (or ROOT the archive);
    the pickled version is refused by its names alone."""
    root = Path(root).resolve()
    candidates = [root / binary.folder, root]
    for folder in candidates:
        if folder.is_dir() and (folder / binary.test).is_file():
            return _Folder(folder)
    archive = root if root.is_file() else root / binary.archive
    if archive.is_file() and archive.name.endswith(".tar.gz") and "python" not in archive.name:
        return _Archive(archive, binary)
    pickled = [p for p in (root / binary.pickled[0], root / binary.pickled[1], root) if p.name in binary.pickled]
    if pickled or (root.is_dir() and ((root / "data_batch_1").is_file() or (root / "train").is_file())):
        raise FlatmixError(f"{pickled[0] if pickled else root} is CIFAR's python version, pickles that flatmix does "
                           f"not open: use the binary version, {binary.archive} ({binary.folder}/)")
    raise FlatmixError(f"--root {root}: no {binary.folder}/ or {binary.archive} there")


def _records(data, name, binary):
    """(labels, images [N, 32, 32, 3] uint8) of one binary file, every record and label checked."""
    if not data or len(data) % binary.record:
        raise FlatmixError(f"{name}: {len(data)} bytes is not a whole number of {binary.record}-byte records: "
                           "truncated, or not this data set's binary version")
    records = np.frombuffer(data, np.uint8).reshape(-1, binary.record)
    labels = records[:, binary.label_bytes - 1].astype(np.int64)
    if binary.label_bytes == 2 and (bad := np.flatnonzero(records[:, 0] >= COARSE_CLASSES)).size:
        raise FlatmixError(f"{name}: record {bad[0]} has coarse label {records[bad[0], 0]}, not 0-{COARSE_CLASSES - 1}")
    if (bad := np.flatnonzero(labels >= binary.classes)).size:
        raise FlatmixError(f"{name}: record {bad[0]} has label {labels[bad[0]]}, not 0-{binary.classes - 1}")
    images = records[:, binary.label_bytes:].reshape(-1, 3, SIDE, SIDE).transpose(0, 2, 3, 1)
    return labels, images


def _class_names(data, name, binary):
    names = [line.strip() for line in data.decode("utf-8", errors="replace").splitlines() if line.strip()]
    if len(names) != binary.classes or len(set(names)) != binary.classes or not all(
            n.replace("_", "").isalnum() for n in names):
        raise FlatmixError(f"{name}: not {binary.classes} distinct class names of letters, digits and _")
    return names


def prepare(dataset, root, out):
    """Build O/train/<class>/<i>.png, O/val/<class>/<i>.png and O/manifest.json; returns the manifest.
    `out` must be new, empty or an earlier output of this command (flatmix.paths.claim_folder), and
    neither inside nor around the root; every file is read and checked before anything is written."""
    binary = BINARIES[dataset]
    paths.refuse_overlap({"--out": out}, {"--root": root})
    source = _source(root, binary)
    names = _class_names(source.read(binary.names), binary.names, binary)
    splits = {}
    for split, files in (("train", binary.train), ("val", (binary.test,))):
        parts = [_records(source.read(f), f"{source.where}/{f}", binary) for f in files]
        splits[split] = (np.concatenate([p[0] for p in parts]), np.concatenate([p[1] for p in parts]))
    command = f"prepare {dataset}"
    out = paths.claim_folder(Path(out).resolve(), command, PREPARED_ENTRIES)
    (out / "manifest.json").unlink(missing_ok=True)
    staging = out / ".staging"
    paths.remove_owned_tree(out, ".staging")
    for split, (labels, images) in splits.items():
        for name in names:
            (staging / split / name).mkdir(parents=True)
        for i, (label, image) in enumerate(zip(labels, images, strict=True)):
            buffer = io.BytesIO()
            Image.fromarray(image).save(buffer, format="PNG")
            (staging / split / names[label] / f"{i:05d}.png").write_bytes(buffer.getvalue())
    for split in splits:
        paths.remove_owned_tree(out, split)
        (staging / split).rename(out / split)
    staging.rmdir()
    manifest = {
        "dataset": dataset,
        "classes": binary.classes,
        "train_images": len(splits["train"][0]),
        "val_images": len(splits["val"][0]),
        "per_class": {n: {s: int((splits[s][0] == c).sum()) for s in splits} for c, n in enumerate(names)},
        "source": str(source.where),
        "md5_checked": isinstance(source, _Archive),
        "provenance": provenance.collect(),
    }
    atomic.write_json(out / "manifest.json", manifest)
    return manifest
