"""Data set preparation: ImageNet-100 from both ImageNet layouts, VOC and COCO checks, bad inputs."""

import json
import os
import shutil

from PIL import Image
import pytest

from flatmix.data.classes import IMAGENET100, IMAGENET_OTHER
from conftest import assert_one_line_error, run_flatmix

WNIDS = IMAGENET100 + IMAGENET_OTHER


def _jpeg(path, colour=(120, 30, 200)):
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new("RGB", (8, 8), colour).save(path, format="JPEG")


def make_imagenet(root, val_layout, kaggle=False):
    """An ImageNet-shaped tree: class c has 2 + c % 3 train images and 1 + c % 2 val images, plus the
    odd files real trees carry (non-image files, hidden files, PNG bytes named .JPEG)."""
    images = root / "ILSVRC" / "Data" / "CLS-LOC" if kaggle else root
    expected = {}
    rows, n = [], 0
    for c, wnid in enumerate(WNIDS):
        for i in range(2 + c % 3):
            _jpeg(images / "train" / wnid / f"{wnid}_{i}.JPEG")
        (images / "train" / wnid / ".DS_Store").write_bytes(b"\0junk")
        (images / "train" / wnid / "notes.txt").write_text("not an image")
        for _ in range(1 + c % 2):
            n += 1
            name = f"ILSVRC2012_val_{n:08d}"
            sub = images / "val" / (wnid if val_layout == "folders" else "")
            _jpeg(sub / f"{name}.JPEG")
            rows.append(f"{name},{wnid} 1 2 30 40 {wnid} 5 6 7 8")
        expected[wnid] = {"train": 2 + c % 3, "val": 1 + c % 2}
    Image.new("RGB", (8, 8)).save(images / "train" / WNIDS[0] / f"{WNIDS[0]}_png.JPEG", format="PNG")
    expected[WNIDS[0]]["train"] += 1
    if val_layout == "flat":
        (root / "LOC_val_solution.csv").write_text("ImageId,PredictionString\n" + "\n".join(rows) + "\n")
    return {w: expected[w] for w in IMAGENET100}


@pytest.mark.parametrize("val_layout,kaggle", [("folders", False), ("flat", False), ("flat", True)])
def test_imagenet100_from_both_val_layouts(tmp_path, val_layout, kaggle):
    expected = make_imagenet(tmp_path / "imagenet", val_layout, kaggle)
    before = sorted(str(p) for p in (tmp_path / "imagenet").rglob("*"))
    out = tmp_path / "in100"
    result = run_flatmix("prepare", "imagenet100", "--imagenet-root", tmp_path / "imagenet", "--out", out)
    assert result.returncode == 0, result.stderr
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["classes"] == 100
    assert manifest["per_class"] == expected
    assert manifest["train_images"] == sum(v["train"] for v in expected.values())
    assert manifest["val_images"] == sum(v["val"] for v in expected.values())
    assert sorted(p.name for p in (out / "train").iterdir()) == sorted(IMAGENET100)
    assert sorted(p.name for p in (out / "val").iterdir()) == sorted(IMAGENET100)
    for split in ("train", "val"):
        links = [p for p in (out / split).rglob("*") if not p.is_dir()]
        assert len(links) == manifest[f"{split}_images"]
        assert all(p.is_symlink() and os.path.isabs(os.readlink(p)) and p.resolve().is_file() for p in links)
    # the source tree is untouched
    assert sorted(str(p) for p in (tmp_path / "imagenet").rglob("*")) == before


def test_imagenet100_rerun_replaces_previous_output(tmp_path):
    make_imagenet(tmp_path / "imagenet", "folders")
    out = tmp_path / "in100"
    assert run_flatmix("prepare", "imagenet100", "--imagenet-root", tmp_path / "imagenet", "--out", out).returncode == 0
    (tmp_path / "imagenet" / "train" / IMAGENET100[5] / f"{IMAGENET100[5]}_0.JPEG").unlink()
    assert run_flatmix("prepare", "imagenet100", "--imagenet-root", tmp_path / "imagenet", "--out", out).returncode == 0
    assert not (out / "train" / IMAGENET100[5] / f"{IMAGENET100[5]}_0.JPEG").is_symlink()
    assert not (out / ".staging").exists()


def test_imagenet100_names_every_missing_and_empty_class(tmp_path):
    make_imagenet(tmp_path / "imagenet", "folders")
    shutil.rmtree(tmp_path / "imagenet" / "train" / IMAGENET100[3])
    shutil.rmtree(tmp_path / "imagenet" / "val" / IMAGENET100[7])
    for p in (tmp_path / "imagenet" / "train" / IMAGENET100[9]).glob("*.JPEG"):
        p.unlink()
    out = tmp_path / "in100"
    result = run_flatmix("prepare", "imagenet100", "--imagenet-root", tmp_path / "imagenet", "--out", out)
    assert_one_line_error(result, f"train/{IMAGENET100[3]}", f"val/{IMAGENET100[7]}", f"train/{IMAGENET100[9]}",
                          "missing", "no images")
    assert not (out / "manifest.json").exists()


def test_imagenet100_flat_val_without_solution_or_with_missing_image(tmp_path):
    make_imagenet(tmp_path / "imagenet", "flat")
    solution = tmp_path / "imagenet" / "LOC_val_solution.csv"
    text = solution.read_text()
    solution.unlink()
    result = run_flatmix("prepare", "imagenet100", "--imagenet-root", tmp_path / "imagenet", "--out", tmp_path / "o")
    assert_one_line_error(result, "LOC_val_solution.csv")
    solution.write_text(text)
    (tmp_path / "imagenet" / "val" / "ILSVRC2012_val_00000002.JPEG").unlink()
    result = run_flatmix("prepare", "imagenet100", "--imagenet-root", tmp_path / "imagenet", "--out", tmp_path / "o")
    assert_one_line_error(result, "ILSVRC2012_val_00000002")


def test_imagenet100_custom_class_list_and_bad_entries(tmp_path):
    make_imagenet(tmp_path / "imagenet", "folders")
    classes = tmp_path / "classes.txt"
    classes.write_text(f"{IMAGENET_OTHER[0]}\n{IMAGENET_OTHER[1]}\n")
    out = tmp_path / "o"
    result = run_flatmix("prepare", "imagenet100", "--imagenet-root", tmp_path / "imagenet", "--out", out,
                         "--class-list", classes)
    assert result.returncode == 0, result.stderr
    assert json.loads((out / "manifest.json").read_text())["classes"] == 2
    classes.write_text("n01440764\nbanana\n")
    result = run_flatmix("prepare", "imagenet100", "--imagenet-root", tmp_path / "imagenet", "--out", out,
                         "--class-list", classes)
    assert_one_line_error(result, "banana")


def test_imagenet100_refuses_missing_root_and_output_inside_source(tmp_path):
    assert_one_line_error(run_flatmix("prepare", "imagenet100", "--imagenet-root", tmp_path / "nope",
                                      "--out", tmp_path / "o"), str(tmp_path / "nope"))
    make_imagenet(tmp_path / "imagenet", "folders")
    assert_one_line_error(run_flatmix("prepare", "imagenet100", "--imagenet-root", tmp_path / "imagenet",
                                      "--out", tmp_path / "imagenet" / "in100"), "inside")


def test_prepare_synthetic_imagenet(synth_root, tmp_path):
    result = run_flatmix("prepare", "imagenet100", "--imagenet-root", synth_root / "imagenet", "--out", tmp_path)
    assert result.returncode == 0, result.stderr
    manifest = json.loads((tmp_path / "manifest.json").read_text())
    assert (manifest["classes"], manifest["train_images"], manifest["val_images"]) == (100, 203, 100)


@pytest.fixture
def voc_copy(synth_root, tmp_path):
    shutil.copytree(synth_root / "VOCdevkit", tmp_path / "VOCdevkit")
    return tmp_path / "VOCdevkit"


def test_voc_manifest(voc_copy, tmp_path):
    result = run_flatmix("prepare", "voc", "--root", voc_copy, "--out", tmp_path / "m")
    assert result.returncode == 0, result.stderr
    manifest = json.loads((tmp_path / "m" / "manifest.json").read_text())
    assert set(manifest["splits"]) == {"VOC2007/trainval", "VOC2007/test", "VOC2012/trainval"}
    assert all(s["images"] == 6 and s["objects"] >= 6 for s in manifest["splits"].values())


def test_voc_split_naming_a_missing_image(voc_copy, tmp_path):
    (voc_copy / "VOC2007" / "JPEGImages" / "000008.jpg").unlink()
    result = run_flatmix("prepare", "voc", "--root", voc_copy, "--out", tmp_path / "m")
    assert_one_line_error(result, "000008", "VOC2007", "test")
    assert not (tmp_path / "m" / "manifest.json").exists()


def test_voc_missing_split_and_bad_class(voc_copy, tmp_path):
    xml = voc_copy / "VOC2012" / "Annotations" / "2012_000002.xml"
    xml.write_text(xml.read_text().replace("<name>", "<name>x", 1))
    assert_one_line_error(run_flatmix("prepare", "voc", "--root", voc_copy, "--out", tmp_path / "m"),
                          "2012_000002.xml", "not one of the 20 VOC classes")
    (voc_copy / "VOC2007" / "ImageSets" / "Main" / "test.txt").unlink()
    assert_one_line_error(run_flatmix("prepare", "voc", "--root", voc_copy, "--out", tmp_path / "m"), "test.txt")


@pytest.fixture
def coco_copy(synth_root, tmp_path):
    shutil.copytree(synth_root / "coco", tmp_path / "coco")
    return tmp_path / "coco"


def test_coco_manifest(coco_copy, tmp_path):
    result = run_flatmix("prepare", "coco", "--root", coco_copy, "--out", tmp_path / "m")
    assert result.returncode == 0, result.stderr
    manifest = json.loads((tmp_path / "m" / "manifest.json").read_text())
    assert manifest["splits"]["val2017"]["images"] == 6
    assert manifest["splits"]["train2017"]["categories"] == 80


def test_coco_broken_json_names_file_and_position(coco_copy, tmp_path):
    ann = coco_copy / "annotations" / "instances_val2017.json"
    ann.write_text(ann.read_text()[:-10])
    result = run_flatmix("prepare", "coco", "--root", coco_copy, "--out", tmp_path / "m")
    assert_one_line_error(result, "instances_val2017.json", "not valid JSON", "line 1")
    assert not (tmp_path / "m" / "manifest.json").exists()


def test_coco_missing_image_and_dangling_ids(coco_copy, tmp_path):
    doc = json.loads((coco_copy / "annotations" / "instances_train2017.json").read_text())
    first = doc["images"][0]["file_name"]
    (coco_copy / "train2017" / first).unlink()
    assert_one_line_error(run_flatmix("prepare", "coco", "--root", coco_copy, "--out", tmp_path / "m"), first)
    doc["annotations"][0]["category_id"] = 12  # a gap in COCO's ids
    (coco_copy / "annotations" / "instances_train2017.json").write_text(json.dumps(doc))
    assert_one_line_error(run_flatmix("prepare", "coco", "--root", coco_copy, "--out", tmp_path / "m"), "category id 12")
