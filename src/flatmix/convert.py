"""Checkpoint conversion: find the ResNet backbone in any checkpoint format users bring, check it is
whole, and write it for torchvision, mmdetection or detectron2.

Sources, detected by their keys: this project's pretraining (MoCo: the query encoder; CMC: one of the
two halves, `view` l or ab), facebookresearch MoCo v1/v2 (`module.encoder_q.`), the CMC code base's
MoCo (`model` with `encoder.module.` or `encoder.`) and CMC (`l_to_ab.` / `ab_to_l.`, possibly
prefixed), a plain torchvision state dict, and a state dict under `state_dict` (mmdetection's, with or
without `backbone.`). Projection heads (`fc`), key encoders, queues and memory banks are dropped.

Checkpoints are read through flatmix.checkpoint_io (torch's weights_only unpickler). A backbone with a
NaN or Inf (a diverged run) is refused: every result downstream of it would be meaningless.
"""

from dataclasses import dataclass, field
from pathlib import Path
import pickle
import re

import torch

from flatmix import atomic
from flatmix.checkpoint_io import load_checkpoint
from flatmix.errors import FlatmixError
from flatmix.models.resnet import ARCHS, WideResNet

MMDET_DEPTHS = {(3, 4, 6, 3): 50, (3, 4, 23, 3): 101, (3, 8, 36, 3): 152}
CMC_VIEWS = {"l": "l_to_ab.", "ab": "ab_to_l."}


@dataclass
class Backbone:
    """A ResNet backbone in torchvision's names (no fc), with what is known of where it came from."""
    state: dict
    source_format: str
    method: str = ""            # moco | cmc | "" (unknown)
    colour: str = "RGB"         # the input space the encoder was trained on: RGB, YCbCr or Lab
    view: str = ""              # CMC: l or ab
    arch: dict = field(default_factory=dict)


def _strip(state, prefix):
    return {k[len(prefix):]: v for k, v in state.items() if k.startswith(prefix)}


def _without_module(state):
    return {k[len("module."):] if k.startswith("module.") else k: v for k, v in state.items()}


def _is_tensor_dict(obj):
    return isinstance(obj, dict) and obj and all(isinstance(v, torch.Tensor) for v in obj.values())


def _cmc_colour(ckpt):
    opt = ckpt.get("opt")
    view = getattr(opt, "view", None) if opt is not None else None
    return view if view in ("Lab", "YCbCr") else "Lab"  # the CMC code base's default view is Lab


def _candidates(ckpt):
    """(format, method, colour, {view: state with the encoder's prefix removed, heads still in})."""
    if isinstance(ckpt, dict) and str(ckpt.get("format", "")).startswith("flatmix-pretrain"):
        state = ckpt["state_dict"]
        if ckpt["method"] == "moco":
            return "flatmix-moco", "moco", "RGB", {"": _strip(state, "encoder_q.")}
        colour = ckpt["config"]["cmc"]["colour"]
        return "flatmix-cmc", "cmc", colour, {v: _strip(state, p) for v, p in CMC_VIEWS.items()}
    if isinstance(ckpt, dict) and _is_tensor_dict(ckpt.get("state_dict")):
        state = _without_module(ckpt["state_dict"])
        if any(k.startswith("encoder_q.") for k in state):
            return "moco", "moco", "RGB", {"": _strip(state, "encoder_q.")}
        if any(k.startswith("backbone.") for k in state):
            return "mmdet", "", "RGB", {"": _strip(state, "backbone.")}
        return "state_dict", "", "RGB", {"": state}
    if isinstance(ckpt, dict) and _is_tensor_dict(ckpt.get("model")):
        state = ckpt["model"]
        for prefix in ("module.", "encoder.module.", "encoder."):
            if any(k.startswith(prefix + "l_to_ab.") for k in state):
                state = _strip(state, prefix)
                break
        if any(k.startswith("l_to_ab.") for k in state):
            return "cmc-codebase-cmc", "cmc", _cmc_colour(ckpt), {v: _strip(state, p) for v, p in CMC_VIEWS.items()}
        for prefix in ("encoder.module.", "encoder."):
            if any(k.startswith(prefix) for k in state):
                return "cmc-codebase-moco", "moco", "RGB", {"": _strip(state, prefix)}
    if _is_tensor_dict(ckpt):
        return "torchvision", "", "RGB", {"": _without_module(ckpt)}
    keys = ", ".join(sorted(map(str, ckpt))[:6]) if isinstance(ckpt, dict) else type(ckpt).__name__
    raise FlatmixError(f"unrecognised checkpoint format (top level: {keys}); not a backbone checkpoint")


def infer_arch(state):
    """Blocks per stage, stem width, first stage width, block (Bottleneck or BasicBlock), stem (ImageNet's
    7x7 or CIFAR's 3x3) and input channels of a ResNet."""
    if "conv1.weight" not in state:
        raise FlatmixError("no ResNet backbone found (no conv1.weight)")
    layers = []
    for stage in range(1, 5):
        blocks = {int(m.group(1)) for k in state if (m := re.match(rf"layer{stage}\.(\d+)\.", k))}
        if not blocks:
            raise FlatmixError(f"no ResNet backbone found (no layer{stage} blocks)")
        layers.append(max(blocks) + 1)
    if "layer1.0.conv1.weight" not in state:
        raise FlatmixError("no ResNet backbone found (no layer1.0.conv1.weight)")
    block = "bottleneck" if "layer1.0.conv3.weight" in state else "basic"
    stem, in_channels, kernel = state["conv1.weight"].shape[:3]
    width = state["layer1.0.conv1.weight"].shape[0]
    return {"layers": tuple(layers), "stem": int(stem), "width": int(width), "block": block,
            "cifar_stem": int(kernel) == 3, "in_channels": int(in_channels)}


def arch_name(arch):
    for name, known in ARCHS.items():
        if all(arch[key] == value for key, value in known.items()):
            return name
    return "custom"


def _checked(state, source):
    """The backbone (fc dropped) after checking it is exactly a ResNet's: nothing missing or left over."""
    state = {k: v for k, v in state.items() if not k.startswith("fc.")}
    try:
        arch = infer_arch(state)
    except FlatmixError as e:
        raise FlatmixError(f"{source}: {e}") from None
    reference = WideResNet(arch["layers"], arch["stem"], arch["width"], arch["in_channels"], block=arch["block"],
                           cifar_stem=arch["cifar_stem"]).state_dict()
    expected = {k: v.shape for k, v in reference.items() if not k.startswith("fc.")}
    missing = sorted(set(expected) - set(state))
    unused = sorted(set(state) - set(expected))
    if missing:
        raise FlatmixError(f"{source}: {len(missing)} backbone weight(s) missing, e.g. {missing[0]}")
    if unused:
        raise FlatmixError(f"{source}: {len(unused)} weight(s) would be left unused, e.g. {unused[0]}")
    for k, shape in expected.items():
        if state[k].shape != shape:
            raise FlatmixError(f"{source}: {k} has shape {tuple(state[k].shape)}, expected {tuple(shape)}")
    for k, v in state.items():
        if v.is_floating_point() and not torch.isfinite(v).all():
            raise FlatmixError(f"{source}: {k} holds NaN or Inf values (a diverged run?); refusing it")
    return state, arch


def _identify(path):
    try:
        return _candidates(load_checkpoint(path))
    except (KeyError, TypeError, AttributeError) as e:  # plain data, but not laid out as its keys promise
        raise FlatmixError(f"{path}: a checkpoint of an unexpected layout ({type(e).__name__}: {e})") from None
    except FlatmixError as e:
        message = str(e)
        raise FlatmixError(message if message.startswith(str(path)) else f"{path}: {message}") from None


def extract(path, view=""):
    """The Backbone in checkpoint `path`; CMC checkpoints need `view` (l or ab)."""
    fmt, method, colour, views = _identify(path)
    if method == "cmc":
        if view not in CMC_VIEWS:
            raise FlatmixError(f"{path} is a CMC checkpoint with two encoders: choose --view l or --view ab")
        state = views[view]
    else:
        if view:
            raise FlatmixError(f"--view {view} applies to CMC checkpoints only; {path} is {fmt}")
        state = views[""]
    if not state:
        raise FlatmixError(f"{path}: the {fmt} checkpoint holds no backbone weights")
    state, arch = _checked(state, path)
    return Backbone(state=state, source_format=fmt, method=method, colour=colour, view=view, arch=arch)


def extract_all(path):
    """Every backbone of a checkpoint: one, or CMC's two halves (l first)."""
    _, method, _, _ = _identify(path)
    return [extract(path, v) for v in CMC_VIEWS] if method == "cmc" else [extract(path)]


def mmdet_backbone_cfg(arch):
    """The mmdetection ResNet arguments that hold this backbone (or a refusal)."""
    depth = MMDET_DEPTHS.get(arch["layers"])
    if arch["block"] != "bottleneck" or arch["cifar_stem"]:
        raise FlatmixError(f"mmdetection's ResNet-50/101/152 cannot hold a {arch_name(arch)} backbone (BasicBlocks "
                           "or the CIFAR stem): convert it --to torchvision")
    if depth is None:
        raise FlatmixError(f"mmdetection's ResNet cannot hold blocks {arch['layers']} (ResNet-50/101/152 only)")
    return {"type": "ResNet", "depth": depth, "stem_channels": arch["stem"], "base_channels": arch["width"],
            "in_channels": arch["in_channels"], "style": "pytorch"}


def to_detectron2_names(state):
    """facebookresearch MoCo's convert-pretrain-to-detectron2 renaming (stem, res2..res5, norm, shortcut)."""
    renamed = {}
    for k, v in state.items():
        name = k if "layer" in k else "stem." + k
        for t in (1, 2, 3, 4):
            name = name.replace(f"layer{t}", f"res{t + 1}")
        for t in (1, 2, 3):
            name = name.replace(f"bn{t}", f"conv{t}.norm")
        name = name.replace("downsample.0", "shortcut").replace("downsample.1", "shortcut.norm")
        renamed[name] = v.detach().cpu().numpy()
    return renamed


def convert(src, target, out, view=""):
    """Write the backbone of `src` for `target` at `out`; returns a summary for the log."""
    if target == "detectron2" and Path(out).suffix != ".pkl":
        # detectron2's DetectionCheckpointer unpickles a file (and honours matching_heuristics) only
        # under .pkl; any other name goes to torch.load, which cannot read a plain pickle
        raise FlatmixError(f"--out {out}: detectron2 reads this format only from a .pkl file, "
                           f"not {Path(out).suffix or 'a name without a suffix'}")
    backbone = extract(src, view)
    provenance = {"source": str(src), "source_format": backbone.source_format, "method": backbone.method,
                  "view": backbone.view, "colour": backbone.colour, "arch": arch_name(backbone.arch),
                  "layers": list(backbone.arch["layers"]), "stem": backbone.arch["stem"],
                  "width": backbone.arch["width"], "block": backbone.arch["block"],
                  "cifar_stem": backbone.arch["cifar_stem"], "in_channels": backbone.arch["in_channels"]}
    if target == "torchvision":
        atomic.write_torch(out, backbone.state)
    elif target == "mmdet":
        provenance["mmdet_backbone"] = mmdet_backbone_cfg(backbone.arch)
        atomic.write_torch(out, {"state_dict": backbone.state, "meta": {"flatmix": provenance}})
    else:
        mmdet_backbone_cfg(backbone.arch)  # detectron2 builds the same depths
        with atomic.atomic_path(out) as tmp:
            with open(tmp, "wb") as f:
                pickle.dump({"model": to_detectron2_names(backbone.state), "__author__": "flatmix",
                             "matching_heuristics": True}, f)
    return {**provenance, "target": target, "out": str(out), "tensors": len(backbone.state)}
