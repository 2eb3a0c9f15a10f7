"""The GPU loader's worker side and its decoder: workers read each image's bytes and draw its views'
augmentation parameters; the whole batch is then decoded at once on the GPU (nvJPEG through torchvision).

Only complete 3-channel JPEGs go to the GPU decoder (one it still refuses is decoded by PIL). The other
files real ImageNet holds (a PNG under a .JPEG name, CMYK and grayscale JPEGs) and a JPEG cut short (no
end marker) are decoded to RGB by the worker, through the same open_rgb as the PIL path; one that does not
decode is passed over for the same stand-in as on the PIL path, decoded by the worker too. So every JPEG
sent on is the file of its own index.
"""

import io
from pathlib import Path

from PIL import Image
import torch
from torch.utils.data import Dataset
from torchvision.io import ImageReadMode, decode_jpeg
from torchvision.transforms.functional import pil_to_tensor

from flatmix.data.augment import sample_rng
from flatmix.data.loading import PIL_ERRORS, SkipUnreadable, UnreadableImage, image_folder, open_rgb, pil_errors

JPEG_END = b"\xff\xd9"  # the EOI marker, the last two bytes of a complete JPEG


class EncodedImages(Dataset):
    """Training images as (payload, encoded, params [views, FIELDS], index): payload is the file's bytes
    (encoded True) or its decoded [3, H, W] uint8 pixels; params come from `recipe.draw` under the
    sample's (seed, epoch, index) seed, so they equal the PIL path's."""

    def __init__(self, root, recipe, views, seed):
        self.paths = [path for path, _ in image_folder(root).samples]
        self.files = SkipUnreadable(self.paths)
        self.recipe, self.views, self.seed, self.epoch = recipe, views, seed, 0

    def set_epoch(self, epoch):
        self.epoch = epoch

    def __len__(self):
        return len(self.paths)

    def __getitem__(self, index):
        try:
            payload, encoded, (width, height) = _read(self.paths[index])
        except UnreadableImage as e:
            self.files.flag(index, e, "skipped, the next readable image stands in")
            payload, encoded = pil_to_tensor(self.files.load(index + 1, open_rgb)), False
            height, width = payload.shape[1:]
        with sample_rng(self.seed, self.epoch, index):
            params = torch.stack([self.recipe.draw(height, width) for _ in range(self.views)])
        return payload, encoded, params, index


def _read(path):
    """(payload, encoded, (width, height)): a complete RGB JPEG's bytes, or any other image's pixels."""
    with pil_errors(path):
        data = Path(path).read_bytes()
        with Image.open(io.BytesIO(data)) as image:  # reads the header only
            size = image.size
            encoded = image.format == "JPEG" and image.mode == "RGB" and data.endswith(JPEG_END)
    if encoded:
        return torch.frombuffer(bytearray(data), dtype=torch.uint8), True, size
    return pil_to_tensor(open_rgb(path)), False, size


def collate(samples):
    """A batch of EncodedImages samples: (payloads, encoded [B] bool, params [B, views, FIELDS], index [B])."""
    payloads, encoded, params, index = zip(*samples)
    return list(payloads), torch.tensor(encoded), torch.stack(params), torch.tensor(index)


def decode(payloads, encoded, device, unreadable=None):
    """[3, H, W] uint8 RGB tensors on `device`: the JPEGs decoded in one batched call there, the rest moved.
    A JPEG that neither that decoder nor PIL reads (corrupt data behind a sound header and end marker)
    comes out mid-grey at its header's size once `unreadable(i, error)` is told; without it, it raises."""
    images = [None] * len(payloads)
    jpegs = [i for i, e in enumerate(encoded.tolist()) if e]
    if jpegs:
        try:
            decoded = decode_jpeg([payloads[i] for i in jpegs], mode=ImageReadMode.RGB, device=device)
        except RuntimeError:  # one JPEG the decoder refuses: decode one by one, the refused ones by PIL
            decoded = [_decode_one(payloads[i], device, i, unreadable) for i in jpegs]
        for i, image in zip(jpegs, decoded):
            images[i] = image
    for i, payload in enumerate(payloads):
        if images[i] is None:
            images[i] = payload.to(device, non_blocking=True)
    return images


def _decode_one(payload, device, i, unreadable):
    """One JPEG: by the device's decoder, else by PIL, else (told to `unreadable`) mid-grey."""
    try:
        return decode_jpeg(payload, mode=ImageReadMode.RGB, device=device)
    except RuntimeError:
        pass
    with Image.open(io.BytesIO(payload.numpy().tobytes())) as image:  # its header read in the worker
        try:
            return pil_to_tensor(image.convert("RGB")).to(device)
        except PIL_ERRORS as e:
            if unreadable is None:
                raise
            unreadable(i, e)
            return torch.full((3, image.height, image.width), 128, dtype=torch.uint8, device=device)
