"""Bad data: VOC and COCO annotations `prepare` must refuse (one line naming the file and the id), the
cheap header check of image files, and pretraining that passes over images that do not decode."""

import json
from pathlib import Path
import re
import shutil

from PIL import Image
import pytest
import torch

from conftest import assert_one_line_error, run_flatmix
from flatmix.data.augment import AugmentedImages, EpochSampler, moco_transform
from flatmix.data.encoded import EncodedImages, collate, decode
from flatmix.data.gpu_augment import DeviceRecipe
from flatmix.data.loading import check_images, image_folder
from flatmix.distributed import Distributed
from flatmix.presets import DEFAULTS, PRESETS
from flatmix.pretrain import pretrain_batches
from flatmix.runconfig import resolve
from test_gpu_loader import TOLERANCE

# ---- VOC ------------------------------------------------------------------------------------------


def _voc_annotation(voc):
    """The annotation of the first image VOC2007 trainval lists."""
    image_id = (voc / "VOC2007" / "ImageSets" / "Main" / "trainval.txt").read_text().split()[0]
    return voc / "VOC2007" / "Annotations" / f"{image_id}.xml"


def _edit_xml(voc, pattern, replacement):
    path = _voc_annotation(voc)
    text, n = re.subn(pattern, replacement, path.read_text(), count=1)
    assert n == 1, pattern
    path.write_text(text)
    return path.name


def _swap_x(voc):
    path = _voc_annotation(voc)
    text = path.read_text()
    xmin, xmax = re.search(r"<xmin>(\d+)</xmin>", text).group(1), re.search(r"<xmax>(\d+)</xmax>", text).group(1)
    path.write_text(text.replace(f"<xmin>{xmin}</xmin>", f"<xmin>{xmax}</xmin>", 1)
                    .replace(f"<xmax>{xmax}</xmax>", f"<xmax>{xmin}</xmax>", 1))
    return path.name


def _xmax_beyond(voc, extra):
    width = re.search(r"<width>(\d+)</width>", _voc_annotation(voc).read_text()).group(1)
    return _edit_xml(voc, r"<xmax>\d+</xmax>", f"<xmax>{int(width) + extra}</xmax>")


def _add_split_line(voc, line):
    with open(voc / "VOC2007" / "ImageSets" / "Main" / "trainval.txt", "ab") as f:
        f.write(line)
    return "trainval.txt"


def _non_utf8_annotation(voc):
    path = _voc_annotation(voc)
    path.write_bytes(path.read_bytes().replace(b"<pose>Unspecified", b"<pose>Unsp\xe9cified", 1))
    return path.name


VOC_CASES = {
    "coordinate-not-a-number": (lambda voc: _edit_xml(voc, r"<ymin>\d+</ymin>", "<ymin>12px</ymin>"),
                                ["ymin", "'12px'", "not a number"]),
    "coordinate-nan": (lambda voc: _edit_xml(voc, r"<xmax>\d+</xmax>", "<xmax>nan</xmax>"), ["xmax", "not a number"]),
    "xmin-above-xmax": (_swap_x, ["object 1", "xmin > xmax"]),
    "xmax-beyond-width": (lambda voc: _xmax_beyond(voc, 2), ["object 1", "outside"]),
    "xmin-negative": (lambda voc: _edit_xml(voc, r"<xmin>\d+</xmin>", "<xmin>-1</xmin>"), ["object 1", "outside"]),
    "width-zero": (lambda voc: _edit_xml(voc, r"<width>\d+</width>", "<width>0</width>"),
                   ["width", "positive integers"]),
    "height-not-an-integer": (lambda voc: _edit_xml(voc, r"<height>\d+</height>", "<height>93.5</height>"),
                              ["'93.5'", "positive integers"]),
    "id-with-separator": (lambda voc: _add_split_line(voc, b"../../VOC2012/JPEGImages/2012_000001\n"),
                          ["'../../VOC2012/JPEGImages/2012_000001'", "plain file name"]),
    "id-with-dotdot": (lambda voc: _add_split_line(voc, b"..\n"), ["'..'", "plain file name"]),
    "split-not-utf8": (lambda voc: _add_split_line(voc, b"00\xff01\n"), ["not UTF-8"]),
    "annotation-not-utf8": (_non_utf8_annotation, ["not UTF-8"]),
}


@pytest.mark.parametrize("case", list(VOC_CASES))
def test_voc_bad_annotations_are_refused(synth_root, tmp_path, case):
    voc = tmp_path / "VOCdevkit"
    shutil.copytree(synth_root / "VOCdevkit", voc)
    corrupt, fragments = VOC_CASES[case]
    name = corrupt(voc)
    result = run_flatmix("prepare", "voc", "--root", voc, "--out", tmp_path / "m")
    assert result.returncode == 2
    assert_one_line_error(result, name, *fragments)
    assert not (tmp_path / "m" / "manifest.json").exists()


def test_voc_boxes_on_the_border_pass(synth_root, tmp_path):
    """0-based tools' boxes (xmin 0, xmax width + 1) are within the one-pixel tolerance."""
    voc = tmp_path / "VOCdevkit"
    shutil.copytree(synth_root / "VOCdevkit", voc)
    _edit_xml(voc, r"<xmin>\d+</xmin>", "<xmin>0</xmin>")
    _xmax_beyond(voc, 1)
    result = run_flatmix("prepare", "voc", "--root", voc, "--out", tmp_path / "m")
    assert result.returncode == 0, result.stderr


# ---- COCO -----------------------------------------------------------------------------------------


def _image(doc, **fields):
    doc["images"][0].update(fields)
    return f"image {doc['images'][0]['id']}"


def _annotation(doc, **fields):
    doc["annotations"][0].update(fields)
    return f"annotation {doc['annotations'][0]['id']}"


def _box(doc, make):
    """Sets the first annotation's bbox to make(bbox, its image's width, height)."""
    ann = doc["annotations"][0]
    image = next(im for im in doc["images"] if im["id"] == ann["image_id"])
    ann["bbox"] = make(ann["bbox"], image["width"], image["height"])
    return f"annotation {ann['id']}"


def _duplicate_image(doc, root):
    doc["images"].append(dict(doc["images"][0]))
    return f"image id {doc['images'][0]['id']}"


def _duplicate_annotation(doc, root):
    doc["annotations"][1]["id"] = doc["annotations"][0]["id"]
    return f"annotation id {doc['annotations'][0]['id']}"


def _first_file(doc):
    return doc["images"][0]["file_name"]


def _train(root):
    return json.loads((root / "annotations" / "instances_train2017.json").read_text())


COCO_CASES = {  # (corrupt(doc, root) -> the id the message must name, other fragments)
    "duplicate-image-id": (_duplicate_image, ["twice"]),
    "duplicate-annotation-id": (_duplicate_annotation, ["twice"]),
    "absolute-file-name": (lambda doc, root: _image(doc, file_name=str(root / "val2017" / _first_file(doc))),
                           ["file_name", "relative path"]),
    "dotdot-file-name": (lambda doc, root: _image(doc, file_name="../train2017/" + _first_file(_train(root))),
                         ["file_name", "relative path"]),
    "bbox-three-numbers": (lambda doc, root: _annotation(doc, bbox=[1, 2, 3]), ["4 finite numbers"]),
    "bbox-string": (lambda doc, root: _annotation(doc, bbox=["1", 2, 3, 4]), ["4 finite numbers"]),
    "bbox-nan": (lambda doc, root: _annotation(doc, bbox=[float("nan"), 2, 3, 4]), ["4 finite numbers"]),
    "bbox-negative-width": (lambda doc, root: _annotation(doc, bbox=[10, 10, -5, 4]), ["negative width"]),
    "bbox-beyond-right-edge": (lambda doc, root: _box(doc, lambda b, width, _: [b[0], b[1], width - b[0] + 2, b[3]]),
                               ["outside image"]),
    "bbox-above-top-edge": (lambda doc, root: _box(doc, lambda b, width, height: [b[0], -2, b[2], b[3]]),
                            ["outside image"]),
    "image-width-zero": (lambda doc, root: _image(doc, width=0), ["width 0", "positive integers"]),
    "image-height-string": (lambda doc, root: _image(doc, height="480"), ["'480'", "positive integers"]),
}


@pytest.mark.parametrize("case", list(COCO_CASES))
def test_coco_bad_annotations_are_refused(synth_root, tmp_path, case):
    root = tmp_path / "coco"
    shutil.copytree(synth_root / "coco", root)
    path = root / "annotations" / "instances_val2017.json"
    doc = json.loads(path.read_text())
    corrupt, fragments = COCO_CASES[case]
    which = corrupt(doc, root)
    path.write_text(json.dumps(doc))
    result = run_flatmix("prepare", "coco", "--root", root, "--out", tmp_path / "m")
    assert result.returncode == 2
    assert_one_line_error(result, "instances_val2017.json", which, *fragments)
    assert not (tmp_path / "m" / "manifest.json").exists()


@pytest.mark.parametrize("content,fragments", [
    (b'{"images": [{"file_name": "caf\xe9.jpg"}]}', ["not UTF-8", "0xe9 at offset 30"]),
    (b"[" * 100_000 + b"]" * 100_000, ["nested too deeply"]),
], ids=["not-utf8", "100k-deep"])
def test_coco_unreadable_json_is_refused(synth_root, tmp_path, content, fragments):
    root = tmp_path / "coco"
    shutil.copytree(synth_root / "coco", root)
    (root / "annotations" / "instances_val2017.json").write_bytes(content)
    result = run_flatmix("prepare", "coco", "--root", root, "--out", tmp_path / "m")
    assert result.returncode == 2
    assert_one_line_error(result, "instances_val2017.json", *fragments)


def test_coco_boxes_a_fraction_of_a_pixel_over_the_border_pass(synth_root, tmp_path):
    root = tmp_path / "coco"
    shutil.copytree(synth_root / "coco", root)
    path = root / "annotations" / "instances_val2017.json"
    doc = json.loads(path.read_text())
    _box(doc, lambda b, width, height: [-0.5, b[1], width + 0.9, b[3]])  # x + w = width + 0.4
    path.write_text(json.dumps(doc))
    result = run_flatmix("prepare", "coco", "--root", root, "--out", tmp_path / "m")
    assert result.returncode == 0, result.stderr


def test_non_utf8_class_list_is_refused(synth_root, tmp_path):
    classes = tmp_path / "classes.txt"
    classes.write_bytes(b"n01440764\n\xffn01443537\n")
    result = run_flatmix("prepare", "imagenet100", "--imagenet-root", synth_root / "imagenet", "--out", tmp_path / "o",
                         "--class-list", classes)
    assert result.returncode == 2
    assert_one_line_error(result, str(classes), "not UTF-8")


# ---- image files --------------------------------------------------------------------------------------


def test_header_check_finds_empty_short_and_truncated_header_files(tmp_path):
    Image.new("RGB", (64, 48), (10, 200, 30)).save(tmp_path / "valid.JPEG", format="JPEG")
    data = (tmp_path / "valid.JPEG").read_bytes()
    (tmp_path / "empty.JPEG").write_bytes(b"")
    (tmp_path / "two.JPEG").write_bytes(data[:2])
    (tmp_path / "header.JPEG").write_bytes(data[:100])  # cut inside the header
    (tmp_path / "data.JPEG").write_bytes(data[:-50])  # the header whole, the data cut short
    (tmp_path / "text.JPEG").write_text("not an image")
    paths = [tmp_path / f"{n}.JPEG" for n in ("valid", "empty", "two", "header", "data", "text")]
    bad = check_images(paths, progress_every=0)
    assert [p.name for p, _ in bad] == ["empty.JPEG", "two.JPEG", "header.JPEG", "text.JPEG"]
    assert all(reason for _, reason in bad)
    assert "data.JPEG" in [p.name for p, _ in check_images(paths, decode=True)]
    assert check_images(paths[:1]) == []


def test_header_check_prints_progress_on_long_lists(tmp_path, capsys):
    Image.new("RGB", (8, 8)).save(tmp_path / "a.JPEG", format="JPEG")
    check_images([tmp_path / "a.JPEG"] * 600, progress_every=0)
    lines = capsys.readouterr().err.splitlines()
    assert lines and all(re.fullmatch(r"flatmix: checked \d+/600 images \(\d+/s, about \d+m\d\ds left\)", line)
                         for line in lines), lines


# ---- training over images that do not decode --------------------------------------------------------


@pytest.fixture
def broken_imagenet(synth_root, tmp_path):
    """The synthetic ImageNet with one truncated JPEG (its header whole), one empty file and one JPEG whose
    Huffman table is garbled (header and end marker whole: it passes the GPU loader's worker checks), all
    three drawn in the first epoch of the smoke presets."""
    root = tmp_path / "imagenet"
    shutil.copytree(synth_root / "imagenet", root)
    paths = [path for path, _ in image_folder(root / "train").samples]
    cfg = resolve(DEFAULTS, PRESETS, preset="smoke-moco")
    drawn = set(EpochSampler(len(paths), cfg["train"]["batch_size"], 0, 1, cfg["seed"]))
    classes = sorted({Path(p).parent.name for p in paths})
    truncated, empty, garbled = (Path(next(p for i, p in enumerate(paths) if i in drawn and f"/{w}/" in p))
                                 for w in classes[10:40:10])
    truncated.write_bytes(truncated.read_bytes()[:-100])
    Image.open(truncated).close()  # its header still reads
    empty.write_bytes(b"")
    data = bytearray(garbled.read_bytes())
    at = data.find(b"\xff\xc4")  # DHT
    data[at + 4:at + 30] = b"\xff" * 26
    garbled.write_bytes(bytes(data))
    return root, [truncated, empty, garbled]


def _batches(root, loader, workers):
    cfg = resolve(DEFAULTS, PRESETS, preset="smoke-moco",
                  sets=["model.arch=resnet_tiny", f"data.loader={loader}", f"data.workers={workers}"])
    return pretrain_batches(cfg, Distributed("cpu"), root / "train")


@pytest.mark.parametrize("loader", ["pil", "gpu"])
def test_loaders_pass_over_undecodable_images_and_count_them(broken_imagenet, capfd, loader):
    root, broken = broken_imagenet
    batches = _batches(root, loader, workers=2)
    epochs = [[torch.cat(views) for *views, _ in batches.epoch(epoch)] for epoch in range(2)]
    assert batches.skipped_images() == 3
    warnings = [line for line in capfd.readouterr().err.splitlines() if line.startswith("flatmix: warning:")]
    assert len(warnings) == 3, warnings  # once per file, not per epoch or worker
    assert all(any(str(p) in w for w in warnings) for p in broken), warnings
    inline = _batches(root, loader, workers=0)
    for epoch, expected in enumerate(epochs):  # the stand-ins do not depend on the workers
        assert all(torch.equal(a, torch.cat(views)) for a, (*views, _) in zip(expected, inline.epoch(epoch)))


def test_both_loaders_use_the_same_stand_in(broken_imagenet):
    """Sample i of an unreadable file: the next readable file, augmented under i's seed, on both paths."""
    root, broken = broken_imagenet
    transform = moco_transform(32, "v1")
    reference = AugmentedImages(root / "train", transform, 2, seed=4)
    ours = EncodedImages(root / "train", DeviceRecipe(transform), 2, seed=4)
    index = [ours.paths.index(str(p)) for p in broken[:2]]  # the truncated and the empty file
    payloads, encoded, params, _ = collate([ours[i] for i in index])
    assert not encoded.any()
    out = ours.recipe(decode(payloads, encoded, torch.device("cpu")), params)
    for v in range(2):
        expected = torch.stack([reference[i][v] for i in index])
        assert (out[v] - expected).abs().mean() < TOLERANCE["moco-v1"]


def test_decode_gives_a_grey_stand_in_for_a_jpeg_no_decoder_reads(broken_imagenet):
    root, broken = broken_imagenet
    ours = EncodedImages(root / "train", DeviceRecipe(moco_transform(32, "v1")), 1, seed=0)
    payloads, encoded, _, _ = collate([ours[ours.paths.index(str(broken[2]))]])
    assert encoded.tolist() == [True]
    with pytest.raises(OSError):
        decode(payloads, encoded, torch.device("cpu"))
    told = []
    image, = decode(payloads, encoded, torch.device("cpu"), lambda i, error: told.append(i))
    assert told == [0] and image.shape == (3, 32, 32) and (image == 128).all()


@pytest.mark.parametrize("loader", ["pil", "gpu"])
def test_pretraining_finishes_over_undecodable_images(broken_imagenet, tmp_path, loader):
    root, broken = broken_imagenet
    result = run_flatmix("pretrain", "--preset", "smoke-moco", "--set", f"data.root={root}", "--out", tmp_path / "run",
                         "--set", "model.arch=resnet_tiny", "--set", "train.epochs=1", "--set", f"data.loader={loader}")
    assert result.returncode == 0, result.stderr[-3000:]
    # each broken image warned about once by training and once by the kNN monitor, which reads it too
    warnings = [line for line in result.stderr.splitlines() if line.startswith("flatmix: warning:")]
    by_knn = [w for w in warnings if "; skipped by kNN, " in w]
    for said in (by_knn, [w for w in warnings if w not in by_knn]):
        assert len(said) == 3 and all(any(str(p) in w for w in said) for p in broken), "\n".join(warnings)
    metrics = [json.loads(line) for line in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    assert [m for m in metrics if "loss" in m][-1]["skipped_images"] == 3


def test_prepare_leaves_out_images_whose_header_does_not_read(broken_imagenet, tmp_path):
    """The empty file fails the header check and is left out (named in a warning and in the manifest); the
    truncated and garbled files have whole headers and are left to training's skip."""
    root, broken = broken_imagenet
    result = run_flatmix("prepare", "imagenet100", "--imagenet-root", root, "--out", tmp_path / "in100")
    assert result.returncode == 0, result.stderr
    manifest = json.loads((tmp_path / "in100" / "manifest.json").read_text())
    assert [u["path"] for u in manifest["unreadable"]] == [str(broken[1])]
    assert str(broken[1]) in result.stderr and "left out" in result.stderr
    wnid = broken[1].parent.name
    assert not (tmp_path / "in100" / "train" / wnid / broken[1].name).exists()
    assert manifest["per_class"][wnid]["train"] == len(list((root / "train" / wnid).iterdir())) - 1
