"""One rank's pretraining batches, (views on the device, index on the device), from either loader:

- `pil` (the reference): workers decode with PIL and run the torchvision recipe per image.
- `gpu`: workers read bytes and draw parameters (flatmix.data.encoded); a background thread decodes the
  batch on the GPU and augments it there (flatmix.data.gpu_augment) on its own CUDA stream, a batch or
  two ahead of the training step, so that this work overlaps the model's.

Both draw every sample's parameters from the same (seed, epoch, index) seed, in the same order, and pass
over an image file that does not decode for the same stand-in (flatmix.data.loading.SkipUnreadable);
`skipped_images()` counts those files.

The workers leave a stop signal to the training process (flatmix.preemption), so that a pre-empted run
saves after its step instead of losing its loader mid-step.
"""

from contextlib import nullcontext
from functools import partial
import queue
import threading

import torch
from torch.utils.data import DataLoader

from flatmix import preemption
from flatmix.data.augment import AugmentedImages, EpochSampler
from flatmix.data.encoded import EncodedImages, collate, decode
from flatmix.data.gpu_augment import DeviceRecipe

LOADERS = ("pil", "gpu")  # data.loader; pretrain checks the config against it
PREFETCH = 2  # device batches made ahead of the training step
PREFETCH_FACTOR = 2  # batches each loader worker makes ahead (torch's default)


def batches_ahead(loader, workers):
    """The most batches a process's loader holds made ahead of the training step: each worker's
    PREFETCH_FACTOR, and for the gpu loader with workers the prefetch thread's queue and the batch in its
    hands. A benchmark that times fewer batches than this after its start times the queue draining."""
    if workers == 0:
        return 0
    return workers * PREFETCH_FACTOR + (PREFETCH + 1 if loader == "gpu" else 0)


class PretrainBatches:
    """This rank's share of each global batch of `batch_size` images of `root`, as `views` views under
    `transform` (a moco_transform or cmc_transform, which the `gpu` loader runs as a DeviceRecipe)."""

    def __init__(self, root, transform, views, env, *, loader, workers, seed, batch_size):
        if loader == "pil":
            self.dataset = AugmentedImages(root, transform, views, seed)
            collate_fn, self.recipe = None, None
        else:
            self.recipe = DeviceRecipe(transform)
            self.dataset = EncodedImages(root, self.recipe, views, seed)
            collate_fn = collate
        self.sampler = EpochSampler(len(self.dataset), batch_size, env.rank, env.world, seed)
        self.workers, self.device = workers, env.device
        self.loader = DataLoader(self.dataset, batch_size=batch_size // env.world, sampler=self.sampler,
                                 num_workers=self.workers, collate_fn=collate_fn,
                                 prefetch_factor=PREFETCH_FACTOR if self.workers else None,
                                 pin_memory=env.device.type == "cuda", drop_last=True,
                                 worker_init_fn=preemption.ignore_in_worker,
                                 # its workers' base seed, drawn at every epoch's start, from a generator of
                                 # its own: drawn from the global one, it would shift the stream that shuffle
                                 # BN's permutations take on a resume mid-epoch (the samples' own draws come
                                 # from their (seed, epoch, index) seeds)
                                 generator=torch.Generator().manual_seed(seed))

    def __len__(self):
        return len(self.dataset)

    def steps_per_epoch(self):
        return self.sampler.steps_per_epoch()

    def skipped_images(self):
        """Image files found unreadable so far by this process and its loader workers (batches made ahead
        of the training step included), each counted once however often it is drawn."""
        return self.dataset.files.count()

    def worker_batches(self, epoch, start_step=0):
        """The loader workers' batches of `epoch` from `start_step` on, as they hand them over: the gpu
        loader's still encoded, for `decoded` and `recipe` to finish."""
        self.dataset.set_epoch(epoch)
        self.sampler.set_epoch(epoch, start_step)
        with preemption.blocked():  # the workers start, each then ignoring a stop signal
            return iter(self.loader)

    def epoch(self, epoch, start_step=0):
        """This rank's batches of `epoch` from `start_step` on."""
        batches = self.worker_batches(epoch, start_step)
        if self.recipe is None:
            return ((*(v.to(self.device, non_blocking=True) for v in views), index.to(self.device))
                    for *views, index in batches)
        if self.workers == 0:  # the parameter draws would run in the thread, on the global RNG: stay here
            return map(self._augment, batches)
        return _Prefetcher(batches, self._augment, self.device)

    def _augment(self, batch):
        *_, params, index = batch
        views = self.recipe(self.decoded(batch), params)
        return (*views, index.to(self.device, non_blocking=True))

    def decoded(self, batch):
        """A gpu-loader worker batch's images, decoded on the device."""
        payloads, encoded, _, index = batch
        return decode(payloads, encoded, self.device, partial(self._undecodable, index))

    def _undecodable(self, index, i, error):
        """decode's report of sample i's JPEG, which no decoder reads: flagged and counted."""
        k = int(index[i])
        self.dataset.files.flag(k, f"{self.dataset.paths[k]}: no decoder reads it ({error})", "a grey image stands in")


_END = object()


class _Failure:
    def __init__(self, error):
        self.error = error


class _Prefetcher:
    """Iterates `work(item)` over `source` computed in a background thread (on its own CUDA stream on a
    GPU), up to PREFETCH items ahead; errors are raised in the consumer."""

    def __init__(self, source, work, device):
        self.device = device
        self.stream = torch.cuda.Stream(device) if device.type == "cuda" else None
        self.queue = queue.Queue(PREFETCH)
        self.stop = threading.Event()
        self.thread = threading.Thread(target=self._produce, args=(source, work), daemon=True)
        self.thread.start()

    def _produce(self, source, work):
        try:
            with torch.cuda.stream(self.stream) if self.stream is not None else nullcontext():
                for item in source:
                    if self.stop.is_set():
                        return
                    out = work(item)
                    event = None
                    if self.stream is not None:
                        event = torch.cuda.Event()
                        event.record(self.stream)
                    self._put((out, event))
            self._put(_END)
        except BaseException as e:  # noqa: B902 - handed to the consumer, which raises it
            self._put(_Failure(e))

    def _put(self, item):
        while not self.stop.is_set():
            try:
                self.queue.put(item, timeout=0.1)
                return
            except queue.Full:
                continue

    def __iter__(self):
        try:
            while True:
                item = self.queue.get()
                if item is _END:
                    return
                if isinstance(item, _Failure):
                    raise item.error
                out, event = item
                if event is not None:
                    current = torch.cuda.current_stream(self.device)
                    current.wait_event(event)
                    for tensor in out:
                        tensor.record_stream(current)  # made on the side stream, used on this one
                yield out
        finally:
            self.stop.set()
            self.thread.join()
