"""Pre-emption with loader workers: a stop signal to torchrun, to a trainer or to the whole process group (as
SLURM signals every process of a step), mid-step, in a burst over the checkpoint write, or while the loader
workers start, leaves last.pth after the current step and exits 143; the same command then resumes to the
weights of an uninterrupted run, bit for bit. Both loaders, with workers, on one and two processes."""

import json
import os
from pathlib import Path
import signal
import subprocess
import sys
import time

import psutil
import pytest
import torch

from test_pretrain import _assert_same_weights, _pretrain_args

BIN = Path(sys.executable).parent
EPOCHS = 2


def _command(data, out, loader, processes, torchrun):
    """The pretraining command: plain flatmix (one process), or flatmix-torchrun with `processes` trainers."""
    args = _pretrain_args(data, out, f"train.epochs={EPOCHS}", "model.arch=resnet_tiny", f"data.loader={loader}",
                          "data.workers=2")
    head = [BIN / "flatmix-torchrun", "--standalone", f"--nproc_per_node={processes}", "-m", "flatmix"] \
        if torchrun else [BIN / "flatmix"]
    return [str(a) for a in (*head, *args)]


def _run(command):
    return subprocess.run(command, capture_output=True, text=True, timeout=600)


@pytest.fixture(scope="module")
def uninterrupted(synth_root, tmp_path_factory):
    """{(loader, processes): the folder of an uninterrupted run}, made when first asked for (one process
    trains the same under torchrun as without)."""
    made = {}

    def get(loader, processes):
        if (loader, processes) not in made:
            out = tmp_path_factory.mktemp(f"uninterrupted-{loader}-{processes}")
            result = _run(_command(synth_root / "imagenet", out, loader, processes, processes > 1))
            assert result.returncode == 0, result.stderr[-3000:]
            made[loader, processes] = out
        return made[loader, processes]
    return get


def _metrics_lines(out):
    path = out / "metrics.jsonl"
    return len(path.read_text().splitlines()) if path.exists() else 0


def _trainers(proc, torchrun):
    """The training processes: the command itself, or torchrun's children."""
    try:
        return psutil.Process(proc.pid).children() if torchrun else [psutil.Process(proc.pid)]
    except psutil.Error:
        return []


def _loader_workers(proc, torchrun):
    """The trainers' DataLoader workers (forked: their command line is the trainer's)."""
    workers = []
    for trainer in _trainers(proc, torchrun):
        try:
            workers += trainer.children()
        except psutil.Error:
            pass
    return workers


def _wait(proc, ready, what, timeout=300):
    start = time.monotonic()
    while not ready():
        assert proc.poll() is None, f"the run ended (status {proc.returncode}) before {what}:\n{proc.stderr.read()[-3000:]}"
        assert time.monotonic() - start < timeout, f"no {what} after {timeout} s"
        time.sleep(0.005)


def _send(proc, target, sig, torchrun):
    """`sig` to the launcher alone, one trainer (under torchrun: the last one started), or the process group."""
    if target == "group":
        os.killpg(proc.pid, sig)
    elif target == "trainer":
        _trainers(proc, torchrun)[-1].send_signal(sig)
    else:
        proc.send_signal(sig)


# (loader, trainers, under torchrun, whom, when, signal): every loader, launch and target; each moment with
# each loader and each launch
CASES = [
    ("pil", 1, False, "group", "mid-step", signal.SIGTERM),        # the first GPU run's failure, without torchrun
    ("gpu", 1, False, "group", "loader-start", signal.SIGTERM),
    ("pil", 1, True, "torchrun", "burst", signal.SIGTERM),
    ("pil", 1, True, "torchrun", "mid-step", signal.SIGUSR1),      # SLURM's --signal=USR1@N, to torchrun alone
    ("gpu", 2, True, "trainer", "mid-step", signal.SIGTERM),       # one rank signalled: both stop at one step
    ("pil", 2, True, "group", "loader-start", signal.SIGTERM),
    ("gpu", 2, True, "group", "burst", signal.SIGTERM),
    ("pil", 2, True, "torchrun", "mid-step", signal.SIGTERM),
]


@pytest.mark.slow
@pytest.mark.parametrize("loader,processes,torchrun,whom,when,sig", CASES, ids=[
    f"{c[0]}-{c[1]}x{'torchrun' if c[2] else 'flatmix'}-to-{c[3]}-{c[4]}-{c[5].name}" for c in CASES])
def test_a_stop_signal_saves_after_the_step_and_the_rerun_resumes_bitwise(synth_root, tmp_path, uninterrupted, loader,
                                                                        processes, torchrun, whom, when, sig):
    command = _command(synth_root / "imagenet", tmp_path, loader, processes, torchrun)
    proc = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            start_new_session=True)
    try:
        if when == "loader-start":  # as soon as the first worker of the first epoch exists (after config.yaml:
            # a process that imports forks for a moment too, and no signal is answered before flatmix starts)
            _wait(proc, lambda: (tmp_path / "config.yaml").exists() and _loader_workers(proc, torchrun),
                  "a loader worker")
            _send(proc, whom, sig, torchrun)
        else:
            _wait(proc, lambda: _metrics_lines(tmp_path) >= 3, "3 metrics lines")
            _send(proc, whom, sig, torchrun)
            while when == "burst" and proc.poll() is None:  # on through the step, the save and the exit
                _send(proc, whom, sig, torchrun)
                time.sleep(0.002)
        _, stderr = proc.communicate(timeout=300)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
    assert proc.returncode == 143, stderr[-4000:]
    assert "killed by signal" not in stderr and "Traceback" not in stderr, stderr[-4000:]
    assert "pretrain: stopped by a signal" in stderr
    assert not (tmp_path / "checkpoint.pth").exists()
    last = torch.load(tmp_path / "last.pth", weights_only=True)
    assert (last["epoch"], last["step"]) != (0, 0) and last["epoch"] < EPOCHS, (last["epoch"], last["step"])

    result = _run(command)  # the same command continues
    assert result.returncode == 0, result.stderr[-3000:]
    assert f"continuing from {tmp_path / 'last.pth'}" in result.stderr
    reference = uninterrupted(loader, processes)
    _assert_same_weights(tmp_path / "checkpoint.pth", reference / "checkpoint.pth")
    steps = [(m["epoch"], m["step"]) for m in map(json.loads, (tmp_path / "metrics.jsonl").read_text().splitlines())]
    assert steps == [(m["epoch"], m["step"]) for m in map(json.loads, (reference / "metrics.jsonl").read_text()
                                                              .splitlines())]
