"""Class tables of the three data sets, kept in the package so users need nothing but their data.

- ImageNet-100: the 100 wnids of the CMC code base (the paper's appendix A), in their published order.
- PASCAL VOC: the 20 classes in the order of the VOC devkit (and of mmdetection's VOCDataset).
- COCO 2017: the 80 instance categories with their real (non-contiguous) ids, names and supercategories.
"""

from importlib import resources
from pathlib import Path
import re

from flatmix.errors import FlatmixError

WNID = re.compile(r"^n\d{8}$")


def read_utf8(path, what="file"):
    """The text of a UTF-8 file; FlatmixError naming it where it cannot be read or is not UTF-8, which
    the locale's default codec would otherwise turn into a traceback."""
    try:
        return Path(path).read_bytes().decode("utf-8")
    except OSError as e:
        raise FlatmixError(f"cannot read {what} {path}: {e.strerror}") from None
    except UnicodeDecodeError as e:
        raise FlatmixError(f"{what} {path} is not UTF-8 text (byte {e.object[e.start]:#04x} at offset "
                           f"{e.start})") from None


def read_class_list(path=None):
    """The wnids of a class-list file (one per line or whitespace-separated); default: ImageNet-100."""
    if path is None:
        text = resources.files("flatmix.resources").joinpath("imagenet100.txt").read_text()
        where = "imagenet100.txt"
    else:
        text, where = read_utf8(path, "class list"), str(path)
    wnids = text.split()
    for w in wnids:
        if not WNID.match(w):
            raise FlatmixError(f"class list {where}: {w!r} is not a wnid like n01440764")
    if len(set(wnids)) != len(wnids):
        dup = sorted({w for w in wnids if wnids.count(w) > 1})
        raise FlatmixError(f"class list {where}: duplicate wnid {dup[0]}")
    if not wnids:
        raise FlatmixError(f"class list {where} is empty")
    return wnids


IMAGENET100 = read_class_list()

# Real ImageNet-1K wnids outside ImageNet-100 (tench, goldfish, great white shark, tiger shark,
# hammerhead, electric ray): the synthetic ImageNet holds a few so that class selection is exercised.
IMAGENET_OTHER = ["n01440764", "n01443537", "n01484850", "n01491361", "n01494475", "n01496331"]

VOC_CLASSES = (
    "aeroplane", "bicycle", "bird", "boat", "bottle", "bus", "car", "cat", "chair", "cow",
    "diningtable", "dog", "horse", "motorbike", "person", "pottedplant", "sheep", "sofa", "train",
    "tvmonitor",
)

# (id, name, supercategory) exactly as in instances_*2017.json.
COCO_CATEGORIES = (
    (1, "person", "person"), (2, "bicycle", "vehicle"), (3, "car", "vehicle"),
    (4, "motorcycle", "vehicle"), (5, "airplane", "vehicle"), (6, "bus", "vehicle"),
    (7, "train", "vehicle"), (8, "truck", "vehicle"), (9, "boat", "vehicle"),
    (10, "traffic light", "outdoor"), (11, "fire hydrant", "outdoor"), (13, "stop sign", "outdoor"),
    (14, "parking meter", "outdoor"), (15, "bench", "outdoor"), (16, "bird", "animal"),
    (17, "cat", "animal"), (18, "dog", "animal"), (19, "horse", "animal"), (20, "sheep", "animal"),
    (21, "cow", "animal"), (22, "elephant", "animal"), (23, "bear", "animal"), (24, "zebra", "animal"),
    (25, "giraffe", "animal"), (27, "backpack", "accessory"), (28, "umbrella", "accessory"),
    (31, "handbag", "accessory"), (32, "tie", "accessory"), (33, "suitcase", "accessory"),
    (34, "frisbee", "sports"), (35, "skis", "sports"), (36, "snowboard", "sports"),
    (37, "sports ball", "sports"), (38, "kite", "sports"), (39, "baseball bat", "sports"),
    (40, "baseball glove", "sports"), (41, "skateboard", "sports"), (42, "surfboard", "sports"),
    (43, "tennis racket", "sports"), (44, "bottle", "kitchen"), (46, "wine glass", "kitchen"),
    (47, "cup", "kitchen"), (48, "fork", "kitchen"), (49, "knife", "kitchen"), (50, "spoon", "kitchen"),
    (51, "bowl", "kitchen"), (52, "banana", "food"), (53, "apple", "food"), (54, "sandwich", "food"),
    (55, "orange", "food"), (56, "broccoli", "food"), (57, "carrot", "food"), (58, "hot dog", "food"),
    (59, "pizza", "food"), (60, "donut", "food"), (61, "cake", "food"), (62, "chair", "furniture"),
    (63, "couch", "furniture"), (64, "potted plant", "furniture"), (65, "bed", "furniture"),
    (67, "dining table", "furniture"), (70, "toilet", "furniture"), (72, "tv", "electronic"),
    (73, "laptop", "electronic"), (74, "mouse", "electronic"), (75, "remote", "electronic"),
    (76, "keyboard", "electronic"), (77, "cell phone", "electronic"), (78, "microwave", "appliance"),
    (79, "oven", "appliance"), (80, "toaster", "appliance"), (81, "sink", "appliance"),
    (82, "refrigerator", "appliance"), (84, "book", "indoor"), (85, "clock", "indoor"),
    (86, "vase", "indoor"), (87, "scissors", "indoor"), (88, "teddy bear", "indoor"),
    (89, "hair drier", "indoor"), (90, "toothbrush", "indoor"),
)
