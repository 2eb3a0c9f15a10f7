"""The embedded data set: real layouts and formats, deterministic, and learnable."""

import hashlib
import xml.etree.ElementTree as ET

import numpy as np
from PIL import Image
from pycocotools.coco import COCO
from pycocotools import mask as mask_utils

from flatmix.data.classes import COCO_CATEGORIES, IMAGENET100, IMAGENET_OTHER, VOC_CLASSES
from flatmix.data.synth import synthesise
from conftest import assert_one_line_error, run_flatmix


def _tree_digest(root):
    h = hashlib.sha256()
    for path in sorted(p for p in root.rglob("*") if p.is_file()):
        h.update(str(path.relative_to(root)).encode())
        h.update(path.read_bytes())
    return h.hexdigest()


def test_imagenet_layout(synth_root):
    train = synth_root / "imagenet" / "train"
    wnids = sorted(p.name for p in train.iterdir())
    assert wnids == sorted(IMAGENET100 + IMAGENET_OTHER)
    assert len(set(IMAGENET100)) == 100
    assert all(len(list((synth_root / "imagenet" / "val" / w).glob("*.JPEG"))) == 1 for w in wnids)
    assert all(p.name.startswith("ILSVRC2012_val_") for p in (synth_root / "imagenet" / "val").rglob("*.JPEG"))
    # real ImageNet's odd files are there: PNG bytes named .JPEG, CMYK and grayscale JPEGs
    modes = {p.name.split("_")[-1]: Image.open(p) for p in train.rglob("*_*.JPEG")
             if p.stem.split("_")[-1] in ("png", "cmyk", "gray")}
    assert modes["png.JPEG"].format == "PNG"
    assert modes["cmyk.JPEG"].mode == "CMYK"
    assert modes["gray.JPEG"].mode == "L"


def test_voc_parses_with_real_classes_and_boxes_on_objects(synth_root):
    devkit = synth_root / "VOCdevkit"
    for year, split in (("VOC2007", "trainval"), ("VOC2007", "test"), ("VOC2012", "trainval")):
        ids = (devkit / year / "ImageSets" / "Main" / f"{split}.txt").read_text().split()
        assert len(ids) == 6
        for image_id in ids:
            root = ET.parse(devkit / year / "Annotations" / f"{image_id}.xml").getroot()
            image = np.asarray(Image.open(devkit / year / "JPEGImages" / f"{image_id}.jpg"))
            assert int(root.findtext("size/width")) == image.shape[1]
            assert int(root.findtext("size/height")) == image.shape[0]
            for obj in root.iter("object"):
                assert obj.findtext("name") in VOC_CLASSES
                assert obj.findtext("difficult") in ("0", "1")
                x0, y0, x1, y1 = (int(obj.findtext(f"bndbox/{k}")) for k in ("xmin", "ymin", "xmax", "ymax"))
                assert 1 <= x0 < x1 <= image.shape[1] and 1 <= y0 < y1 <= image.shape[0]
                # the object's colour stands out of the background inside its box
                inside = image[y0 - 1:y1, x0 - 1:x1].reshape(-1, 3).astype(float)
                assert inside.std(axis=0).max() > 10


def test_mmdet_reads_the_voc_set(synth_root):
    from mmdet.datasets import VOCDataset
    ds = VOCDataset(data_root=str(synth_root / "VOCdevkit"), ann_file="VOC2007/ImageSets/Main/test.txt",
                    data_prefix=dict(sub_data_root="VOC2007/"), pipeline=[], test_mode=True)
    assert len(ds) == 6
    assert all(len(ds.get_data_info(i)["instances"]) >= 1 for i in range(len(ds)))


def test_coco_loads_with_pycocotools_and_masks_match_pixels(synth_root):
    coco = COCO(str(synth_root / "coco" / "annotations" / "instances_val2017.json"))
    assert [(c["id"], c["name"]) for c in coco.loadCats(coco.getCatIds())] == \
        [(i, n) for i, n, _ in COCO_CATEGORIES]
    assert len(coco.getImgIds()) == 6
    for ann in coco.loadAnns(coco.getAnnIds()):
        info = coco.loadImgs(ann["image_id"])[0]
        image = np.asarray(Image.open(synth_root / "coco" / "val2017" / info["file_name"])).astype(float)
        mask = coco.annToMask(ann).astype(bool)
        assert mask.sum() == ann["area"] and ann["iscrowd"] == 0
        x, y, w, h = ann["bbox"]
        assert list(mask_utils.toBbox(coco.annToRLE(ann))) == [x, y, w, h]
        # the mask covers one flat-coloured object that stands out of the background (edges aside:
        # JPEG's chroma subsampling and the rasterisers differ there)
        inside = image[mask]
        assert (np.abs(inside - np.median(inside, 0)).max(1) < 40).mean() > 0.75
        background = image[~np.any([coco.annToMask(a) for a in coco.loadAnns(coco.getAnnIds(info["id"]))], 0)]
        assert np.abs(np.median(inside, 0) - np.median(background, 0)).max() > 30
    train = COCO(str(synth_root / "coco" / "annotations" / "instances_train2017.json"))
    assert not set(train.getImgIds()) & set(coco.getImgIds())


def test_same_seed_same_bytes_other_seed_differs(tmp_path):
    kw = dict(size=32, train_per_class=1, val_per_class=1, voc_images=2, coco_images=2)
    synthesise(tmp_path / "a", seed=3, **kw)
    synthesise(tmp_path / "b", seed=3, **kw)
    synthesise(tmp_path / "c", seed=4, **kw)
    assert _tree_digest(tmp_path / "a") == _tree_digest(tmp_path / "b")
    assert _tree_digest(tmp_path / "a") != _tree_digest(tmp_path / "c")


def test_classes_are_separable_by_simple_statistics(synth_root):
    """Learnable, not noise: a nearest-class-mean classifier on colour statistics beats chance widely."""
    def features(path):
        x = np.asarray(Image.open(path).convert("RGB")).astype(float) / 255
        return np.concatenate([x.mean((0, 1)), x.std((0, 1))])
    train, val = synth_root / "imagenet" / "train", synth_root / "imagenet" / "val"
    wnids = sorted(p.name for p in train.iterdir())
    means = np.stack([np.mean([features(p) for p in sorted((train / w).glob("*_[0-9].JPEG"))], 0)
                      for w in wnids])
    hits = [np.argmin(((means - features(p)) ** 2).sum(1)) == c
            for c, w in enumerate(wnids) for p in (val / w).glob("*.JPEG")]
    assert np.mean(hits) > 0.5  # chance is 1/106


def test_synth_cli_refuses_bad_sizes(tmp_path):
    assert_one_line_error(run_flatmix("synth", "--out", tmp_path, "--train-per-class", "0"),
                          "--train-per-class")
    assert not (tmp_path / "synth.json").exists()
