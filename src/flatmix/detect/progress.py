"""flatmix's progress lines for mmengine's loops, with mmengine's own INFO lines kept to its log file, so
that a detection job's log reads like the other stages': a line per 30 s with the rate and the ETA."""

import logging
import time

from mmengine.dist import is_main_process
from mmengine.hooks import Hook
from mmengine.runner import Runner

from flatmix.progress import Progress


class QuietRunner(Runner):
    """mmengine's Runner whose INFO lines (the environment, the whole config, each logged interval) go to
    its log file, WORK/<timestamp>/<timestamp>.log, and not to the terminal, which keeps its warnings."""

    def build_logger(self, *args, **kwargs):
        logger = super().build_logger(*args, **kwargs)
        for handler in logger.handlers:
            if type(handler) is logging.StreamHandler:  # the console, not its FileHandler subclass
                handler.setLevel(max(handler.level, logging.WARNING))
        return logger


class ProgressHook(Hook):
    """Training: iteration, epoch, loss and lr; the test: batches evaluated. Each with the rate, the share
    of time waiting for data and the ETA (flatmix.progress), on the main process only."""

    priority = "VERY_LOW"

    def __init__(self, desc):
        self.desc, self.progress, self.asked, self.waited = desc, None, 0.0, 0.0

    def _start(self, desc, total, done=0):
        self.progress = Progress(desc, total, done=done, unit="it", enabled=is_main_process())
        self.asked = time.perf_counter()

    def _data_here(self):
        self.waited = time.perf_counter() - self.asked

    def _step_done(self):
        self.progress.tick(self.waited)
        self.asked = time.perf_counter()
        return self.progress.done == self.progress.total

    def before_train(self, runner):
        self._start(self.desc, runner.max_iters, done=runner.iter)  # a resumed run starts where it was

    def before_train_iter(self, runner, batch_idx, data_batch=None):
        self._data_here()

    def after_train_iter(self, runner, batch_idx, data_batch=None, outputs=None):
        last = self._step_done()
        if last or self.progress.due():  # reading the loss waits for the GPU: only for a line
            lr = runner.optim_wrapper.get_lr()["lr"][0]
            self.progress.show(f"iter {self.progress.done}/{self.progress.total} epoch {runner.epoch + 1} "
                               f"loss {outputs['loss'].detach().item():.4f} lr {lr:.3g}", force=last)

    def after_train(self, runner):
        self.progress.close()

    def before_test(self, runner):
        self._start(f"{self.desc} test", len(runner.test_dataloader))

    def before_test_iter(self, runner, batch_idx, data_batch=None):
        self._data_here()

    def after_test_iter(self, runner, batch_idx, data_batch=None, outputs=None):
        self._step_done()
        self.progress.show_count("batches")

    def after_test(self, runner):
        self.progress.close()
