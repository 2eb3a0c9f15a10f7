"""COCO 2017: check the instance annotations of train2017 and val2017 against the images on disk.

Ids must be unique, every file_name a relative path inside its split folder, every bbox [x, y, w, h] four
finite numbers with w, h >= 0 inside its image. Real COCO boxes are the extents of polygons drawn in float
coordinates, and some overshoot the border by a fraction of a pixel: BORDER_TOLERANCE pixels are allowed.
"""

import json
import math
from pathlib import Path, PurePosixPath

from flatmix.data.classes import read_utf8
from flatmix.errors import FlatmixError

SPLITS = ("train2017", "val2017")
BORDER_TOLERANCE = 1.0  # pixels


def _load(path):
    try:
        doc = json.loads(read_utf8(path, "COCO annotations"))
    except json.JSONDecodeError as e:
        raise FlatmixError(f"{path}: not valid JSON (line {e.lineno} column {e.colno}: {e.msg})") from None
    except RecursionError:
        raise FlatmixError(f"{path}: JSON nested too deeply to be COCO annotations") from None
    for key in ("images", "annotations", "categories"):
        if not isinstance(doc, dict) or not isinstance(doc.get(key), list):
            raise FlatmixError(f"{path}: no '{key}' list")
    return doc


def _images(path, entries, folder):
    """{image id: (file_name, width, height)}, each id once, each file inside `folder`."""
    images = {}
    for im in entries:
        image_id, name, width, height = im["id"], im["file_name"], im["width"], im["height"]
        if image_id in images:
            raise FlatmixError(f"{path}: image id {image_id} appears twice in 'images'")
        if not (_positive_int(width) and _positive_int(height)):
            raise FlatmixError(f"{path}: image {image_id} has width {width!r} and height {height!r}, "
                               f"not positive integers")
        if not isinstance(name, str) or PurePosixPath(name).is_absolute() or ".." in PurePosixPath(name).parts:
            raise FlatmixError(f"{path}: image {image_id} file_name {name!r} is not a relative path inside {folder}")
        images[image_id] = (name, width, height)
    return images


def _check_annotations(path, entries, images, categories):
    seen = set()
    for ann in entries:
        ann_id, image_id = ann["id"], ann["image_id"]
        if ann_id in seen:
            raise FlatmixError(f"{path}: annotation id {ann_id} appears twice in 'annotations'")
        seen.add(ann_id)
        if image_id not in images:
            raise FlatmixError(f"{path}: annotation {ann_id} refers to image id {image_id}, which is not in 'images'")
        if ann["category_id"] not in categories:
            raise FlatmixError(f"{path}: annotation {ann_id} has category id {ann['category_id']}, "
                               f"which is not in 'categories'")
        _check_box(path, ann_id, ann["bbox"], image_id, *images[image_id][1:])


def _check_box(path, ann_id, box, image_id, width, height):
    if not (isinstance(box, list) and len(box) == 4 and all(_finite(v) for v in box)):
        raise FlatmixError(f"{path}: annotation {ann_id} bbox {box!r:.80} is not 4 finite numbers")
    x, y, w, h = box
    if w < 0 or h < 0:
        raise FlatmixError(f"{path}: annotation {ann_id} bbox {box} has a negative width or height")
    slack = BORDER_TOLERANCE
    if x < -slack or y < -slack or x + w > width + slack or y + h > height + slack:
        raise FlatmixError(f"{path}: annotation {ann_id} bbox {box} lies outside image {image_id} "
                           f"({width}x{height})")


def _finite(value):
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def _positive_int(value):
    return isinstance(value, int) and not isinstance(value, bool) and value > 0


def check(coco_root):
    """Validate both splits; returns the manifest (images, annotations, categories per split)."""
    root = Path(coco_root).resolve()
    if not root.is_dir():
        raise FlatmixError(f"COCO root {root} is not a directory")
    splits = {}
    for split in SPLITS:
        path = root / "annotations" / f"instances_{split}.json"
        doc = _load(path)
        try:
            images = _images(path, doc["images"], root / split)
            categories = {c["id"] for c in doc["categories"]}
            _check_annotations(path, doc["annotations"], images, categories)
        except KeyError as e:
            raise FlatmixError(f"{path}: an entry lacks the field {e}") from None
        except TypeError as e:
            raise FlatmixError(f"{path}: an entry is malformed ({e})") from None
        missing = [name for name, _, _ in images.values() if not (root / split / name).is_file()]
        if missing:
            raise FlatmixError(f"{path} references {len(missing)} image(s) missing from {root / split}, "
                               f"first {root / split / missing[0]}")
        splits[split] = {"images": len(images), "annotations": len(doc["annotations"]),
                         "categories": len(categories)}
    return {"root": str(root), "splits": splits}
