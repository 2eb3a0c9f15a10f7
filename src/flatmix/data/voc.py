"""PASCAL VOC: check a VOCdevkit for the paper's splits (trainval07+12 for training, test07 for testing).

Every id a split lists must be a plain file name with its JPEG and its XML annotation; every annotated
object a VOC class with a box inside the image. VOC boxes are 1-based and inclusive (1 <= xmin <= xmax <=
width); BORDER_TOLERANCE pixels of slack admit the VOC-format sets that labelling tools write 0-based or
with xmax = width + 1, and still refuse a box that is really elsewhere (swapped width and height, another
image's annotation).
"""

import math
from pathlib import Path
import xml.etree.ElementTree as ET

from flatmix.data.classes import VOC_CLASSES, read_utf8
from flatmix.errors import FlatmixError

SPLITS = (("VOC2007", "trainval"), ("VOC2007", "test"), ("VOC2012", "trainval"))
BORDER_TOLERANCE = 1  # pixels
BOX_TAGS = ("xmin", "ymin", "xmax", "ymax")


def _read_split(root, year, split):
    listing = root / year / "ImageSets" / "Main" / f"{split}.txt"
    if not listing.is_file():
        raise FlatmixError(f"VOC split {year} {split}: {listing} is missing")
    ids = [line.split()[0] for line in read_utf8(listing, "VOC split list").splitlines() if line.strip()]
    if not ids:
        raise FlatmixError(f"VOC split {year} {split}: {listing} lists no images")
    for image_id in ids:
        if "/" in image_id or "\\" in image_id or ".." in image_id:
            raise FlatmixError(f"VOC split {year} {split}: {listing} lists {image_id!r}, which is not a plain "
                               f"file name (no path separators or '..')")
    return ids


def _check_annotation(path):
    """Object counts per class of one annotation file."""
    try:
        root = ET.fromstring(read_utf8(path, "VOC annotation"))
    except ET.ParseError as e:
        raise FlatmixError(f"{path}: not valid XML ({e})") from None
    width, height = _size(path, root)
    counts = {}
    for number, obj in enumerate(root.iter("object"), start=1):
        name = (obj.findtext("name") or "").strip()
        if name not in VOC_CLASSES:
            raise FlatmixError(f"{path}: object class {name!r} is not one of the 20 VOC classes")
        _check_box(path, f"object {number} ({name})", obj.find("bndbox"), width, height)
        counts[name] = counts.get(name, 0) + 1
    return counts


def _size(path, root):
    """(width, height) of the annotation's <size>: positive integers."""
    texts = [root.findtext(f"size/{tag}") for tag in ("width", "height")]
    if None in texts:
        raise FlatmixError(f"{path}: no <size> with <width> and <height>")
    try:
        width, height = int(texts[0]), int(texts[1])
    except ValueError:
        width = height = 0
    if width < 1 or height < 1:
        raise FlatmixError(f"{path}: <size> width {texts[0]!r} and height {texts[1]!r} are not positive integers")
    return width, height


def _check_box(path, what, box, width, height):
    if box is None:
        raise FlatmixError(f"{path}: {what} has no <bndbox>")
    texts = [box.findtext(tag) for tag in BOX_TAGS]
    values = [_number(text) for text in texts]
    for tag, text, value in zip(BOX_TAGS, texts, values):
        if value is None:
            raise FlatmixError(f"{path}: {what} <bndbox> {tag} is {text!r}, not a number")
    xmin, ymin, xmax, ymax = values
    shown = f"({', '.join(t.strip() for t in texts)})"
    if xmin > xmax or ymin > ymax:
        raise FlatmixError(f"{path}: {what} box {shown} has xmin > xmax or ymin > ymax")
    slack = BORDER_TOLERANCE
    if xmin < 1 - slack or ymin < 1 - slack or xmax > width + slack or ymax > height + slack:
        raise FlatmixError(f"{path}: {what} box {shown} lies outside the {width}x{height} image "
                           f"(VOC boxes are 1-based: 1 <= xmin, xmax <= width)")


def _number(text):
    """float(text) where text is a finite number, else None."""
    try:
        value = float(text)
    except (TypeError, ValueError):
        return None
    return value if math.isfinite(value) else None


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
