"""PASCAL VOC: check a VOCdevkit for the paper's splits (trainval07+12 for training, test07 for testing).

Every id a split lists must have its JPEG and its XML annotation, and every annotated object a VOC class.
"""

from pathlib import Path
import xml.etree.ElementTree as ET

from flatmix.data.classes import VOC_CLASSES
from flatmix.errors import FlatmixError

SPLITS = (("VOC2007", "trainval"), ("VOC2007", "test"), ("VOC2012", "trainval"))


def _read_split(root, year, split):
    listing = root / year / "ImageSets" / "Main" / f"{split}.txt"
    if not listing.is_file():
        raise FlatmixError(f"VOC split {year} {split}: {listing} is missing")
    ids = [line.split()[0] for line in listing.read_text().splitlines() if line.strip()]
    if not ids:
        raise FlatmixError(f"VOC split {year} {split}: {listing} lists no images")
    return ids


def _check_annotation(path):
    """Object counts per class of one annotation file."""
    try:
        tree = ET.parse(path)
    except ET.ParseError as e:
        raise FlatmixError(f"{path}: not valid XML ({e})") from None
    counts = {}
    if tree.find("size/width") is None or tree.find("size/height") is None:
        raise FlatmixError(f"{path}: no <size> with <width> and <height>")
    for obj in tree.iter("object"):
        name = (obj.findtext("name") or "").strip()
        if name not in VOC_CLASSES:
            raise FlatmixError(f"{path}: object class {name!r} is not one of the 20 VOC classes")
        if obj.find("bndbox") is None:
            raise FlatmixError(f"{path}: a {name} object has no <bndbox>")
        counts[name] = counts.get(name, 0) + 1
    return counts


def check(voc_root):
    """Validate the three splits; returns the manifest (images and objects per split and class)."""
    root = Path(voc_root).resolve()
    if not root.is_dir():
        raise FlatmixError(f"VOCdevkit {root} is not a directory")
    splits = {}
    for year, split in SPLITS:
        per_class, images = {}, _read_split(root, year, split)
        for image_id in images:
            for path in (root / year / "JPEGImages" / f"{image_id}.jpg",
                         root / year / "Annotations" / f"{image_id}.xml"):
                if not path.is_file():
                    raise FlatmixError(f"VOC split {year} {split} lists {image_id} but {path} is missing")
            for name, n in _check_annotation(root / year / "Annotations" / f"{image_id}.xml").items():
                per_class[name] = per_class.get(name, 0) + n
        splits[f"{year}/{split}"] = {"images": len(images), "objects": sum(per_class.values()),
                                     "per_class": dict(sorted(per_class.items()))}
    return {"root": str(root), "classes": list(VOC_CLASSES), "splits": splits}
