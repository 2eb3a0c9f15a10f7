"""The linear probe (frozen backbone, protocol, resume) and Figure 5."""

import json
import re
import signal
import subprocess
import time

import pytest
import torch

from flatmix import linear
from flatmix.convert import extract_all
from flatmix.models.cmc import CMC
from flatmix.models.moco import MoCo
from conftest import assert_one_line_error, run_flatmix, tensorboard_scalars
from test_pretrain import BIN
from test_progress import plain_lines


def _flatmix_checkpoint(path, method, seed=0):
    torch.manual_seed(seed)
    model = MoCo("resnet_tiny", dim=16, K=32) if method == "moco" else CMC(10, arch="resnet_tiny", dim=16, K=4)
    with torch.no_grad():  # non-trivial BN statistics, so that a BN left in train mode would show
        for name, buffer in model.named_buffers():
            if name.endswith("running_mean"):
                buffer.uniform_(-0.3, 0.3)
    torch.save({"format": "flatmix-pretrain/1", "method": method, "arch": "resnet_tiny",
                "config": {"cmc": {"colour": "YCbCr"}}, "state_dict": model.state_dict()}, path)
    return path


@pytest.fixture(scope="module")
def prepared(synth_root, tmp_path_factory):
    out = tmp_path_factory.mktemp("in100")
    result = run_flatmix("prepare", "imagenet100", "--imagenet-root", synth_root / "imagenet", "--out", out)
    assert result.returncode == 0, result.stderr
    return out


PROBE_ARGS = dict(epochs=2, batch_size=32, image_size=32, workers=0, lr=0.1)


@pytest.mark.parametrize("method", ["moco", "cmc"])
def test_probe_leaves_the_backbone_bitwise_unchanged(prepared, tmp_path, monkeypatch, method):
    ckpt = _flatmix_checkpoint(tmp_path / "ckpt.pth", method)
    probes = []

    class RecordingProbe(linear.LinearProbe):
        def __init__(self, *args, **kw):
            super().__init__(*args, **kw)
            probes.append(self)

    monkeypatch.setattr(linear, "LinearProbe", RecordingProbe)
    metrics = linear.run(ckpt, prepared, tmp_path / "probe", **PROBE_ARGS)
    original = extract_all(ckpt)
    (probe,) = probes
    assert len(probe.encoders) == len(original) == (2 if method == "cmc" else 1)
    for encoder, backbone in zip(probe.encoders, original):
        state = encoder.state_dict()
        assert state.keys() == backbone.state.keys()
        assert all(torch.equal(state[k], backbone.state[k]) for k in state)  # weights and BN statistics
    assert probe.feature_dim == 256 * len(original)
    assert 0 <= metrics["top1"] <= metrics["top5"] <= 100
    on_disk = json.loads((tmp_path / "probe" / "metrics.json").read_text())
    assert on_disk["top1"] == metrics["top1"] and on_disk["protocol"] == "imagenet100"
    assert on_disk["method"] == method and on_disk["val_images"] == 100
    assert not on_disk["diverged"] and [h["epoch"] for h in on_disk["history"]] == [1, 2]
    assert on_disk["history"][-1]["top1"] == on_disk["top1"]  # the last epoch's validation is the result


def test_protocol_defaults_follow_the_data_set():
    assert linear.PROTOCOLS["imagenet100"] == {"lr": 10.0, "epochs": 60, "milestones": [30, 40, 50]}
    assert linear.PROTOCOLS["imagenet1k"] == {"lr": 30.0, "epochs": 100, "milestones": [60, 80, 90]}


def test_probe_resumes_exactly_after_a_kill(prepared, tmp_path):
    ckpt = _flatmix_checkpoint(tmp_path / "ckpt.pth", "moco")
    args = ["linear", "--backbone", ckpt, "--data", prepared, "--epochs", "4", "--batch-size", "16",
            "--image-size", "32", "--workers", "0", "--lr", "1"]
    assert run_flatmix(*args, "--out", tmp_path / "a").returncode == 0
    proc = subprocess.Popen([str(BIN / "flatmix"), *map(str, args), "--out", str(tmp_path / "b")],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    start = time.time()
    while not (tmp_path / "b" / "last.pth").exists():
        assert proc.poll() is None and time.time() - start < 120
        time.sleep(0.05)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert run_flatmix(*args, "--out", tmp_path / "b").returncode == 0
    a = torch.load(tmp_path / "a" / "linear.pth", weights_only=True)["head"]
    b = torch.load(tmp_path / "b" / "linear.pth", weights_only=True)["head"]
    assert all(torch.equal(a[k], b[k]) for k in a)
    history_a, history_b = (json.loads((tmp_path / d / "metrics.json").read_text())["history"] for d in "ab")
    assert history_a == history_b and [h["epoch"] for h in history_a] == [1, 2, 3, 4]  # kept across the kill
    board = tensorboard_scalars(tmp_path / "b" / "tensorboard")  # the history as TensorBoard scalars, each epoch once
    assert board["linear/top1"] == [(h["epoch"], pytest.approx(h["top1"])) for h in history_b]
    assert [step for step, _ in board["linear/loss"]] == [1, 2, 3, 4]


def test_probe_progress_off_a_terminal_is_plain_lines(prepared, tmp_path):
    ckpt = _flatmix_checkpoint(tmp_path / "ckpt.pth", "moco")
    result = run_flatmix("linear", "--backbone", ckpt, "--data", prepared, "--epochs", "2", "--batch-size", "32",
                         "--image-size", "32", "--workers", "0", "--out", tmp_path / "probe")
    assert result.returncode == 0, result.stderr[-3000:]
    lines = plain_lines(result.stderr, "linear")
    for epoch in (1, 2):  # each epoch's end at least
        assert any(re.match(rf"linear epoch {epoch}/2 step (\d+)/\1 loss \d+\.\d{{4}} lr [\d.e-]+ [\d,.]+ img/s ", line)
                   for line in lines), lines


def test_probe_bad_inputs(prepared, tmp_path):
    ckpt = _flatmix_checkpoint(tmp_path / "ckpt.pth", "moco")
    assert_one_line_error(run_flatmix("linear", "--backbone", ckpt, "--data", tmp_path / "nowhere",
                                      "--out", tmp_path / "o"), "nowhere")
    torch.save({"optimizer": {"lr": 0.1}}, tmp_path / "not-a-backbone.pth")
    assert_one_line_error(run_flatmix("linear", "--backbone", tmp_path / "not-a-backbone.pth", "--data", prepared,
                                      "--out", tmp_path / "o"), "not-a-backbone.pth")
    assert not (tmp_path / "o" / "metrics.json").exists()


def test_figure5_png_and_json(prepared, tmp_path):
    a = _flatmix_checkpoint(tmp_path / "a.pth", "moco", seed=1)
    b = _flatmix_checkpoint(tmp_path / "b.pth", "moco", seed=2)
    title = r"Figure 5 on ImageNet-100 (not the paper's setting: a test, $\frac{$ and $(touch x) as plain text)"
    result = run_flatmix("flatness", "--backbone", f"MoCo={a}", "--backbone", f"MoCo + mixtures={b}",
                         "--data", prepared, "--out", tmp_path / "fig", "--image-size", "32", "--workers", "0",
                         "--title", title)
    assert result.returncode == 0, result.stderr
    assert (tmp_path / "fig" / "flatness.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    doc = json.loads((tmp_path / "fig" / "flatness.json").read_text())
    assert doc["title"] == title
    for m in doc["models"].values():
        curve = m["curve"]
        assert len(curve) == 256 and m["images"] == 100
        assert abs(sum(curve) - 1) < 1e-6 and curve == sorted(curve, reverse=True)
        assert m["max_probability"] == curve[0]
    assert_one_line_error(run_flatmix("flatness", "--backbone", str(a), "--data", prepared, "--out", tmp_path / "x"),
                          "NAME=CHECKPOINT")


def test_figure5_progress_off_a_terminal_is_plain_lines(prepared, tmp_path):
    (tmp_path / "run-a").mkdir()
    a = _flatmix_checkpoint(tmp_path / "run-a" / "checkpoint.pth", "moco")
    result = run_flatmix("flatness", "--backbone", f"A={a}", "--data", prepared, "--out", tmp_path / "fig",
                         "--image-size", "32", "--workers", "0", "--batch-size", "16")
    assert result.returncode == 0, result.stderr[-3000:]
    lines = plain_lines(result.stderr, "flatness run-a")
    assert lines and re.match(r"flatness run-a batch 7/7 [\d,.]+ img/s ", lines[-1]), lines  # 100 images


def test_probe_under_torchrun(prepared, tmp_path):
    ckpt = _flatmix_checkpoint(tmp_path / "ckpt.pth", "cmc")
    result = subprocess.run([str(BIN / "torchrun"), "--nproc_per_node=2", "-m", "flatmix", "linear",
                             "--backbone", str(ckpt), "--data", str(prepared), "--out", str(tmp_path / "probe"),
                             "--epochs", "1", "--batch-size", "32", "--image-size", "32", "--workers", "0"],
                            capture_output=True, text=True)
    assert result.returncode == 0, result.stderr[-3000:]
    metrics = json.loads((tmp_path / "probe" / "metrics.json").read_text())
    assert metrics["processes"] == 2 and metrics["val_images"] == 100  # every image counted once
    assert metrics["train_images"] % 32 and len(metrics["history"]) == 1  # 200 images: a partial last batch


def test_divergence_rule():
    def history(*losses):
        return [{"epoch": i + 1, "loss": loss} for i, loss in enumerate(losses)]

    assert not linear.diverged(history(4.6, 5.0, 3.1))  # a bump that comes down
    assert not linear.diverged(history(4.6, 4.6))  # a plateau
    assert linear.diverged(history(10.0, 1e3, 1e5))
    assert linear.diverged(history(4.6, None))  # not finite


def test_probe_flags_a_diverged_loss(prepared, tmp_path):
    ckpt = _flatmix_checkpoint(tmp_path / "ckpt.pth", "moco")
    metrics = linear.run(ckpt, prepared, tmp_path / "probe", **dict(PROBE_ARGS, lr=1e4))
    on_disk = json.loads((tmp_path / "probe" / "metrics.json").read_text())
    assert on_disk["diverged"] is True and on_disk["top1"] is None and on_disk["top5"] is None
    assert metrics["top1"] is None and len(on_disk["history"]) == 2  # the losses stay for the record


def test_probe_trains_on_fewer_images_than_a_batch(prepared, tmp_path):
    ckpt = _flatmix_checkpoint(tmp_path / "ckpt.pth", "moco")
    metrics = linear.run(ckpt, prepared, tmp_path / "probe", **dict(PROBE_ARGS, epochs=1, batch_size=256))
    assert metrics["train_images"] < 256 and len(metrics["history"]) == 1
    assert 0 <= metrics["top1"] <= 100


def test_feature_norm_makes_the_probe_indifferent_to_the_features_scale(prepared, tmp_path, monkeypatch):
    """The smoke probe's --feature-norm: features 300x larger (a 2-epoch mixed run's, against a plain
    run's) train the same probe, where the protocol's raw features diverge at the same lr."""
    ckpt = _flatmix_checkpoint(tmp_path / "ckpt.pth", "moco")
    normalised = linear.run(ckpt, prepared, tmp_path / "normalised", **PROBE_ARGS, feature_norm=True)
    features = linear.LinearProbe.features
    monkeypatch.setattr(linear.LinearProbe, "features", lambda self, x: 300 * features(self, x))
    scaled = linear.run(ckpt, prepared, tmp_path / "scaled", **PROBE_ARGS, feature_norm=True)
    assert [h["loss"] for h in scaled["history"]] == pytest.approx([h["loss"] for h in normalised["history"]], rel=1e-3)
    assert not scaled["diverged"] and scaled["feature_norm"] is True
    assert linear.run(ckpt, prepared, tmp_path / "raw", **PROBE_ARGS)["diverged"]


def test_feature_norm_refuses_a_last_batch_of_one(prepared, tmp_path):
    images = sum(1 for _ in (prepared / "train").glob("*/*"))
    ckpt = _flatmix_checkpoint(tmp_path / "ckpt.pth", "moco")
    result = run_flatmix("linear", "--backbone", ckpt, "--data", prepared, "--out", tmp_path / "o", "--feature-norm",
                         "--batch-size", images - 1, "--epochs", 1, "--image-size", 32, "--workers", 0)
    assert_one_line_error(result, "--batch-size", "last batch of one image")
    assert not (tmp_path / "o").exists()
