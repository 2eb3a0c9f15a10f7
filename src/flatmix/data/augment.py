"""The pretraining augmentations of the reference code bases, ending in normalisation (mixing comes after).

- MoCo v1 (facebookresearch/moco, CMC's MoCo 'CJ'): RandomResizedCrop(scale 0.2-1), RandomGrayscale 0.2,
  ColorJitter(0.4, 0.4, 0.4, 0.4), flip, ImageNet mean/std.
- MoCo v2 ('aug+'): ColorJitter(0.4, 0.4, 0.4, 0.1) with p 0.8, grayscale 0.2, Gaussian blur
  sigma 0.1-2 with p 0.5, flip.
- MoCo CIFAR ('cifar', the MoCo CIFAR demo's and Un-Mix's CIFAR scripts'): RandomResizedCrop(scale
  0.08-1), flip, ColorJitter(0.4, 0.4, 0.4, 0.1) with p 0.8, grayscale 0.2; normalised by ImageNet's
  mean/std where the demo uses CIFAR's (every evaluation then reads every backbone the same way).
- CMC (its ImageNet recipe): RandomResizedCrop(scale 0.08-1), flip, then the image in YCbCr (scikit-image's
  convention, Y in 16-235) or Lab, normalised by the CMC code base's constants to about [-1, 1].

Each sample's random parameters come from a generator seeded by (seed, epoch, index), so a resumed
run sees exactly the crops an uninterrupted run would, whatever the number of loader workers.
"""

from contextlib import contextmanager

import numpy as np
import torch
from torch.utils.data import Dataset, Sampler
from torchvision import transforms as T

from flatmix.data.loading import SkipUnreadable, image_folder, open_rgb

IMAGENET_MEAN, IMAGENET_STD = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)

# scikit-image's rgb2ycbcr on [0, 1] RGB, then + (16, 128, 128)
_YCBCR_FROM_RGB = torch.tensor([[65.481, 128.553, 24.966], [-37.797, -74.203, 112.0], [112.0, -93.786, -18.214]])
_YCBCR_OFFSET = torch.tensor([16.0, 128.0, 128.0])
CMC_NORMALISE = {
    "YCbCr": ((116.151, 121.080, 132.342), (109.500, 111.855, 111.964)),
    "Lab": ((50.0, (-86.183 + 98.233) / 2, (-107.857 + 94.478) / 2),
            (50.0, (86.183 + 98.233) / 2, (107.857 + 94.478) / 2)),
}


def rgb_to_ycbcr(rgb):
    """[..., 3, H, W] RGB in [0, 1] to YCbCr as scikit-image computes it (Y 16-235, Cb/Cr 16-240)."""
    return (torch.einsum("ij,...jhw->...ihw", _YCBCR_FROM_RGB.to(rgb.device, rgb.dtype), rgb)
            + _YCBCR_OFFSET.to(rgb.device, rgb.dtype).view(3, 1, 1))


def rgb_to_lab(rgb):
    """[..., 3, H, W] sRGB in [0, 1] to CIE Lab (D65), as scikit-image's rgb2lab."""
    linear = torch.where(rgb > 0.04045, ((rgb + 0.055) / 1.055) ** 2.4, rgb / 12.92)
    xyz_from_rgb = torch.tensor([[0.412453, 0.357580, 0.180423], [0.212671, 0.715160, 0.072169],
                                 [0.019334, 0.119193, 0.950227]], device=rgb.device, dtype=rgb.dtype)
    xyz = torch.einsum("ij,...jhw->...ihw", xyz_from_rgb, linear)
    xyz = xyz / torch.tensor([0.95047, 1.0, 1.08883], device=rgb.device, dtype=rgb.dtype).view(3, 1, 1)
    f = torch.where(xyz > 0.008856, xyz ** (1 / 3), 7.787 * xyz + 16 / 116)
    x, y, z = f.unbind(-3)
    return torch.stack([116 * y - 16, 500 * (x - y), 200 * (y - z)], dim=-3)


def moco_transform(size, version):
    if version == "cifar":
        return T.Compose([T.RandomResizedCrop(size), T.RandomHorizontalFlip(),
                          T.RandomApply([T.ColorJitter(0.4, 0.4, 0.4, 0.1)], p=0.8), T.RandomGrayscale(p=0.2),
                          T.ToTensor(), T.Normalize(IMAGENET_MEAN, IMAGENET_STD)])
    if version == "v1":
        colour = [T.RandomGrayscale(p=0.2), T.ColorJitter(0.4, 0.4, 0.4, 0.4)]
    else:
        colour = [T.RandomApply([T.ColorJitter(0.4, 0.4, 0.4, 0.1)], p=0.8), T.RandomGrayscale(p=0.2),
                  T.RandomApply([T.GaussianBlur(kernel_size=_blur_kernel(size), sigma=(0.1, 2.0))], p=0.5)]
    return T.Compose([T.RandomResizedCrop(size, scale=(0.2, 1.0)), *colour, T.RandomHorizontalFlip(),
                      T.ToTensor(), T.Normalize(IMAGENET_MEAN, IMAGENET_STD)])


def _blur_kernel(size):
    """PIL's GaussianBlur(radius=sigma) has no kernel size; an odd ~10% of the image covers sigma <= 2."""
    return max(3, int(0.1 * size) // 2 * 2 + 1)


def cmc_transform(size, colour):
    convert = rgb_to_ycbcr if colour == "YCbCr" else rgb_to_lab
    mean, std = CMC_NORMALISE[colour]
    return T.Compose([T.RandomResizedCrop(size, scale=(0.08, 1.0)), T.RandomHorizontalFlip(), T.ToTensor(),
                      T.Lambda(convert), T.Normalize(mean, std)])


class AugmentedImages(Dataset):
    """Training images as (views..., index), each view augmented with parameters seeded by (seed, epoch,
    index): two views for MoCo, one colour tensor for CMC and the linear probe. A file that does not
    decode is passed over for the next readable one (SkipUnreadable), under the same seed."""

    def __init__(self, root, transform, views, seed):
        self.images = image_folder(root)
        self.files = SkipUnreadable([path for path, _ in self.images.samples])
        self.transform, self.views, self.seed, self.epoch = transform, views, seed, 0

    def set_epoch(self, epoch):
        self.epoch = epoch

    def __len__(self):
        return len(self.images)

    def __getitem__(self, index):
        image = self.files.load(index, open_rgb)
        with sample_rng(self.seed, self.epoch, index):
            views = [self.transform(image) for _ in range(self.views)]
        return (*views, index)


@contextmanager
def sample_rng(seed, epoch, index):
    """torch's global RNG seeded for one sample's augmentation in one epoch, restored afterwards: the
    PIL and the GPU loader draw that sample's parameters under it."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(int(np.random.SeedSequence([seed, epoch, index]).generate_state(1)[0]))
        yield


class EpochSampler(Sampler):
    """This rank's indices of one epoch: a permutation seeded by (seed, epoch), cut to whole global
    batches, dealt round-robin to the ranks, starting after the batches already done (for resume)."""

    def __init__(self, size, global_batch, rank, world, seed):
        self.size, self.global_batch, self.rank, self.world, self.seed = size, global_batch, rank, world, seed
        self.epoch, self.start_step = 0, 0

    def steps_per_epoch(self):
        return self.size // self.global_batch

    def set_epoch(self, epoch, start_step=0):
        self.epoch, self.start_step = epoch, start_step

    def __iter__(self):
        g = torch.Generator().manual_seed(int(np.random.SeedSequence([self.seed, self.epoch]).generate_state(1)[0]))
        perm = torch.randperm(self.size, generator=g)[: self.steps_per_epoch() * self.global_batch]
        mine = perm[self.rank::self.world]
        return iter(mine[self.start_step * (self.global_batch // self.world):].tolist())

    def __len__(self):
        return (self.steps_per_epoch() - self.start_step) * (self.global_batch // self.world)
