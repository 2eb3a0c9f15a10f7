"""CIFAR-10 and CIFAR-100 from fixtures the tests write in the published binary layout (random records):
prepare's class folders and manifest, the archive's MD5, and every refusal in one line, the pickled
python version refused without being opened."""

import hashlib
import json
import pickle
import tarfile

import numpy as np
from PIL import Image
import pytest

from conftest import assert_one_line_error, run_flatmix
from flatmix.data import cifar
from flatmix.errors import FlatmixError


def _write_binary(folder, dataset, per_file=12, seed=0, every_class=False):
    """`folder` as the binary version unpacks (fewer records), returning {split: (labels, pixels)};
    `every_class`: each file's labels cycle through the classes (every class in every split)."""
    binary = cifar.BINARIES[dataset]
    rng = np.random.default_rng(seed)
    folder.mkdir(parents=True)
    names = [f"class_{i}" for i in range(binary.classes)]
    (folder / binary.names).write_text("\n".join(names) + "\n\n")
    written = {}
    for split, files in (("train", binary.train), ("val", (binary.test,))):
        labels, pixels = [], []
        for name in files:
            label = rng.integers(0, binary.classes, per_file, dtype=np.uint8) if not every_class else \
                rng.permutation(np.arange(per_file) % binary.classes).astype(np.uint8)
            image = rng.integers(0, 256, (per_file, cifar.PIXELS), dtype=np.uint8)
            head = [rng.integers(0, cifar.COARSE_CLASSES, per_file, dtype=np.uint8)] if binary.label_bytes == 2 else []
            (folder / name).write_bytes(np.column_stack([*head, label, image]).tobytes())
            labels.append(label)
            pixels.append(image)
        written[split] = (np.concatenate(labels), np.concatenate(pixels))
    return written


@pytest.mark.parametrize("dataset", ["cifar10", "cifar100"])
def test_prepare_writes_class_folders_of_the_records(tmp_path, dataset):
    binary = cifar.BINARIES[dataset]
    written = _write_binary(tmp_path / "root" / binary.folder, dataset)
    result = run_flatmix("prepare", dataset, "--root", tmp_path / "root", "--out", tmp_path / "out")
    assert result.returncode == 0, result.stderr
    manifest = json.loads((tmp_path / "out" / "manifest.json").read_text())
    assert manifest["classes"] == binary.classes and manifest["md5_checked"] is False
    assert (manifest["train_images"], manifest["val_images"]) == (12 * len(binary.train), 12)
    labels, pixels = written["val"]
    first = Image.open(tmp_path / "out" / "val" / f"class_{labels[0]}" / "00000.png")
    assert np.array_equal(np.asarray(first), pixels[0].reshape(3, 32, 32).transpose(1, 2, 0))
    assert sorted(p.name for p in (tmp_path / "out" / "train").iterdir()) == sorted(
        f"class_{i}" for i in range(binary.classes))
    again = run_flatmix("prepare", dataset, "--root", tmp_path / "root", "--out", tmp_path / "out")  # its own folder
    assert again.returncode == 0, again.stderr


def test_the_archive_is_read_only_after_its_md5_matches(tmp_path, monkeypatch):
    """Given the .tar.gz, a wrong MD5 is refused naming the published one; the published MD5 (here the
    fixture's own) reads the members without extracting anything."""
    binary = cifar.BINARIES["cifar10"]
    _write_binary(tmp_path / "src" / binary.folder, "cifar10")
    (tmp_path / "root").mkdir()
    archive = tmp_path / "root" / binary.archive
    with tarfile.open(archive, "w:gz") as tar:
        tar.add(tmp_path / "src" / binary.folder, arcname=binary.folder)
    assert_one_line_error(run_flatmix("prepare", "cifar10", "--root", tmp_path / "root", "--out", tmp_path / "out"),
                          binary.archive, binary.md5)
    assert not (tmp_path / "out").exists()
    md5 = hashlib.md5(archive.read_bytes()).hexdigest()
    monkeypatch.setitem(cifar.BINARIES, "cifar10", cifar.Binary(**{**binary.__dict__, "md5": md5}))
    manifest = cifar.prepare("cifar10", tmp_path / "root", tmp_path / "out")
    assert manifest["md5_checked"] and manifest["train_images"] == 60
    assert sorted(p.name for p in (tmp_path / "root").iterdir()) == [binary.archive]  # nothing extracted


class Payload:
    """Unpickling this creates a marker file: the proof that a pickle was opened."""

    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return (open, (self.marker, "w"))


@pytest.mark.parametrize("layout", ["folder", "archive", "bare"])
def test_the_pickled_python_version_is_refused_unopened(tmp_path, layout):
    marker = tmp_path / "PWNED"
    root = tmp_path / "root"
    payload = pickle.dumps({"data": Payload(str(marker))})
    if layout == "folder":
        (root / "cifar-10-batches-py").mkdir(parents=True)
        (root / "cifar-10-batches-py" / "data_batch_1").write_bytes(payload)
        target = root
    elif layout == "archive":
        root.mkdir()
        (tmp_path / "data_batch_1").write_bytes(payload)
        with tarfile.open(root / "cifar-10-python.tar.gz", "w:gz") as tar:
            tar.add(tmp_path / "data_batch_1", arcname="cifar-10-batches-py/data_batch_1")
        target = root
    else:
        root.mkdir()
        (root / "data_batch_1").write_bytes(payload)
        target = root
    assert_one_line_error(run_flatmix("prepare", "cifar10", "--root", target, "--out", tmp_path / "out"),
                          "python version", "cifar-10-binary.tar.gz")
    assert not marker.exists() and not (tmp_path / "out").exists()


@pytest.mark.parametrize("name,damage,fragments", [
    ("test_batch.bin", lambda f: f.write_bytes(f.read_bytes()[:-100]), ["test_batch.bin", "3073-byte records"]),
    ("test_batch.bin", lambda f: f.write_bytes(b"\x0b" + f.read_bytes()[1:]),
     ["test_batch.bin", "record 0 has label 11"]),
    ("data_batch_3.bin", lambda f: f.unlink(), ["data_batch_3.bin", "missing"]),
], ids=["truncated", "label-out-of-range", "missing"])
def test_damaged_files_are_refused_in_one_line_naming_the_file(tmp_path, name, damage, fragments):
    folder = tmp_path / "root" / cifar.BINARIES["cifar10"].folder
    _write_binary(folder, "cifar10")
    damage(folder / name)
    assert_one_line_error(run_flatmix("prepare", "cifar10", "--root", tmp_path / "root", "--out", tmp_path / "out"),
                          *fragments)
    assert not (tmp_path / "out").exists()


def test_cifar100s_coarse_label_is_checked_too(tmp_path):
    binary = cifar.BINARIES["cifar100"]
    folder = tmp_path / binary.folder
    _write_binary(folder, "cifar100")
    data = bytearray((folder / "train.bin").read_bytes())
    data[binary.record] = 25  # record 1's coarse label
    (folder / "train.bin").write_bytes(bytes(data))
    with pytest.raises(FlatmixError, match="record 1 has coarse label 25"):
        cifar.prepare("cifar100", folder, tmp_path / "out")


def test_a_users_folder_is_not_taken_over(tmp_path):
    binary = cifar.BINARIES["cifar10"]
    _write_binary(tmp_path / "root" / binary.folder, "cifar10")
    (tmp_path / "out").mkdir()
    (tmp_path / "out" / "notes.txt").write_text("mine")
    assert_one_line_error(run_flatmix("prepare", "cifar10", "--root", tmp_path / "root", "--out", tmp_path / "out"),
                          "notes.txt")
    assert [p.name for p in (tmp_path / "out").iterdir()] == ["notes.txt"]


def test_an_output_inside_the_root_is_refused(tmp_path):
    binary = cifar.BINARIES["cifar10"]
    root = tmp_path / "my data $(touch PWNED)"
    _write_binary(root / binary.folder, "cifar10")
    assert_one_line_error(run_flatmix("prepare", "cifar10", "--root", root, "--out", root / "out"), "--out")
    assert sorted(p.name for p in root.iterdir()) == [binary.folder] and not (tmp_path / "PWNED").exists()
