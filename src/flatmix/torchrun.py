"""`flatmix-torchrun`: torchrun, with its own arguments, as the pretrain rule starts flatmix on several GPUs,
ending as a pre-empted run promises (flatmix.preemption).

torchrun passes a SIGTERM it gets on to its trainers and waits for them (30 s) while they save, but then
ends with a traceback and status 1; a trainer that a signal stopped (143) also makes torchrun end with 1;
and SIGUSR1 (SLURM's `--signal=USR1@N`) ends torchrun at once unless it is told to handle it. This exits
143 in all three cases, with one line saying so, so that a requeue script or a person reading the log
sees a pre-emption, not a crash. Any other failure is torchrun's, reported as torchrun reports it.

torchrun answers every signal it handles by raising in its main thread, a second one too: one arriving
while it waits for its trainers to save (SLURM's USR1 then TERM, a signal to the whole step and then
torchrun's own to the trainers) would cut that wait short. Here the first is answered, and the later
ones are ignored.
"""

import os
import signal
import sys

from torch.distributed.elastic.multiprocessing import api as elastic_processes
from torch.distributed.elastic.multiprocessing.api import SignalException
from torch.distributed.elastic.multiprocessing.errors import ChildFailedError
from torch.distributed.run import parse_args, run

from flatmix.preemption import PREEMPTED_EXIT, STOP_SIGNALS

# torchrun's own default signals, and SIGUSR1, passed on to the trainers (the variable is the
# --signals-to-handle option's, which a user's option or variable still overrides)
SIGNALS_TO_HANDLE = "SIGTERM,SIGINT,SIGHUP,SIGQUIT,SIGUSR1"
_STOPPED_BY = {PREEMPTED_EXIT, *(-s for s in STOP_SIGNALS)}  # a trainer's exit status after a stop signal


def _first_signal_only(signum, frame):
    """torchrun's signal handler (which its process context installs by this name), ignoring what follows."""
    names = os.environ.get("TORCHELASTIC_SIGNALS_TO_HANDLE", SIGNALS_TO_HANDLE).split(",")
    for sig in filter(None, (getattr(signal, name.strip(), None) for name in names)):  # torchrun skips unknown names
        signal.signal(sig, signal.SIG_IGN)
    raise SignalException(f"got {signal.Signals(signum).name}", sigval=signal.Signals(signum))


def main(argv=None):
    os.environ.setdefault("PET_SIGNALS_TO_HANDLE", SIGNALS_TO_HANDLE)
    elastic_processes._terminate_process_handler = _first_signal_only
    args = parse_args(sys.argv[1:] if argv is None else argv)
    try:
        run(args)
    except SignalException as e:
        print(f"flatmix-torchrun: stopped by {signal.Signals(e.sigval).name}, passed on to the trainers", file=sys.stderr)
        return PREEMPTED_EXIT
    except ChildFailedError as e:
        if not all(failure.exitcode in _STOPPED_BY for failure in e.failures.values()):
            raise
        print(f"flatmix-torchrun: {len(e.failures)} trainer(s) stopped by a signal", file=sys.stderr)
        return PREEMPTED_EXIT
    return 0


if __name__ == "__main__":
    sys.exit(main())
