"""Image loading that copes with what real ImageNet holds: PNG bytes under a .JPEG name, CMYK and
grayscale JPEGs (PIL sniffs the format from the bytes, and every image is converted to RGB), and files
that do not decode (empty, truncated): `check_images` finds most of them cheaply before training, and
training passes over the rest (`SkipUnreadable`)."""

from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from functools import partial
import os
import struct
import sys
import time

from PIL import Image
import torch
from torchvision.datasets import ImageFolder
from tqdm import tqdm

from flatmix.data import imagenet100  # the module, not its names: imagenet100 imports this module too
from flatmix.errors import FlatmixError

# What PIL raises for a file it cannot open or decode (empty, cut short, not an image, corrupt data).
PIL_ERRORS = (OSError, SyntaxError, ValueError, EOFError, struct.error, Image.DecompressionBombError)
CHECK_CHUNK = 256  # files per thread-pool task of check_images


class UnreadableImage(FlatmixError):
    """An image file PIL cannot open or decode; the message names it."""


@contextmanager
def pil_errors(path):
    """Any of PIL_ERRORS raised inside, as one UnreadableImage naming `path`."""
    try:
        yield
    except PIL_ERRORS as e:
        unidentified = isinstance(e, Image.UnidentifiedImageError)  # its message shows a file object's repr
        reason = "cannot identify image file" if unidentified else e
        raise UnreadableImage(f"{path}: not a readable image ({reason})") from None


def open_rgb(path):
    """An RGB PIL image, whatever the file's real format and colour mode."""
    with pil_errors(path), Image.open(path) as image:
        return image.convert("RGB")


def image_folder(root, transform=None):
    """A class-per-folder data set (ImageNet-100's train/ or val/) loaded through open_rgb."""
    return ImageFolder(str(root), transform=transform, loader=open_rgb, is_valid_file=is_image_file)


def is_image_file(path):
    name = os.path.basename(path)
    return not name.startswith(".") and os.path.splitext(name)[1].lower() in imagenet100.IMAGE_SUFFIXES


def check_images(paths, decode=False, threads=16, progress_every=10.0):
    """[(path, reason)] of the files among `paths` that PIL cannot open. By default only the header is
    read (format and size: catches empty, truncated-header and non-image files for a small read each);
    decode=True decodes every image. The files are read in a thread pool, for storage that makes each read
    wait (a cold disk, a network file system); files in the page cache go fastest in one thread, as the
    header parse holds the GIL (16-core H200 host: 28k files/s with 1 thread, 11k with 4, 7k with 32). A
    list that takes longer than `progress_every` seconds gets a progress line on stderr that often."""
    paths = list(paths)
    chunks = [paths[i:i + CHECK_CHUNK] for i in range(0, len(paths), CHECK_CHUNK)]
    bad, done, start = [], 0, time.monotonic()
    shown = start
    with ThreadPoolExecutor(threads) as pool:
        for chunk, problems in zip(chunks, pool.map(partial(_problems, decode=decode), chunks)):
            bad += problems
            done += len(chunk)
            if time.monotonic() - shown >= progress_every and done < len(paths):
                shown = time.monotonic()
                _progress(done, len(paths), shown - start)
    return bad


def _problems(paths, decode):
    bad = []
    for path in paths:
        try:
            with Image.open(path) as image:
                if decode:
                    image.load()
        except PIL_ERRORS as e:
            bad.append((path, str(e)))
    return bad


def _progress(done, total, elapsed):
    rate = done / max(elapsed, 1e-6)
    left = int((total - done) / rate)
    print(f"flatmix: checked {done}/{total} images ({rate:.0f}/s, about {left // 60}m{left % 60:02d}s left)",
          file=sys.stderr, flush=True)


class SkipUnreadable:
    """A data set's files, read so that one that fails to decode is passed over for the next readable
    file in data-set order (the same class, mostly): the stand-in depends on the index alone, so resumed
    runs, any number of workers and both loaders make the same choice. Unreadable files are flagged in
    shared memory, which every loader worker and the training process see: each is warned about once
    and counted."""

    def __init__(self, paths, reader="skipped"):
        self.paths, self.reader = paths, reader  # who passes the file over, in the warning
        self.unreadable = torch.zeros(len(paths), dtype=torch.bool).share_memory_()

    def load(self, start, read):
        """read(path) of the first file at or after index `start` (wrapping round) that it reads."""
        for k in range(start, start + len(self.paths)):
            k %= len(self.paths)
            try:
                return read(self.paths[k])
            except UnreadableImage as e:
                self.flag(k, e, f"{self.reader}, the next readable image stands in")
        raise FlatmixError(f"none of the {len(self.paths)} images is readable (the first: {self.paths[0]})")

    def flag(self, k, problem, remedy):
        """Count file k as unreadable; the first time, warn (`problem` names the file)."""
        if not self.unreadable[k]:
            self.unreadable[k] = True
            tqdm.write(f"flatmix: warning: {problem}; {remedy}", file=sys.stderr)  # a line of its own beside a bar

    def count(self):
        return int(self.unreadable.sum())
