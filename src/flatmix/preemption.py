"""The stop signals of a pre-empted run (SIGTERM, as SLURM sends before a requeue, pre-emption or the time
limit; SIGUSR1, as `--signal=USR1@N` sends), and who answers them.

A stop signal reaches every process of a SLURM step or of a process group: torchrun, the trainers and
their DataLoader workers alike. Only the trainers answer it: each sets a flag (StopFlag), finishes its
step, saves last.pth and exits with PREEMPTED_EXIT. A loader worker ignores it (torch's own worker handler
would have it die of the signal, and the trainer would raise "DataLoader worker is killed by signal" in
the middle of a step) and ends with its loader as usual. Workers are started with the stop signals
blocked (`blocked`), so that one arriving while they start stays pending until each ignores it.
"""

from contextlib import contextmanager
import signal

STOP_SIGNALS = (signal.SIGTERM, signal.SIGUSR1)
PREEMPTED_EXIT = 143  # 128 + SIGTERM, as a shell reports a process that SIGTERM ended


class StopFlag:
    """Raised by a stop signal from the moment it is made: the training loop reads it after each step."""

    def __init__(self):
        self.raised = False
        for sig in STOP_SIGNALS:
            signal.signal(sig, self._handle)

    def _handle(self, signum, frame):
        self.raised = True


@contextmanager
def blocked():
    """The stop signals held back in this thread (and in the processes and threads it starts) inside;
    one that arrived meanwhile is delivered, to the StopFlag, on the way out."""
    previous = signal.pthread_sigmask(signal.SIG_BLOCK, STOP_SIGNALS)
    try:
        yield
    finally:
        signal.pthread_sigmask(signal.SIG_SETMASK, previous)


def ignore_in_worker(worker_id=None):
    """A DataLoader's worker_init_fn: this worker ignores the stop signals (a pending one is dropped), which
    its trainer answers for it."""
    for sig in STOP_SIGNALS:
        signal.signal(sig, signal.SIG_IGN)
    signal.pthread_sigmask(signal.SIG_UNBLOCK, STOP_SIGNALS)
