"""Pretraining runs: DDP on two CPU processes, exact resume after SIGKILL and SIGTERM, config checks."""

import json
from pathlib import Path
import re
import signal
import subprocess
import sys
import time

import pytest
import torch

from conftest import REPO, assert_one_line_error, run_flatmix, tensorboard_scalars
from test_progress import plain_lines

BIN = Path(sys.executable).parent


def _flatmix_cmd(*args):
    return [str(BIN / "flatmix"), *map(str, args)]


def _pretrain_args(data, out, *sets, preset="smoke-moco-mix"):
    args = ["pretrain", "--preset", preset, "--set", f"data.root={data}", "--out", out]
    for s in sets:
        args += ["--set", s]
    return args


def _state(path):
    return torch.load(path, map_location="cpu", weights_only=True)["state_dict"]


def _assert_same_weights(a, b):
    sa, sb = _state(a), _state(b)
    assert sa.keys() == sb.keys()
    for key in sa:
        assert torch.equal(sa[key], sb[key]), key


def _losses(run_dir):
    """The step lines of metrics.jsonl (the kNN monitor's epoch lines carry no loss)."""
    lines = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    return [r for r in lines if "loss" in r]


def test_ddp_invariants_on_two_cpu_processes():
    result = subprocess.run([str(BIN / "torchrun"), "--nproc_per_node=2", str(REPO / "tests" / "ddp_check.py")],
                            capture_output=True, text=True)
    assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-4000:]
    assert result.stdout.count("DDP checks passed") == 2


@pytest.mark.parametrize("preset,loader", [("smoke-moco-mix", "pil"), ("smoke-cmc-mix", "pil"),
                                           ("smoke-moco-mix", "gpu")])
def test_pretrain_under_torchrun(synth_root, tmp_path, preset, loader):
    args = _pretrain_args(synth_root / "imagenet", tmp_path / "run", "train.epochs=1", "model.arch=resnet_tiny",
                          f"data.loader={loader}", "data.workers=1", preset=preset)
    result = subprocess.run([str(BIN / "torchrun"), "--nproc_per_node=2", "-m", "flatmix", *args],
                            capture_output=True, text=True)
    assert result.returncode == 0, result.stderr[-4000:]
    state = torch.load(tmp_path / "run" / "checkpoint.pth", weights_only=True)
    assert state["method"] == preset.split("-")[1]
    assert len(torch.load(tmp_path / "run" / "last.pth", weights_only=True)["rng"]) == 2
    summary = json.loads((tmp_path / "run" / "summary.json").read_text())
    digests = summary["parameters_sha256_by_rank"]
    assert summary["processes"] == 2 and len(digests) == 2 and digests[0] == digests[1]


@pytest.fixture(scope="module")
def uninterrupted(synth_root, tmp_path_factory):
    out = tmp_path_factory.mktemp("uninterrupted")
    result = run_flatmix(*_pretrain_args(synth_root / "imagenet", out, "train.epochs=3"))
    assert result.returncode == 0, result.stderr[-3000:]
    return out


def _wait_for(predicate, proc, timeout=120):
    start = time.time()
    while not predicate():
        assert proc.poll() is None, proc.stderr.read()[-3000:]
        assert time.time() - start < timeout
        time.sleep(0.05)


def test_sigkill_after_first_epoch_then_restart_is_bitwise_identical(synth_root, tmp_path, uninterrupted):
    args = _pretrain_args(synth_root / "imagenet", tmp_path, "train.epochs=3")
    proc = subprocess.Popen(_flatmix_cmd(*args), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    _wait_for(lambda: (tmp_path / "last.pth").exists(), proc)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert not (tmp_path / "checkpoint.pth").exists()
    last = torch.load(tmp_path / "last.pth", weights_only=True)
    assert last["epoch"] >= 1
    with open(tmp_path / "metrics.jsonl", "a") as f:  # what a kill leaves: steps past last.pth, a torn line
        f.write(json.dumps({"epoch": last["epoch"], "step": 1, "loss": 9.0}) + '\n{"epoch": 2, "st')
    result = run_flatmix(*args)
    assert result.returncode == 0, result.stderr[-3000:]
    _assert_same_weights(tmp_path / "checkpoint.pth", uninterrupted / "checkpoint.pth")
    steps = [(r["epoch"], r["step"]) for r in _losses(tmp_path)]
    assert steps == [(r["epoch"], r["step"]) for r in _losses(uninterrupted)]  # each step once
    # TensorBoard too: the killed run's events past last.pth are purged, each step is shown once
    board = tensorboard_scalars(tmp_path / "tensorboard")["pretrain/loss"]
    assert [step for step, _ in board] == [step for step, _ in tensorboard_scalars(uninterrupted / "tensorboard")
                                           ["pretrain/loss"]]
    assert [v for _, v in board] == pytest.approx([r["loss"] for r in _losses(tmp_path)])


def test_sigterm_mid_epoch_saves_and_resumes_exactly(synth_root, tmp_path, uninterrupted):
    args = _pretrain_args(synth_root / "imagenet", tmp_path, "train.epochs=3")
    proc = subprocess.Popen(_flatmix_cmd(*args), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    _wait_for(lambda: (tmp_path / "metrics.jsonl").exists() and len(_losses(tmp_path)) >= 3, proc)
    proc.send_signal(signal.SIGTERM)
    assert proc.wait(timeout=120) == 143
    last = torch.load(tmp_path / "last.pth", weights_only=True)
    assert (last["epoch"], last["step"]) != (0, 0)
    result = run_flatmix(*args)
    assert result.returncode == 0, result.stderr[-3000:]
    _assert_same_weights(tmp_path / "checkpoint.pth", uninterrupted / "checkpoint.pth")


def test_changed_config_is_refused_on_resume(synth_root, uninterrupted):
    result = run_flatmix(*_pretrain_args(synth_root / "imagenet", uninterrupted, "train.epochs=3", "train.lr=0.1"))
    assert_one_line_error(result, "train.lr")


def test_a_key_added_since_a_run_began_counts_as_its_default():
    """An upgraded flatmix continues a run whose last.pth predates a key (model.bn_splits, moco.symmetric):
    the key at its default is no difference, at another value it is."""
    import copy
    from flatmix.presets import DEFAULTS
    from flatmix.pretrain import _config_difference
    saved = copy.deepcopy(DEFAULTS)
    del saved["model"]["bn_splits"], saved["moco"]["symmetric"]
    cfg = copy.deepcopy(DEFAULTS)
    assert _config_difference(saved, cfg) == []
    cfg["model"]["bn_splits"] = 2
    assert _config_difference(saved, cfg) == ["model.bn_splits"]


@pytest.mark.parametrize("preset,sets", [("smoke-moco", ["moco.aug=v2"]), ("smoke-cmc", [])])
def test_loss_falls_over_a_few_epochs(synth_root, tmp_path, preset, sets):
    """CMC's loss falls from the start. MoCo's first rises while its random initial queue (easy
    negatives) fills with real keys, then falls; at 32 pixels MoCo v1's hue jitter of 0.4 leaves too
    little to learn in a few CPU epochs, so MoCo is shown with v2's augmentation."""
    result = run_flatmix(*_pretrain_args(synth_root / "imagenet", tmp_path, "train.epochs=8", "train.milestones=[]",
                                         "model.arch=resnet_tiny", *sets, preset=preset))
    assert result.returncode == 0, result.stderr[-3000:]
    by_epoch = {}
    for r in _losses(tmp_path):
        by_epoch.setdefault(r["epoch"], []).append(r["loss"])
    means = [sum(v) / len(v) for _, v in sorted(by_epoch.items())]
    assert len(means) == 8
    assert means[-1] < max(means) - 0.05, means
    if preset == "smoke-cmc":
        assert means[-1] < means[0] - 1.0, means
    config = (tmp_path / "config.yaml").read_text()
    assert f"root: {synth_root / 'imagenet'}" in config


def test_progress_off_a_terminal_is_plain_lines_with_top1_and_data_wait(synth_root, tmp_path):
    """Under Snakemake stderr is the rule's log: lines a person can read rather than a bar's carriage
    returns; contrastive top-1 and the data-wait share also go to metrics.jsonl."""
    result = run_flatmix(*_pretrain_args(synth_root / "imagenet", tmp_path, "model.arch=resnet_tiny", "train.epochs=1",
                                         preset="smoke-moco"))
    assert result.returncode == 0, result.stderr[-3000:]
    lines = plain_lines(result.stderr, "pretrain")
    metrics = _losses(tmp_path)
    steps = metrics[-1]["step"]
    assert len(lines) >= 2 and lines[-1].startswith(f"pretrain epoch 1/1 step {steps}/{steps} ")  # and the first
    for line in lines:
        assert re.match(r"pretrain epoch 1/1 step \d+/\d+ loss \d+\.\d{4} acc1 \d+\.\d% lr [\d.e-]+ [\d,.]+ pairs/s ",
                        line), line
    assert len(metrics) == steps  # log_every 1
    assert all(0 <= m["acc1"] <= 100 and 0 <= m["data_wait"] <= 1 for m in metrics), metrics


@pytest.mark.parametrize("args,fragments", [
    (["--preset", "smoke-mocco"], ["smoke-mocco", "smoke-moco"]),
    (["--preset", "smoke-moco", "--set", "train.epoch=3"], ["train.epoch", "train.epochs"]),
    (["--preset", "smoke-moco", "--set", "train.epochs=three"], ["train.epochs", "int"]),
    (["--preset", "smoke-moco"], ["data.root"]),
])
def test_bad_run_specs(tmp_path, args, fragments):
    assert_one_line_error(run_flatmix("pretrain", *args, "--out", tmp_path / "o"), *fragments)
    assert not (tmp_path / "o" / "checkpoint.pth").exists()


@pytest.mark.parametrize("mixes", [1, 3])
def test_a_training_step_draws_mixes_steps_per_level_once_for_both_views(mixes):
    from flatmix.distributed import Distributed
    from flatmix.presets import DEFAULTS, PRESETS
    from flatmix.pretrain import build_training, training_step
    from flatmix.runconfig import resolve
    cfg = resolve(DEFAULTS, PRESETS, preset="smoke-moco", sets=[
        "model.arch=resnet_tiny", f"mixture.global.mixes={mixes}", "mixture.global.p=1",
        f"mixture.region.mixes={mixes}", "mixture.region.p=1"])
    model, optimizer, mixer = build_training(cfg, Distributed("cpu"), n_data=16)
    draws, draw = [], mixer.draw
    mixer.draw = lambda *args: draws.append(draw(*args)) or draws[-1]
    loss, acc1 = training_step(cfg, model, optimizer, mixer,
                               [torch.randn(16, 3, 32, 32), torch.randn(16, 3, 32, 32)], torch.arange(16))
    assert torch.isfinite(loss) and 0 <= acc1 <= 100
    assert len(draws) == 1  # the query and key views share one draw (joint views)
    assert draws[0].global_partners.shape == draws[0].region_partners.shape == (mixes, 16)
