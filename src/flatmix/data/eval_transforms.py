"""The transforms of the evaluations on frozen features (the linear probe, kNN, Figure 5), in the colour
space the encoder was pretrained in: the probe's training crop (random-resized crop + flip, as
main_lincls.py) and everyone's validation crop (resize to 256/224 of the side, centre crop; an image that is
already the crop size, as CIFAR's 32-pixel ones, is its own view, as in the MoCo CIFAR demo).
"""

from torchvision import transforms as T

from flatmix.data.augment import CMC_NORMALISE, IMAGENET_MEAN, IMAGENET_STD, rgb_to_lab, rgb_to_ycbcr


def _colour_steps(colour):
    """What follows ToTensor for the space the encoder was pretrained in."""
    if colour == "RGB":
        return [T.Normalize(IMAGENET_MEAN, IMAGENET_STD)]
    mean, std = CMC_NORMALISE[colour]
    return [T.Lambda(rgb_to_ycbcr if colour == "YCbCr" else rgb_to_lab), T.Normalize(mean, std)]


def train_transform(size, colour):
    return T.Compose([T.RandomResizedCrop(size), T.RandomHorizontalFlip(), T.ToTensor(), *_colour_steps(colour)])


class CentreView:
    """Resize to 256/224 of `size` and centre-crop `size`, unless the image is `size` square already."""

    def __init__(self, size):
        self.size = size
        self.crop = T.Compose([T.Resize(round(size * 256 / 224)), T.CenterCrop(size)])

    def __call__(self, image):
        return image if image.size == (self.size, self.size) else self.crop(image)


def val_transform(size, colour):
    return T.Compose([CentreView(size), T.ToTensor(), *_colour_steps(colour)])
