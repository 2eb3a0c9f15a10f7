"""COCO 2017: check the instance annotations of train2017 and val2017 against the images on disk."""

import json
from pathlib import Path

from flatmix.errors import FlatmixError

SPLITS = ("train2017", "val2017")


def _load(path):
    try:
        with open(path) as f:
            doc = json.load(f)
    except FileNotFoundError:
        raise FlatmixError(f"COCO annotations {path} are missing") from None
    except json.JSONDecodeError as e:
        raise FlatmixError(f"{path}: not valid JSON (line {e.lineno} column {e.colno}: {e.msg})") from None
    for key in ("images", "annotations", "categories"):
        if not isinstance(doc, dict) or not isinstance(doc.get(key), list):
            raise FlatmixError(f"{path}: no '{key}' list")
    return doc


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
            images = {im["id"]: im["file_name"] for im in doc["images"]}
            categories = {c["id"] for c in doc["categories"]}
            for ann in doc["annotations"]:
                if ann["image_id"] not in images:
                    raise FlatmixError(f"{path}: annotation {ann['id']} refers to image id "
                                       f"{ann['image_id']}, which is not in 'images'")
                if ann["category_id"] not in categories:
                    raise FlatmixError(f"{path}: annotation {ann['id']} has category id "
                                       f"{ann['category_id']}, which is not in 'categories'")
        except (KeyError, TypeError) as e:
            raise FlatmixError(f"{path}: an entry lacks the field {e}") from None
        missing = [name for name in images.values() if not (root / split / name).is_file()]
        if missing:
            raise FlatmixError(f"{path} references {len(missing)} image(s) missing from {root / split}, "
                               f"first {root / split / missing[0]}")
        splits[split] = {"images": len(images), "annotations": len(doc["annotations"]),
                         "categories": len(categories)}
    return {"root": str(root), "splits": splits}
