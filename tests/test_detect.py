"""Detection: the paper's settings in the written mmdetection configs, and a real smoke training run."""

import json
from pathlib import Path
import pickle
import re
import subprocess
import sys

from mmengine.config import Config
from mmengine.runner import CheckpointLoader
import pytest
import torch

from flatmix.checkpoint_io import load_checkpoint
from flatmix.detect.configs import MMDET_CONFIGS
from flatmix.detect.runner import MMENGINE_GLOBALS
from flatmix.errors import FlatmixError
from flatmix.models.resnet import build_resnet
from conftest import assert_one_line_error, run_flatmix, tensorboard_scalars
from test_checkpoint_io import Planted
from test_progress import plain_lines


@pytest.fixture(scope="module")
def backbone(tmp_path_factory):
    path = tmp_path_factory.mktemp("bb") / "r50.pth"
    torch.manual_seed(0)
    torch.save(build_resnet("resnet50").state_dict(), path)  # a torchvision-format ResNet-50
    return path


def _dry_run(task, backbone, data, bn, out, *extra):
    result = run_flatmix("detect", task, "--backbone", backbone, "--data", data, "--bn", bn, "--out", out,
                         "--dry-run", *extra)
    assert result.returncode == 0, result.stderr[-3000:]
    assert not (out / "metrics.json").exists()
    return Config.fromfile(str(out / "config.py"))


def _datasets(cfg_node):
    """The innermost dataset dicts of a dataloader config (through Repeat/Concat wrappers)."""
    d = cfg_node["dataset"]
    while "dataset" in d:
        d = d["dataset"]
    return d.get("datasets", [d])


@pytest.mark.parametrize("task,bn", [("voc-faster-rcnn", "train"), ("voc-faster-rcnn", "frozen"),
                                     ("coco-retinanet", "frozen"), ("coco-mask-rcnn", "frozen")])
def test_paper_settings_in_config(synth_root, backbone, tmp_path, task, bn):
    voc = task.startswith("voc")
    data = synth_root / ("VOCdevkit" if voc else "coco")
    cfg = _dry_run(task, backbone, data, bn, tmp_path / "run")
    b = cfg.model.backbone
    assert (b.type, b.depth, b.style, b.frozen_stages) == ("ResNet", 50, "pytorch", -1)
    # the backbone read from the checkpoint itself, converted in memory: no copy of it in the run's folder
    assert b.init_cfg == dict(type="Pretrained", checkpoint=f"flatmix://{backbone.resolve()}")
    assert not (tmp_path / "run" / "backbone.pth").exists()
    loaded = CheckpointLoader.load_checkpoint(b.init_cfg["checkpoint"])  # the scheme config.py imports
    assert loaded["state_dict"]["conv1.weight"].shape == (64, 3, 7, 7)
    if bn == "train":
        assert b.norm_cfg == dict(type="BN", requires_grad=True) and b.norm_eval is False
    else:
        assert b.norm_cfg == dict(type="BN", requires_grad=False) and b.norm_eval is True
    assert cfg.model.neck.type == "FPN" and cfg.model.neck.norm_cfg is None
    assert cfg.auto_scale_lr == dict(enable=True, base_batch_size=16)
    resizes = [t for t in _datasets(cfg.train_dataloader)[0]["pipeline"] if t["type"] == "Resize"]
    test_resizes = [t for t in cfg.test_dataloader.dataset.pipeline if t["type"] == "Resize"]
    if voc:
        assert resizes[0]["scale"] == test_resizes[0]["scale"] == (1000, 600)
        assert cfg.train_dataloader.dataset.times * cfg.train_cfg.max_epochs == 12
        anns = sorted(d["ann_file"] for d in _datasets(cfg.train_dataloader))
        assert anns == ["VOC2007/ImageSets/Main/trainval.txt", "VOC2012/ImageSets/Main/trainval.txt"]
        assert cfg.test_dataloader.dataset.ann_file == "VOC2007/ImageSets/Main/test.txt"
        assert cfg.test_evaluator.type == "VOCMetricWithRecall"
        assert cfg.model.roi_head.bbox_head.num_classes == 20
    else:
        assert resizes[0]["scale"] == test_resizes[0]["scale"] == (1333, 800)
        assert cfg.train_cfg.max_epochs == 12
        assert [s for s in cfg.param_scheduler if s["type"] == "MultiStepLR"][0]["milestones"] == [8, 11]
        assert cfg.optim_wrapper.optimizer.lr == 0.02
        assert cfg.train_dataloader.dataset.ann_file == "annotations/instances_train2017.json"
        assert cfg.test_dataloader.dataset.ann_file == "annotations/instances_val2017.json"
        metrics = cfg.test_evaluator.metric
        assert metrics == (["bbox", "segm"] if task == "coco-mask-rcnn" else "bbox")
    assert all(d["data_root"].rstrip("/") == str(data.resolve()) for d in _datasets(cfg.train_dataloader))
    # override.py, mmdetection's own style: the task's config as _base_, then only what changes; it expands
    # to exactly config.py (less the mmdet scope mmengine marks a package's base with)
    override = (tmp_path / "run" / "override.py").read_text()
    assert "_base_ = 'mmdet::" in override and len(override.splitlines()) < len(cfg.pretty_text.splitlines()) / 4
    assert _without_scope(Config.fromfile(str(tmp_path / "run" / "override.py")).to_dict()) == cfg.to_dict()


def _without_scope(node):
    if isinstance(node, dict):
        return {k: _without_scope(v) for k, v in node.items() if k != "_scope_"}
    if isinstance(node, (list, tuple)):
        return type(node)(_without_scope(v) for v in node)
    return node


def test_random_backbone_and_bad_inputs(synth_root, backbone, tmp_path):
    cfg = _dry_run("voc-faster-rcnn", "random", synth_root / "VOCdevkit", "frozen", tmp_path / "random")
    assert cfg.model.backbone.init_cfg is None
    assert_one_line_error(run_flatmix("detect", "coco-retinanet", "--backbone", backbone, "--data",
                                      tmp_path / "nowhere", "--bn", "frozen", "--out", tmp_path / "o"), "nowhere")
    torch.save({"epoch": 3}, tmp_path / "junk.pth")
    assert_one_line_error(run_flatmix("detect", "coco-retinanet", "--backbone", tmp_path / "junk.pth", "--data",
                                      synth_root / "coco", "--bn", "frozen", "--out", tmp_path / "o"), "junk.pth")
    assert not (tmp_path / "o" / "metrics.json").exists()


@pytest.mark.parametrize("where", ["work/planted.pth", "outside.pth"])
def test_resume_refuses_a_planted_checkpoint(synth_root, backbone, tmp_path, where):
    """last_checkpoint naming a pickle in DIR/work (refused by the weights_only loader) or outside DIR/work
    (refused by name, even through `..`): one line, before any training, and the pickle never runs."""
    work = tmp_path / "run" / "work"
    work.mkdir(parents=True)
    planted = tmp_path / "run" / where
    planted.write_bytes(pickle.dumps({"meta": {"epoch": 1}, "state_dict": Planted(tmp_path / "marker")}, protocol=2))
    (work / "last_checkpoint").write_text(str(work / ".." / where))
    result = run_flatmix("detect", "voc-faster-rcnn", "--backbone", backbone, "--data", synth_root / "VOCdevkit",
                         "--bn", "frozen", "--out", tmp_path / "run", "--scale", "smoke")
    assert_one_line_error(result, where.split("/")[-1], "refus")
    assert result.returncode == 2
    assert not (tmp_path / "marker").exists()
    assert not (tmp_path / "run" / "metrics.json").exists()


class GetattrEscape:
    """getattr(getattr, "__self__") is the builtins module: what a plain builtins.getattr allowlist would allow."""

    def __reduce__(self):
        return getattr, (getattr, "__self__")


def test_mmengine_allowlist_resolves_only_history_buffer_methods(tmp_path):
    torch.save({"message_hub": {"statistics_methods": {"mean": GetattrEscape()}}}, tmp_path / "escape.pth")
    with pytest.raises(FlatmixError, match="escape.pth: .*getattr.*refused"):
        load_checkpoint(tmp_path / "escape.pth", MMENGINE_GLOBALS)


def test_mmdet_ships_the_base_configs():
    assert (MMDET_CONFIGS / "pascal_voc" / "faster-rcnn_r50_fpn_1x_voc0712.py").is_file()


@pytest.mark.slow
def test_faster_rcnn_trains_and_evaluates_at_smoke_scale(synth_root, backbone, tmp_path):
    result = run_flatmix("detect", "voc-faster-rcnn", "--backbone", backbone, "--data", synth_root / "VOCdevkit",
                         "--bn", "train", "--out", tmp_path / "run", "--scale", "smoke", "--keep-checkpoints")
    assert result.returncode == 0, result.stderr[-3000:]
    metrics = json.loads((tmp_path / "run" / "metrics.json").read_text())
    assert 0 <= metrics["AP50"] <= 100 and 0 <= metrics["recall"] <= 100
    assert (tmp_path / "run" / "work" / "last_checkpoint").is_file()  # kept, as asked: the resume below
    # flatmix's progress lines, training to its last iteration and the test to its last batch; mmengine's
    # INFO lines (the environment, the config, every interval) in its log file, not on the terminal
    train = plain_lines(result.stderr, "detect voc-faster-rcnn iter")
    test = plain_lines(result.stderr, "detect voc-faster-rcnn test")
    assert train and re.match(r"detect voc-faster-rcnn iter (\d+)/\1 epoch 1 loss [\d.]+ lr ", train[-1]), train
    assert test and re.match(r"detect voc-faster-rcnn test batches (\d+)/\1 ", test[-1]), test
    assert "System environment" not in result.stdout + result.stderr and len(result.stdout.splitlines()) < 20
    [log] = (tmp_path / "run" / "work").glob("*/*.log")
    assert "System environment" in log.read_text() and "Epoch(train)" in log.read_text()
    # mmengine's TensorBoard backend
    events = list((tmp_path / "run" / "work").glob("*/vis_data/events.out.tfevents.*"))
    assert events and {"loss", "lr"} <= set(tensorboard_scalars(events[0].parent)), events
    # a restart resumes from mmengine's own checkpoint (torch.load of mmengine's objects) and finishes
    (tmp_path / "run" / "metrics.json").unlink()
    again = run_flatmix("detect", "voc-faster-rcnn", "--backbone", backbone, "--data", synth_root / "VOCdevkit",
                        "--bn", "train", "--out", tmp_path / "run", "--scale", "smoke")
    assert again.returncode == 0, again.stderr[-3000:]
    assert any("resumed epoch: 1" in log.read_text() for log in (tmp_path / "run" / "work").glob("*/*.log"))
    assert json.loads((tmp_path / "run" / "metrics.json").read_text())["AP50"] == metrics["AP50"]
    # by default a finished run leaves no resume point (a rerun with a new backbone must train afresh):
    # the checkpoints go, the logs and TensorBoard events stay
    work = tmp_path / "run" / "work"
    assert not (work / "last_checkpoint").exists() and not list(work.glob("*.pth"))
    assert list(work.glob("*/vis_data/events.out.tfevents.*")) and list(work.glob("*/*.log"))


@pytest.mark.slow
def test_retinanet_under_torchrun_on_two_cpu_processes(synth_root, backbone, tmp_path):
    bin_dir = Path(sys.executable).parent
    result = subprocess.run([str(bin_dir / "torchrun"), "--nproc_per_node=2", "-m", "flatmix", "detect",
                             "coco-retinanet", "--backbone", str(backbone), "--data", str(synth_root / "coco"),
                             "--bn", "frozen", "--out", str(tmp_path / "run"), "--scale", "smoke"],
                            capture_output=True, text=True)
    assert result.returncode == 0, result.stderr[-3000:]
    metrics = json.loads((tmp_path / "run" / "metrics.json").read_text())
    assert metrics["processes"] == 2 and metrics["bbox_AP"] is not None


def test_detector_starts_from_the_checkpoint_weights(synth_root, backbone, tmp_path):
    """mmdetection's own init, through the config's flatmix:// scheme, puts the checkpoint's weights into
    the detector's ResNet (converted in memory, not read from a copy)."""
    from mmdet.registry import MODELS
    from mmdet.utils import register_all_modules

    cfg = _dry_run("voc-faster-rcnn", backbone, synth_root / "VOCdevkit", "frozen", tmp_path / "run")
    register_all_modules()
    detector = MODELS.build(cfg.model)
    detector.init_weights()
    source = torch.load(backbone, weights_only=True)
    for name, value in detector.backbone.state_dict().items():
        if name in source:  # every tensor of the ResNet (mmdetection's names are torchvision's)
            assert torch.equal(value, source[name]), name
    assert sum(name in source for name in detector.backbone.state_dict()) == len(source) - 2  # all but fc


def test_a_hostile_checkpoint_path_stays_one_string_in_both_configs(synth_root, backbone, tmp_path):
    """config.py and override.py are Python that mmengine executes: a checkpoint and output folder named
    with quotes, `$(...)` and `;` come back as the very path, and nothing of the name runs."""
    hostile = tmp_path / "h 'q\" $(touch PWNED) ;x"
    hostile.mkdir()
    (hostile / "r50.pth").write_bytes(backbone.read_bytes())
    cfg = _dry_run("voc-faster-rcnn", hostile / "r50.pth", synth_root / "VOCdevkit", "frozen", hostile / "out")
    override = Config.fromfile(str(hostile / "out" / "override.py"))
    for c in (cfg, override):
        assert c.model.backbone.init_cfg.checkpoint == f"flatmix://{hostile / 'r50.pth'}"
    assert CheckpointLoader.load_checkpoint(cfg.model.backbone.init_cfg.checkpoint)["state_dict"]
    assert not list(tmp_path.rglob("PWNED")) and not Path("PWNED").exists()
