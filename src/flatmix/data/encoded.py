"""The GPU loader's worker side and its decoder: workers read each image's bytes and draw its views'
augmentation parameters; the whole batch is then decoded at once on the GPU (nvJPEG through torchvision).

Only 3-channel JPEGs go to the GPU decoder (a JPEG it still refuses is decoded by PIL). The few other
files real ImageNet holds (a PNG under a .JPEG name, CMYK and grayscale JPEGs) are decoded to RGB by the
worker, through the same open_rgb as the PIL path.
"""

import io
from pathlib import Path

from PIL import Image
import torch
from torch.utils.data import Dataset
from torchvision.io import ImageReadMode, decode_jpeg
from torchvision.transforms.functional import pil_to_tensor

from flatmix.data.augment import sample_rng
from flatmix.data.loading import image_folder, open_rgb
from flatmix.errors import FlatmixError


class EncodedImages(Dataset):
    """Training images as (payload, encoded, params [views, FIELDS], index): payload is the file's bytes
    (encoded True) or its decoded [3, H, W] uint8 pixels; params come from `recipe.draw` under the
    sample's (seed, epoch, index) seed, so they equal the PIL path's."""

    def __init__(self, root, recipe, views, seed):
        self.paths = [path for path, _ in image_folder(root).samples]
        self.recipe, self.views, self.seed, self.epoch = recipe, views, seed, 0

    def set_epoch(self, epoch):
        self.epoch = epoch

    def __len__(self):
        return len(self.paths)

    def __getitem__(self, index):
        path = self.paths[index]
        data = Path(path).read_bytes()
        try:
            with Image.open(io.BytesIO(data)) as image:  # reads the header only
                width, height = image.size
                encoded = image.format == "JPEG" and image.mode == "RGB"
        except OSError as e:
            raise FlatmixError(f"{path}: not a readable image ({e})") from None
        if encoded:
            payload = torch.frombuffer(bytearray(data), dtype=torch.uint8)
        else:
            payload = pil_to_tensor(open_rgb(path))
        with sample_rng(self.seed, self.epoch, index):
            params = torch.stack([self.recipe.draw(height, width) for _ in range(self.views)])
        return payload, encoded, params, index


def collate(samples):
    """A batch of EncodedImages samples: (payloads, encoded [B] bool, params [B, views, FIELDS], index [B])."""
    payloads, encoded, params, index = zip(*samples)
    return list(payloads), torch.tensor(encoded), torch.stack(params), torch.tensor(index)


def decode(payloads, encoded, device):
    """[3, H, W] uint8 RGB tensors on `device`: the JPEGs decoded in one batched call there, the rest moved."""
    images = [None] * len(payloads)
    jpegs = [i for i, e in enumerate(encoded.tolist()) if e]
    if jpegs:
        try:
            decoded = decode_jpeg([payloads[i] for i in jpegs], mode=ImageReadMode.RGB, device=device)
        except RuntimeError:  # one JPEG the decoder refuses: decode one by one, the refused ones by PIL
            decoded = [_decode_one(payloads[i], device) for i in jpegs]
        for i, image in zip(jpegs, decoded):
            images[i] = image
    for i, payload in enumerate(payloads):
        if images[i] is None:
            images[i] = payload.to(device, non_blocking=True)
    return images


def _decode_one(payload, device):
    try:
        return decode_jpeg(payload, mode=ImageReadMode.RGB, device=device)
    except RuntimeError:
        with Image.open(io.BytesIO(payload.numpy().tobytes())) as image:
            return pil_to_tensor(image.convert("RGB")).to(device)
