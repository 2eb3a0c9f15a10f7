"""Conversion from every checkpoint format users bring: converted features equal the source encoder's."""

import argparse
import pickle

from mmdet.models.backbones import ResNet as MMDetResNet
import pytest
import torch
from torch import nn
import torchvision

from flatmix.convert import convert
from flatmix.errors import FlatmixError
from flatmix.models.resnet import build_resnet
from conftest import assert_one_line_error, run_flatmix


def _random_resnet(arch="resnet50", in_channels=3, seed=0):
    """A ResNet with random weights and non-trivial BN statistics, in eval mode."""
    torch.manual_seed(seed)
    net = build_resnet(arch, num_classes=128, in_channels=in_channels)
    with torch.no_grad():
        for m in net.modules():
            if isinstance(m, nn.BatchNorm2d):
                m.running_mean.uniform_(-0.5, 0.5)
                m.running_var.uniform_(0.5, 2.0)
                m.weight.uniform_(0.5, 1.5)
                m.bias.uniform_(-0.2, 0.2)
                m.num_batches_tracked.fill_(7)
    return net.eval()


def _features(net, x):
    """Pooled features (fc removed) and the C5 map."""
    with torch.no_grad():
        c5 = net.layer4(net.layer3(net.layer2(net.layer1(net.maxpool(net.relu(net.bn1(net.conv1(x))))))))
        return torch.flatten(net.avgpool(c5), 1), c5


def _prefixed(state, prefix):
    return {prefix + k: v for k, v in state.items()}


def _formats(tmp_path):
    """{name: (path, view, source encoder)} for a checkpoint of every supported format."""
    q, k = _random_resnet(seed=1), _random_resnet(seed=2)
    l_half, ab_half = _random_resnet("resnet50half", 1, seed=3), _random_resnet("resnet50half", 2, seed=4)
    v2 = _random_resnet(seed=5)
    v2_state = {kk: vv for kk, vv in v2.state_dict().items() if not kk.startswith("fc.")}
    v2_state.update({"fc.0.weight": torch.randn(2048, 2048), "fc.0.bias": torch.randn(2048),
                     "fc.2.weight": torch.randn(128, 2048), "fc.2.bias": torch.randn(128)})
    opt = argparse.Namespace(view="YCbCr", nce_k=16384, model="resnet50v1", learning_rate=0.03)
    checkpoints = {
        "flatmix-moco": ({"format": "flatmix-pretrain/1", "method": "moco", "arch": "resnet50", "config": {},
                          "state_dict": {**_prefixed(q.state_dict(), "encoder_q."),
                                         **_prefixed(k.state_dict(), "encoder_k."),
                                         "queue": torch.randn(128, 64), "queue_ptr": torch.zeros(1, dtype=torch.long)}},
                         "", q),
        "flatmix-cmc-l": ({"format": "flatmix-pretrain/1", "method": "cmc", "arch": "resnet50half",
                           "config": {"cmc": {"colour": "YCbCr"}},
                           "state_dict": {**_prefixed(l_half.state_dict(), "l_to_ab."),
                                          **_prefixed(ab_half.state_dict(), "ab_to_l."),
                                          "memory_l": torch.randn(10, 128), "memory_ab": torch.randn(10, 128)}},
                          "l", l_half),
        "moco-v1": ({"epoch": 200, "arch": "resnet50",
                     "state_dict": {**_prefixed(q.state_dict(), "module.encoder_q."),
                                    **_prefixed(k.state_dict(), "module.encoder_k."),
                                    "module.queue": torch.randn(128, 64),
                                    "module.queue_ptr": torch.zeros(1, dtype=torch.long)},
                     "optimizer": {"state": {}, "param_groups": []}}, "", q),
        "moco-v2": ({"epoch": 200, "arch": "resnet50",
                     "state_dict": {**_prefixed(v2_state, "module.encoder_q."),
                                    **_prefixed(v2_state, "module.encoder_k.")}}, "", v2),
        "cmc-codebase-moco": ({"model": _prefixed(q.state_dict(), "encoder.module."),
                               "model_ema": _prefixed(k.state_dict(), "encoder.module."),
                               "contrast": {"params": torch.tensor([-1.0]), "memory": torch.randn(64, 128)},
                               "epoch": 240, "opt": opt}, "", q),
        "cmc-codebase-cmc-ab": ({"model": {**_prefixed(l_half.state_dict(), "module.l_to_ab."),
                                           **_prefixed(ab_half.state_dict(), "module.ab_to_l.")},
                                 "contrast": {"memory_l": torch.randn(10, 128)}, "epoch": 240, "opt": opt},
                                "ab", ab_half),
        "torchvision": (q.state_dict(), "", q),
        "mmdet": ({"state_dict": {**_prefixed(q.state_dict(), "backbone."),
                                  "neck.lateral_convs.0.conv.weight": torch.randn(256, 256, 1, 1),
                                  "rpn_head.rpn_conv.weight": torch.randn(256, 256, 3, 3)},
                   "meta": {"epoch": 12}}, "", q),
    }
    out = {}
    for name, (ckpt, view, net) in checkpoints.items():
        path = tmp_path / f"{name}.pth"
        torch.save(ckpt, path)
        out[name] = (path, view, net)
    return out


FORMATS = ["flatmix-moco", "flatmix-cmc-l", "moco-v1", "moco-v2", "cmc-codebase-moco", "cmc-codebase-cmc-ab",
           "torchvision", "mmdet"]


@pytest.fixture(scope="module")
def checkpoints(tmp_path_factory):
    return _formats(tmp_path_factory.mktemp("ckpts"))


@pytest.mark.parametrize("name", FORMATS)
def test_torchvision_target_gives_identical_features(checkpoints, tmp_path, name):
    path, view, source = checkpoints[name]
    convert(path, "torchvision", tmp_path / "tv.pth", view)
    state = torch.load(tmp_path / "tv.pth", weights_only=True)
    if source.conv1.weight.shape[:2] == (64, 3) and source.layer1[0].conv1.weight.shape[0] == 64:
        target = torchvision.models.resnet50()
    else:  # CMC halves: torchvision's ResNet class with CMC's widths
        target = build_resnet("resnet50half", in_channels=source.conv1.weight.shape[1])
    target.fc = nn.Identity()
    target.load_state_dict(state, strict=True)
    target.eval()
    x = torch.randn(2, source.conv1.weight.shape[1], 64, 64)
    assert torch.equal(_features(target, x)[0], _features(source, x)[0])


@pytest.mark.parametrize("name", FORMATS)
def test_mmdet_target_loads_through_init_cfg_with_identical_c5(checkpoints, tmp_path, name):
    path, view, source = checkpoints[name]
    convert(path, "mmdet", tmp_path / "mm.pth", view)
    converted = torch.load(tmp_path / "mm.pth", weights_only=True)
    cfg = {k: v for k, v in converted["meta"]["flatmix"]["mmdet_backbone"].items() if k != "type"}
    backbone = MMDetResNet(**cfg, out_indices=(3,), init_cfg=dict(type="Pretrained", checkpoint=str(tmp_path / "mm.pth")))
    backbone.init_weights()
    # no missing or unexpected key: the same names, and every tensor came from the checkpoint
    assert set(backbone.state_dict()) == set(converted["state_dict"])
    assert all(torch.equal(v, converted["state_dict"][k]) for k, v in backbone.state_dict().items())
    backbone.eval()
    x = torch.randn(2, source.conv1.weight.shape[1], 64, 64)
    with torch.no_grad():
        assert torch.equal(backbone(x)[0], _features(source, x)[1])


def test_detectron2_layout(checkpoints, tmp_path):
    path, _, source = checkpoints["moco-v1"]
    result = run_flatmix("convert", path, "--to", "detectron2", "--out", tmp_path / "d2.pkl")
    assert result.returncode == 0, result.stderr
    with open(tmp_path / "d2.pkl", "rb") as f:
        d2 = pickle.load(f)
    assert d2["matching_heuristics"] is True
    model = d2["model"]
    assert (model["stem.conv1.weight"] == source.conv1.weight.detach().numpy()).all()
    assert (model["stem.conv1.norm.running_var"] == source.bn1.running_var.numpy()).all()
    assert (model["res2.0.shortcut.weight"] == source.layer1[0].downsample[0].weight.detach().numpy()).all()
    assert (model["res5.2.conv3.norm.bias"] == source.layer4[2].bn3.bias.detach().numpy()).all()
    assert len(model) == len([k for k in source.state_dict() if not k.startswith("fc.")])


def test_wide_resnet_carries_its_width(tmp_path):
    wide = _random_resnet("resnet50w2")
    torch.save({"state_dict": _prefixed(wide.state_dict(), "module.encoder_q.")}, tmp_path / "w2.pth")
    convert(tmp_path / "w2.pth", "mmdet", tmp_path / "w2-mm.pth")
    meta = torch.load(tmp_path / "w2-mm.pth", weights_only=True)["meta"]["flatmix"]
    assert (meta["arch"], meta["mmdet_backbone"]["stem_channels"], meta["mmdet_backbone"]["base_channels"]) == \
        ("resnet50w2", 128, 128)


def test_cifar_resnet18_converts_for_torchvision_and_is_refused_by_mmdet(tmp_path):
    """The CIFAR recipe's BasicBlock ResNet-18 with its 3x3 stem is recognised as such (its features
    identical after conversion, SplitBatchNorm's state as BatchNorm's); mmdetection's ResNet cannot hold it."""
    from flatmix.convert import extract
    from flatmix.models.resnet import frozen_backbone
    net = _random_resnet("resnet18cifar")
    torch.save({"state_dict": _prefixed(net.state_dict(), "module.encoder_q.")}, tmp_path / "r18.pth")
    summary = convert(tmp_path / "r18.pth", "torchvision", tmp_path / "tv.pth")
    assert (summary["arch"], summary["block"], summary["cifar_stem"]) == ("resnet18cifar", "basic", True)
    backbone = extract(tmp_path / "tv.pth")
    x = torch.randn(2, 3, 32, 32)
    assert torch.allclose(frozen_backbone(backbone.arch, backbone.state).eval()(x), _features(net, x)[0], atol=1e-5)
    _refused(tmp_path, net.state_dict(), "cannot hold a resnet18cifar", "--to torchvision", to="mmdet")


def _refused(tmp_path, ckpt, *fragments, view="", to="torchvision"):
    torch.save(ckpt, tmp_path / "bad.pth")
    with pytest.raises(FlatmixError) as e:
        convert(tmp_path / "bad.pth", to, tmp_path / "out.pth", view)
    assert all(f in str(e.value) for f in fragments), str(e.value)
    assert not (tmp_path / "out.pth").exists()


def test_refusals(checkpoints, tmp_path):
    state = _random_resnet().state_dict()
    missing = {k: v for k, v in state.items() if k != "layer3.2.bn2.running_var"}
    _refused(tmp_path, missing, "missing", "layer3.2.bn2.running_var")
    _refused(tmp_path, {**state, "layer4.3.conv1.weight": torch.randn(512, 2048, 1, 1)}, "layer4.3")
    _refused(tmp_path, {**state, "layer2.0.conv2.weight": torch.randn(128, 128, 1, 1)}, "layer2.0.conv2.weight", "shape")
    _refused(tmp_path, {"optimizer": {}, "epoch": 3}, "unrecognised")
    _refused(tmp_path, _random_resnet("resnet_tiny").state_dict(), "cannot hold", to="mmdet")
    path, _, _ = checkpoints["flatmix-cmc-l"]
    assert_one_line_error(run_flatmix("convert", path, "--to", "mmdet", "--out", tmp_path / "o.pth"), "--view")
    assert not (tmp_path / "o.pth").exists()


class Payload:
    """Not plain data: unpickling it would run arbitrary code in a hostile file."""


def test_refuses_arbitrary_objects(tmp_path):
    torch.save({"state_dict": {"conv1.weight": torch.zeros(1)}, "evil": Payload()}, tmp_path / "evil.pth")
    assert_one_line_error(run_flatmix("convert", tmp_path / "evil.pth", "--to", "mmdet", "--out", tmp_path / "o.pth"),
                          "refused to unpickle")
    assert not (tmp_path / "o.pth").exists()
