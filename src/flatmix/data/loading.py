"""Image loading that copes with what real ImageNet holds: PNG bytes under a .JPEG name, CMYK and
grayscale JPEGs. PIL sniffs the format from the bytes, and every image is converted to RGB."""

import os

from PIL import Image
from torchvision.datasets import ImageFolder

from flatmix.data.imagenet100 import IMAGE_SUFFIXES


def open_rgb(path):
    """An RGB PIL image, whatever the file's real format and colour mode."""
    with open(path, "rb") as f:
        image = Image.open(f)
        return image.convert("RGB")


def image_folder(root, transform=None):
    """A class-per-folder data set (ImageNet-100's train/ or val/) loaded through open_rgb."""
    return ImageFolder(str(root), transform=transform, loader=open_rgb, is_valid_file=is_image_file)


def is_image_file(path):
    name = os.path.basename(path)
    return not name.startswith(".") and os.path.splitext(name)[1].lower() in IMAGE_SUFFIXES
