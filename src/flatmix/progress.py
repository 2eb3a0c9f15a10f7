"""Progress of the long loops (pretraining, the linear probe, Figure 5, detection) that a person can follow.

On a terminal, a tqdm bar. Otherwise (a Snakemake rule's log, a SLURM job's output) plain lines, at
most one every `every_s` seconds: a bar's carriage returns would make the log one unreadable line. Each
line says where the loop is and its metrics, its rate and the share of its time spent waiting for data
since the previous line, and when it will end at its rate so far.
"""

import math
import sys
import time

from tqdm import tqdm

PLAIN_EVERY_S = 30.0
BAR_EVERY_S = 0.1


def _rate(per_s):
    """A rate to about 3 significant figures, without an exponent: 3,113 and 12.5, but 0.214 for a slow loop."""
    return f"{per_s:,.0f}" if per_s >= 100 else f"{per_s:.3g}"


class Window:
    """Steps, seconds, and seconds spent waiting for the next batch since the last `read`: a loop's rate
    and the share of its time its loader keeps it waiting (near 1: the loader is the bottleneck)."""

    def __init__(self):
        self.start, self.steps, self.waited = time.perf_counter(), 0, 0.0

    def batches(self, iterable):
        """The items of `iterable`, each wait for one timed."""
        asked = time.perf_counter()
        for item in iterable:
            self.count(time.perf_counter() - asked)
            yield item
            asked = time.perf_counter()

    def count(self, waited):
        """One step, after `waited` seconds for its data."""
        self.waited += waited
        self.steps += 1

    def read(self):
        """(steps per second, data-wait share) since the last read, which starts the next window."""
        now = time.perf_counter()
        elapsed = max(now - self.start, 1e-9)
        result = self.steps / elapsed, min(self.waited / elapsed, 1.0)
        self.start, self.steps, self.waited = now, 0, 0.0
        return result


class Progress:
    """`total` steps of `per_step` `unit`s each, `done` of them already (a resumed run); shown only where
    `enabled` (the main rank). The loop takes its batches through `batches`, which counts the steps."""

    def __init__(self, desc, total, done=0, unit="step", per_step=1, enabled=True, every_s=PLAIN_EVERY_S):
        self.desc, self.total, self.done, self.unit, self.per_step = desc, total, done, unit, per_step
        self.enabled, self.window = enabled, Window()
        self.bar = tqdm(total=total, initial=done, desc=desc, unit="step", dynamic_ncols=True) \
            if enabled and sys.stderr.isatty() else None
        self.every_s = BAR_EVERY_S if self.bar is not None else every_s
        self.started, self.done_at_start, self.shown = time.monotonic(), done, -math.inf

    def batches(self, iterable):
        for item in self.window.batches(iterable):
            self._advance()
            yield item

    def tick(self, waited):
        """One step of a loop that is not ours to iterate (mmengine's), after `waited` seconds for its data."""
        self.window.count(waited)
        self._advance()

    def _advance(self):
        self.done += 1
        if self.bar is not None:
            self.bar.update()

    def due(self):
        """Whether `show` would show now: for a caller to read its metrics (a GPU sync) only then."""
        return self.enabled and time.monotonic() - self.shown >= self.every_s

    def show(self, text, force=False):
        """`text` (where the loop is, its metrics) with the rate and data-wait share, beside the bar or as
        a line with the ETA; when due, or always if `force`."""
        if not (self.enabled and (force or self.due())):
            return
        self.shown = time.monotonic()
        steps_per_s, data_wait = self.window.read()
        text = f"{text} {_rate(steps_per_s * self.per_step)} {self.unit}/s data-wait {data_wait:.0%}"
        if self.bar is not None:
            self.bar.set_postfix_str(text)
        else:
            print(f"{self.desc} {text}{self._eta()}", file=sys.stderr, flush=True)

    def show_count(self, what):
        """`done/total what` when due, and always at the end: for a loop with no metrics of its own."""
        self.show(f"{what} {self.done}/{self.total}", force=self.done == self.total)

    def _eta(self):
        rate = (self.done - self.done_at_start) / max(time.monotonic() - self.started, 1e-9)
        if rate <= 0:
            return ""
        left = (self.total - self.done) / rate
        end = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(time.time() + left))
        return f" eta {end} ({tqdm.format_interval(left)} left)"

    def close(self):
        if self.bar is not None:
            self.bar.close()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()
