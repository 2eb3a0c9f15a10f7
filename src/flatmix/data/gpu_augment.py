"""The reference augmentations (flatmix.data.augment's torchvision pipelines) on a whole batch on the GPU.

`DeviceRecipe(transform)` reads a reference `Compose` and gives it two halves:
- `draw(height, width)`: one view's random parameters, drawn with torchvision's own `get_params` and
  `torch.rand` calls in the order the reference pipeline makes them. Under the same per-sample seed it
  draws exactly the reference's crops, jitter factors and order, grayscale, blur and flip decisions.
  It needs only the image size, so loader workers run it without decoding.
- `__call__(images, params)`: applies those parameters to decoded images on their device, batched:
  crop + resize of every view as two batched matrix products per group of similar-sized images, then
  the colour ops with per-sample factors (jitter in each sample's own order), grayscale, blur, flip,
  normalisation, colour space.

Where the result differs from the PIL path (the reference): nothing is rounded to 8 bits between steps,
and the colour ops use torchvision's tensor formulas (its grayscale weights, float HSV) where PIL has its
own integer versions; the crops are resampled with PIL's own filter.
"""

import torch
import torch.nn.functional as F
from torchvision import transforms as T

from flatmix.errors import FlatmixError

FIELDS = ("top", "left", "height", "width", "grayscale", "jitter", "order0", "order1", "order2", "order3",
          "brightness", "contrast", "saturation", "hue", "blur", "sigma", "flip")
COLUMN = {name: i for i, name in enumerate(FIELDS)}
_NO_JITTER = {"brightness": 1.0, "contrast": 1.0, "saturation": 1.0, "hue": 0.0}
_JITTER_OPS = ("brightness", "contrast", "saturation", "hue")  # ColorJitter's fn_idx 0..3

# Pixels (x channels) of one padded canvas of images: bounds the resize's transient memory.
GROUP_ELEMENTS = 1 << 27


class DeviceRecipe:
    def __init__(self, compose):
        self.transforms = list(compose.transforms)
        if not isinstance(self.transforms[0], T.RandomResizedCrop):
            raise FlatmixError("the GPU loader needs a recipe that starts with RandomResizedCrop")
        size = self.transforms[0].size
        self.size = (size, size) if isinstance(size, int) else tuple(size)
        self._check(self.transforms)

    def _check(self, transforms):
        known = (T.RandomResizedCrop, T.RandomGrayscale, T.ColorJitter, T.RandomApply, T.GaussianBlur,
                 T.RandomHorizontalFlip, T.ToTensor, T.Normalize, T.Lambda)
        for t in transforms:
            if not isinstance(t, known):
                raise FlatmixError(f"the GPU loader has no batched version of {type(t).__name__}")
            if isinstance(t, T.RandomApply):
                self._check(t.transforms)

    # ---- parameters (on the CPU, in the reference's order of random draws) -----------------------
    def draw(self, height, width):
        """One view's parameters [len(FIELDS)] for an image of height x width, from torch's global RNG."""
        p = torch.zeros(len(FIELDS))
        for name, value in _NO_JITTER.items():
            p[COLUMN[name]] = value
        self._draw(self.transforms, p, torch.empty(1, 1, 1).expand(3, height, width))
        return p

    def _draw(self, transforms, p, shape):
        for t in transforms:
            if isinstance(t, T.RandomResizedCrop):
                p[0:4] = torch.tensor(t.get_params(shape, t.scale, t.ratio), dtype=p.dtype)
            elif isinstance(t, T.RandomGrayscale):
                p[COLUMN["grayscale"]] = float(torch.rand(1) < t.p)
            elif isinstance(t, T.ColorJitter):
                order, *factors = t.get_params(t.brightness, t.contrast, t.saturation, t.hue)
                p[COLUMN["jitter"]] = 1.0
                p[COLUMN["order0"]:COLUMN["order3"] + 1] = order.to(p.dtype)
                for name, factor in zip(_JITTER_OPS, factors):
                    if factor is not None:
                        p[COLUMN[name]] = factor
            elif isinstance(t, T.RandomApply):
                if not t.p < torch.rand(1):
                    self._draw(t.transforms, p, shape)
            elif isinstance(t, T.GaussianBlur):
                p[COLUMN["blur"]] = 1.0
                p[COLUMN["sigma"]] = t.get_params(*t.sigma)
            elif isinstance(t, T.RandomHorizontalFlip):
                p[COLUMN["flip"]] = float(torch.rand(1) < t.p)

    # ---- application (batched, on the images' device) -------------------------------------------
    def __call__(self, images, params, dtype=None):
        """images: one decoded [3, H, W] uint8 tensor per image; params [images, views, FIELDS] (CPU).

        Returns one normalised [images, 3, S, S] float32 tensor per view. The work is done in `dtype`:
        by default fp16 on a GPU (half the memory traffic; 11 bits of mantissa, finer than the bf16 the
        encoders read and than PIL's 8-bit steps), fp32 elsewhere.
        """
        return self.colour(self.resize(images, params, dtype), params)

    def resize(self, images, params, dtype=None):
        """The first half (timed alone by `flatmix bench`): every view's crop, resized, in 0-1 in `dtype`,
        [views * images, 3, S, S] view-major."""
        if dtype is None:
            dtype = torch.float16 if images[0].device.type == "cuda" else torch.float32
        return crop_resize(images, params[..., 0:4], self.size, dtype) / 255.0

    def colour(self, x, params):
        """The second half: the rest of the recipe on `resize`'s output, one float32 tensor per view."""
        n_images, n_views, _ = params.shape
        flat = params.transpose(0, 1).reshape(n_views * n_images, -1)  # view-major, as crop_resize's rows
        x = self._apply(self.transforms[1:], x, flat).float()
        return list(x.reshape(n_views, n_images, *x.shape[1:]).unbind(0))

    def _apply(self, transforms, x, p):
        for t in transforms:
            if isinstance(t, T.RandomGrayscale):
                x = _on(x, p[:, COLUMN["grayscale"]] > 0, lambda v: grayscale(v).expand_as(v))
            elif isinstance(t, T.ColorJitter):
                x = jitter(x, p)
            elif isinstance(t, T.RandomApply):
                x = self._apply(t.transforms, x, p)  # the jitter/blur columns say which samples it fired on
            elif isinstance(t, T.GaussianBlur):
                x = gaussian_blur(x, p[:, COLUMN["blur"]] > 0, p[:, COLUMN["sigma"]], t.kernel_size)
            elif isinstance(t, T.RandomHorizontalFlip):
                x = _on(x, p[:, COLUMN["flip"]] > 0, lambda v: v.flip(-1))
            elif isinstance(t, T.Normalize):
                mean = torch.tensor(t.mean, device=x.device, dtype=x.dtype).view(1, -1, 1, 1)
                std = torch.tensor(t.std, device=x.device, dtype=x.dtype).view(1, -1, 1, 1)
                x = (x - mean) / std
            elif isinstance(t, T.Lambda):
                x = t.lambd(x)
        return x


def crop_resize(images, boxes, size, dtype=torch.float32):
    """Every view's (top, left, height, width) crop of its image, resized to `size` as PIL's antialiased
    bilinear resize does it: [views * images, 3, *size] in 0-255, view-major (all images' first view, then
    all second views).

    Resampling is linear: one weight matrix per view and axis (PIL's triangle filter, widened by the
    downscaling factor, cut at the crop's edges), applied as two batched matrix products to canvases that
    hold a few images of similar sizes (sorted by area), in `dtype` (0-255 pixel values are exact in fp16).
    """
    n_images, n_views, _ = boxes.shape
    device = images[0].device
    out = torch.empty(n_views, n_images, 3, *size, device=device, dtype=dtype)
    order = sorted(range(n_images), key=lambda m: images[m].shape[1] * images[m].shape[2])
    for group in _groups(order, images):
        height = max(images[m].shape[1] for m in group)
        width = max(images[m].shape[2] for m in group)
        canvas = torch.zeros(len(group), 3, height, width, device=device, dtype=dtype)
        for g, m in enumerate(group):
            canvas[g, :, :images[m].shape[1], :images[m].shape[2]] = images[m]
        top, left, crop_h, crop_w = boxes[group].to(device, non_blocking=True).unbind(-1)  # [G, V] each
        rows = resize_weights(top, crop_h, size[0], height).to(dtype)            # [G, V, S, H]
        cols = resize_weights(left, crop_w, size[1], width).to(dtype)            # [G, V, S, W]
        resized = torch.matmul(rows.unsqueeze(2), canvas.unsqueeze(1))           # [G, V, 3, S, W]
        resized = torch.matmul(resized, cols.transpose(-1, -2).unsqueeze(2))     # [G, V, 3, S, S]
        index = torch.tensor(group).to(device, non_blocking=True)
        out.index_copy_(1, index, resized.transpose(0, 1))
    return out.view(n_views * n_images, 3, *size)


def resize_weights(start, length, size, extent):
    """[..., size, extent] weights of PIL's bilinear resize of pixels [start, start + length) of an axis of
    `extent` pixels to `size` pixels: output pixel k centred at (k + 0.5) * scale in the crop, a triangle
    of half-width max(scale, 1) pixels, pixels outside the crop weighted 0, each row normalised."""
    start, length = start.float(), length.float()
    scale = (length / size)[..., None, None]
    support = scale.clamp(min=1.0)
    centre = (torch.arange(size, device=start.device) + 0.5)[:, None] * scale          # [..., size, 1]
    pixel = torch.arange(extent, device=start.device) - start[..., None, None]          # [..., 1, extent]
    weights = (1.0 - ((pixel + 0.5 - centre) / support).abs()).clamp(min=0.0)
    weights = weights * ((pixel >= 0) & (pixel < length[..., None, None]))
    return weights / weights.sum(dim=-1, keepdim=True)


def _groups(order, images):
    """Consecutive runs of `order` whose padded canvas stays under GROUP_ELEMENTS."""
    group, height, width = [], 0, 0
    for m in order:
        h, w = images[m].shape[1], images[m].shape[2]
        grown = (len(group) + 1) * 3 * max(height, h) * max(width, w)
        if group and grown > GROUP_ELEMENTS:
            yield group
            group, height, width = [], 0, 0
        group.append(m)
        height, width = max(height, h), max(width, w)
    if group:
        yield group


def _on(x, chosen, op):
    """x (in place) with op applied to the samples where `chosen` (a CPU bool vector) is true."""
    index = chosen.nonzero().flatten()
    if len(index) == len(x):
        return x.copy_(op(x))
    if len(index):
        index = index.to(x.device, non_blocking=True)
        x.index_copy_(0, index, op(x.index_select(0, index)))
    return x


def grayscale(x):
    """[N, 1, H, W] luma, with torchvision's tensor weights."""
    r, g, b = x.unbind(1)
    return (0.2989 * r + 0.587 * g + 0.114 * b).unsqueeze(1)


def _blend(x, other, factor):
    return (factor * x + (1.0 - factor) * other).clamp_(0.0, 1.0)


def adjust_brightness(x, factor):
    return (x * factor).clamp_(0.0, 1.0)


def adjust_contrast(x, factor):
    return _blend(x, grayscale(x).mean(dim=(1, 2, 3), keepdim=True), factor)


def adjust_saturation(x, factor):
    return _blend(x, grayscale(x), factor)


def adjust_hue(x, factor):
    """Shift the HSV hue by `factor` (a fraction of the circle), as torchvision's adjust_hue on tensors."""
    r, g, b = x.unbind(1)
    maxc, _ = x.max(dim=1)
    minc, _ = x.min(dim=1)
    chroma = maxc - minc
    flat = chroma == 0
    divisor = torch.where(flat, torch.ones_like(chroma), chroma)
    rc, gc, bc = (maxc - r) / divisor, (maxc - g) / divisor, (maxc - b) / divisor
    hue = torch.where(maxc == r, bc - gc, torch.where(maxc == g, 2.0 + rc - bc, 4.0 + gc - rc))
    hue = torch.fmod(hue / 6.0 + 1.0, 1.0)
    saturation = chroma / torch.where(flat, torch.ones_like(maxc), maxc)
    hue = torch.remainder(hue + factor.view(-1, 1, 1), 1.0)
    # HSV to RGB: channel n in (R, G, B) = v - v s clamp(min(k, 4 - k), 0, 1) with k = (n + 6 h) mod 6
    channels = []
    for n in (5.0, 3.0, 1.0):
        k = torch.remainder(n + 6.0 * hue, 6.0)
        channels.append(maxc - maxc * saturation * torch.minimum(k, 4.0 - k).clamp(0.0, 1.0))
    return torch.stack(channels, dim=1)


_ADJUST = {"brightness": adjust_brightness, "contrast": adjust_contrast, "saturation": adjust_saturation,
           "hue": adjust_hue}


def jitter(x, p):
    """ColorJitter with each sample's own factors and its own random order of the four ops."""
    applied = p[:, COLUMN["jitter"]] > 0
    orders = p[:, COLUMN["order0"]:COLUMN["order3"] + 1].long()
    for slot in range(4):
        for code, name in enumerate(_JITTER_OPS):
            chosen = applied & (orders[:, slot] == code)
            if chosen.any():
                f = p[chosen, COLUMN[name]].to(x.device, x.dtype, non_blocking=True)
                x = _on(x, chosen, lambda v: _ADJUST[name](v, f.view(-1, 1, 1, 1) if name != "hue" else f))
    return x


def gaussian_blur(x, chosen, sigma, kernel_size):
    """torchvision's gaussian_blur (reflect padding, kernel pdf over linspace(-k/2, k/2)), with each
    chosen sample's own sigma, as two grouped 1-D convolutions."""
    index = chosen.nonzero().flatten()
    if len(index) == 0:
        return x
    kx, ky = kernel_size
    sig = sigma[index].to(torch.float32)

    def kernel(k):
        t = torch.linspace(-(k - 1) / 2, (k - 1) / 2, k)
        pdf = torch.exp(-0.5 * (t[None, :] / sig[:, None]) ** 2)
        return (pdf / pdf.sum(dim=1, keepdim=True)).repeat_interleave(3, dim=0)  # [n * 3, k]

    def blur(v):
        n, c, h, w = v.shape
        planes = F.pad(v.reshape(1, n * c, h, w), [kx // 2, kx // 2, ky // 2, ky // 2], mode="reflect")
        planes = F.conv2d(planes, kernel(kx).to(v.device, v.dtype).view(n * c, 1, 1, kx), groups=n * c)
        planes = F.conv2d(planes, kernel(ky).to(v.device, v.dtype).view(n * c, 1, ky, 1), groups=n * c)
        return planes.view(n, c, h, w)

    return _on(x, chosen, blur)

