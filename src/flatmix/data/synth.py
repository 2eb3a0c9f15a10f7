"""The embedded data set: a miniature ImageNet, VOCdevkit and COCO 2017 in their real on-disk formats.

Everything a real root holds that the pipeline reads is here (folder layout, file names, XML and JSON
fields, the real class tables), so the same code paths run on it as on the real data. Images are
learnable, not noise: each ImageNet class has its own colours, shape and texture; detection objects are
drawn exactly where their boxes and polygon masks say. Every image comes from its own generator seeded
by (seed, data set, index), so one seed always gives byte-identical files.

The miniature ImageNet also carries the odd files real ImageNet has (a PNG saved as .JPEG, a CMYK JPEG,
a grayscale JPEG) so that the loader is exercised on them.
"""

import json
import math
from pathlib import Path
import xml.etree.ElementTree as ET

import numpy as np
from PIL import Image, ImageDraw
from pycocotools import mask as mask_utils

from flatmix import atomic, paths
from flatmix.data.classes import COCO_CATEGORIES, IMAGENET100, IMAGENET_OTHER, VOC_CLASSES
from flatmix.errors import FlatmixError
from flatmix.progress import Progress

# Stream ids that keep the generators of different parts independent of each other.
_CLASS_STYLE, _IMAGENET, _VOC, _COCO = 1, 2, 3, 4
_SHAPES = ("ellipse", "rectangle", "triangle", "diamond", "ring", "cross")


def _rng(seed, *stream):
    return np.random.default_rng(np.random.SeedSequence([seed, *stream]))


# ---------------------------------------------------------------------------------------------- ImageNet


def _class_style(seed, index):
    """What makes a class recognisable: colours, a shape and a texture (orientation and frequency)."""
    r = _rng(seed, _CLASS_STYLE, index)
    return {
        "background": r.uniform(30, 225, 3),
        "foreground": r.uniform(0, 255, 3),
        "shape": _SHAPES[index % len(_SHAPES)],
        "angle": r.uniform(0, math.pi),
        "frequency": r.uniform(0.05, 0.5),
    }


def _draw_shape(draw, shape, box, fill):
    x0, y0, x1, y1 = box
    cx, cy = (x0 + x1) / 2, (y0 + y1) / 2
    if shape == "ellipse":
        draw.ellipse(box, fill=fill)
    elif shape == "rectangle":
        draw.rectangle(box, fill=fill)
    elif shape == "triangle":
        draw.polygon([(cx, y0), (x1, y1), (x0, y1)], fill=fill)
    elif shape == "diamond":
        draw.polygon([(cx, y0), (x1, cy), (cx, y1), (x0, cy)], fill=fill)
    elif shape == "ring":
        w = max(2, (x1 - x0) // 5)
        draw.ellipse(box, outline=fill, width=w)
    elif shape == "cross":
        w = max(2, (x1 - x0) // 4)
        draw.rectangle((cx - w / 2, y0, cx + w / 2, y1), fill=fill)
        draw.rectangle((x0, cy - w / 2, x1, cy + w / 2), fill=fill)


def _classification_image(style, r, size):
    """A class's texture over its background colour, with its shape in the class's foreground colour."""
    yy, xx = np.mgrid[0:size, 0:size].astype(np.float32)
    angle = style["angle"] + r.normal(0, 0.15)
    wave = np.sin(style["frequency"] * (np.cos(angle) * xx + np.sin(angle) * yy) + r.uniform(0, 2 * np.pi))
    background = style["background"] + r.normal(0, 12, 3)
    pixels = background + 35 * wave[..., None] + r.normal(0, 8, (size, size, 3))
    image = Image.fromarray(np.clip(pixels, 0, 255).astype(np.uint8))
    side = int(size * r.uniform(0.35, 0.75))
    x0, y0 = (int(v) for v in r.integers(0, size - side + 1, 2))
    fill = tuple(int(v) for v in np.clip(style["foreground"] + r.normal(0, 12, 3), 0, 255))
    _draw_shape(ImageDraw.Draw(image), style["shape"], (x0, y0, x0 + side, y0 + side), fill)
    return image


def _save_jpeg(image, path, **kw):
    image.save(path, format="JPEG", quality=90, **kw)


def write_imagenet(out, seed, size, train_per_class, val_per_class):
    """DIR/imagenet/{train,val}/<wnid>/*.JPEG: the ImageNet-100 classes plus a few other wnids."""
    wnids = sorted(IMAGENET100 + IMAGENET_OTHER)
    root = Path(out) / "imagenet"
    val_counter = 0
    total = len(wnids) * (train_per_class + val_per_class)
    with Progress("synth imagenet", total, unit="img") as progress:
        for c, wnid in enumerate(wnids):
            style = _class_style(seed, c)
            for split, count in (("train", train_per_class), ("val", val_per_class)):
                folder = root / split / wnid
                folder.mkdir(parents=True, exist_ok=True)
                for i in progress.batches(range(count)):
                    r = _rng(seed, _IMAGENET, c, split == "val", i)
                    image = _classification_image(style, r, size)
                    if split == "train":
                        name = f"{wnid}_{i}.JPEG"
                    else:
                        val_counter += 1
                        name = f"ILSVRC2012_val_{val_counter:08d}.JPEG"
                    _save_jpeg(image, folder / name)
                    progress.show_count("image")
    _write_imagenet_odd_files(root, seed, size)
    return {"classes": len(wnids), "train_per_class": train_per_class, "val_per_class": val_per_class}


def _write_imagenet_odd_files(root, seed, size):
    """Real ImageNet's odd files, in ImageNet-100 classes: PNG bytes named .JPEG, CMYK, grayscale."""
    wnids = sorted(IMAGENET100 + IMAGENET_OTHER)
    odd = {"png": IMAGENET100[0], "cmyk": IMAGENET100[1], "gray": IMAGENET100[2]}
    for kind, wnid in odd.items():
        c = wnids.index(wnid)
        image = _classification_image(_class_style(seed, c), _rng(seed, _IMAGENET, c, 2, 0), size)
        path = root / "train" / wnid / f"{wnid}_{kind}.JPEG"
        if kind == "png":
            image.save(path, format="PNG")
        elif kind == "cmyk":
            _save_jpeg(image.convert("CMYK"), path)
        else:
            _save_jpeg(image.convert("L"), path)


# ------------------------------------------------------------------------------------------ detection


def _category_style(index):
    """Detection categories: a distinct hue each (golden-ratio spaced) and a polygon with 3..8 corners."""
    hue = (index * 0.618034) % 1.0
    rgb = np.array(Image.new("HSV", (1, 1), (int(255 * hue), 200, 230)).convert("RGB").getpixel((0, 0)))
    return {"colour": rgb, "corners": 3 + index % 6}


def _place_objects(r, width, height, count):
    """Up to `count` non-overlapping square cells (x0, y0, side) for objects."""
    cells = []
    for _ in range(20 * count):
        if len(cells) == count:
            break
        side = int(r.uniform(0.25, 0.55) * min(width, height))
        x0, y0 = int(r.integers(0, width - side)), int(r.integers(0, height - side))
        if all(x0 + side <= a or a + s <= x0 or y0 + side <= b or b + s <= y0 for a, b, s in cells):
            cells.append((x0, y0, side))
    return cells


def _polygon(r, x0, y0, side, corners):
    """A convex polygon inscribed in the cell, with jittered rotation: a list of (x, y) floats."""
    cx, cy, radius = x0 + side / 2, y0 + side / 2, side / 2 - 1
    start = r.uniform(0, 2 * math.pi)
    angles = start + np.arange(corners) * 2 * math.pi / corners + r.uniform(-0.2, 0.2, corners)
    return [(float(cx + radius * math.cos(a)), float(cy + radius * math.sin(a))) for a in angles]


def _detection_image(r, width, height, categories, styles, objects_per_image):
    """An image with objects of the given category indices; returns the image and (index, polygon) pairs."""
    pixels = r.uniform(60, 200, 3) + r.normal(0, 10, (height, width, 3))
    image = Image.fromarray(np.clip(pixels, 0, 255).astype(np.uint8))
    draw = ImageDraw.Draw(image)
    objects = []
    for (x0, y0, side), k in zip(_place_objects(r, width, height, objects_per_image), categories):
        polygon = _polygon(r, x0, y0, side, styles[k]["corners"])
        colour = tuple(int(v) for v in np.clip(styles[k]["colour"] + r.normal(0, 8, 3), 0, 255))
        draw.polygon(polygon, fill=colour)
        objects.append((k, polygon))
    return image, objects


def _image_size(r, size):
    return int(r.integers(3 * size, 4 * size + 1)), int(r.integers(2 * size, 3 * size + 1))


def _categories_for(r, image_index, per_image, count):
    """Category indices for one image, cycling through all categories so each one appears."""
    start = (image_index * per_image) % count
    return [(start + j) % count for j in range(per_image)] if r.random() < 0.8 else \
        list(r.integers(0, count, per_image))


def _rasterise(polygon, width, height):
    """The polygon's COCO form and its mask as RLE, which the evaluators and the boxes both derive from."""
    flat = [round(v, 2) for p in polygon for v in p]
    return flat, mask_utils.merge(mask_utils.frPyObjects([flat], height, width))


def _voc_xml(folder, image_id, width, height, objects, difficult):
    ann = ET.Element("annotation")
    ET.SubElement(ann, "folder").text = folder
    ET.SubElement(ann, "filename").text = f"{image_id}.jpg"
    source = ET.SubElement(ann, "source")
    ET.SubElement(source, "database").text = "flatmix synthetic VOC"
    size = ET.SubElement(ann, "size")
    for tag, value in (("width", width), ("height", height), ("depth", 3)):
        ET.SubElement(size, tag).text = str(value)
    ET.SubElement(ann, "segmented").text = "0"
    for (k, polygon), hard in zip(objects, difficult):
        x, y, w, h = (int(v) for v in mask_utils.toBbox(_rasterise(polygon, width, height)[1]))
        obj = ET.SubElement(ann, "object")
        ET.SubElement(obj, "name").text = VOC_CLASSES[k]
        ET.SubElement(obj, "pose").text = "Unspecified"
        ET.SubElement(obj, "truncated").text = "0"
        ET.SubElement(obj, "difficult").text = str(int(hard))
        box = ET.SubElement(obj, "bndbox")  # VOC boxes are 1-based and inclusive
        for tag, value in (("xmin", x + 1), ("ymin", y + 1), ("xmax", x + w), ("ymax", y + h)):
            ET.SubElement(box, tag).text = str(value)
    ET.indent(ann)
    return ET.tostring(ann, encoding="unicode") + "\n"


def write_voc(out, seed, size, images):
    """DIR/VOCdevkit/VOC2007 (trainval, test) and VOC2012 (trainval), `images` per split."""
    styles = [_category_style(k) for k in range(len(VOC_CLASSES))]
    splits = (("VOC2007", "trainval", "{:06d}", 1), ("VOC2007", "test", "{:06d}", 1 + images),
              ("VOC2012", "trainval", "2012_{:06d}", 1))
    with Progress("synth voc", 3 * images, unit="img") as progress:
        for s, (year, split, pattern, first) in enumerate(splits):
            base = Path(out) / "VOCdevkit" / year
            for sub in ("Annotations", "JPEGImages", "ImageSets/Main"):
                (base / sub).mkdir(parents=True, exist_ok=True)
            ids = []
            for i in progress.batches(range(images)):
                r = _rng(seed, _VOC, s, i)
                image_id = pattern.format(first + i)
                width, height = _image_size(r, size)
                per_image = int(r.integers(1, 4))
                cats = _categories_for(r, i, per_image, len(VOC_CLASSES))
                image, objects = _detection_image(r, width, height, cats, styles, per_image)
                difficult = r.random(len(objects)) < 0.1
                _save_jpeg(image, base / "JPEGImages" / f"{image_id}.jpg")
                (base / "Annotations" / f"{image_id}.xml").write_text(
                    _voc_xml(year, image_id, width, height, objects, difficult))
                ids.append(image_id)
                progress.show_count("image")
            main = base / "ImageSets" / "Main"
            (main / f"{split}.txt").write_text("".join(f"{i}\n" for i in ids))
            if split == "trainval":  # the devkit's train/val halves of trainval
                (main / "train.txt").write_text("".join(f"{i}\n" for i in ids[::2]))
                (main / "val.txt").write_text("".join(f"{i}\n" for i in ids[1::2]))
    return {"images_per_split": images}


def write_coco(out, seed, size, images):
    """DIR/coco/{train2017,val2017} and annotations/instances_{train,val}2017.json, `images` per split."""
    styles = [_category_style(k) for k in range(len(COCO_CATEGORIES))]
    root = Path(out) / "coco"
    (root / "annotations").mkdir(parents=True, exist_ok=True)
    categories = [{"id": i, "name": n, "supercategory": s} for i, n, s in COCO_CATEGORIES]
    image_id, ann_id = 0, 0
    with Progress("synth coco", 2 * images, unit="img") as progress:
        for s, split in enumerate(("train2017", "val2017")):
            (root / split).mkdir(parents=True, exist_ok=True)
            entries, annotations = [], []
            for i in progress.batches(range(images)):
                r = _rng(seed, _COCO, s, i)
                image_id += 1
                width, height = _image_size(r, size)
                per_image = int(r.integers(1, 5))
                cats = _categories_for(r, i, per_image, len(COCO_CATEGORIES))
                image, objects = _detection_image(r, width, height, cats, styles, per_image)
                file_name = f"{image_id:012d}.jpg"
                _save_jpeg(image, root / split / file_name)
                entries.append({"id": image_id, "file_name": file_name, "width": width, "height": height,
                                "license": 1, "date_captured": "2026-01-01 00:00:00"})
                for k, polygon in objects:
                    ann_id += 1
                    flat, rle = _rasterise(polygon, width, height)
                    x, y, w, h = (float(v) for v in mask_utils.toBbox(rle))
                    annotations.append({"id": ann_id, "image_id": image_id,
                                        "category_id": COCO_CATEGORIES[k][0], "segmentation": [flat],
                                        "area": float(mask_utils.area(rle)), "bbox": [x, y, w, h],
                                        "iscrowd": 0})
                progress.show_count("image")
            doc = {"info": {"description": "flatmix synthetic COCO 2017", "version": "1.0", "year": 2026},
                   "licenses": [{"id": 1, "name": "CC0", "url": ""}],
                   "images": entries, "annotations": annotations, "categories": categories}
            atomic.write_text(root / "annotations" / f"instances_{split}.json", json.dumps(doc))
    return {"images_per_split": images}


SYNTH_ENTRIES = ("imagenet", "VOCdevkit", "coco", "synth.json")


def synthesise(out, seed=0, size=64, train_per_class=8, val_per_class=4, voc_images=16, coco_images=16):
    """Write the whole embedded data set under `out`; DIR/synth.json, written last, marks it complete."""
    for name, value in (("--size", size), ("--train-per-class", train_per_class),
                        ("--val-per-class", val_per_class), ("--voc-images", voc_images),
                        ("--coco-images", coco_images)):
        if value < 1:
            raise FlatmixError(f"{name} must be at least 1, got {value}")
    if size < 16:
        raise FlatmixError(f"--size must be at least 16 pixels, got {size}")
    out = paths.claim_folder(out, "synth", SYNTH_ENTRIES)
    (out / "synth.json").unlink(missing_ok=True)
    for part in SYNTH_ENTRIES[:3]:  # a rerun replaces, never mixes with, old files
        paths.remove_owned_tree(out, part)
    summary = {"seed": seed, "size": size,
               "imagenet": write_imagenet(out, seed, size, train_per_class, val_per_class),
               "voc": write_voc(out, seed, size, voc_images),
               "coco": write_coco(out, seed, size, coco_images)}
    atomic.write_json(out / "synth.json", summary)
    return summary
