"""The detectors' backbone, read straight from the checkpoint the user named: `flatmix://PATH` is an
mmengine checkpoint scheme that converts, in memory, any checkpoint flatmix.convert reads (this project's
pretraining, facebookresearch MoCo, the CMC code base, torchvision, mmdetection) when mmdetection's
Pretrained init loads it. The linear probe and Figure 5 read the same file the same way
(flatmix.convert.extract), so a checkpoint takes one route to every consumer and no converted copy of it
is written beside each detection run. The written config.py imports this module (custom_imports), so
mmdetection's own tools read it too.
"""

from pathlib import Path

from mmengine.runner import CheckpointLoader

from flatmix.convert import extract

SCHEME = "flatmix://"


def pretrained_init(checkpoint):
    """mmdetection's init_cfg that loads `checkpoint`'s backbone through this scheme."""
    return dict(type="Pretrained", checkpoint=SCHEME + str(Path(checkpoint).resolve()))


@CheckpointLoader.register_scheme(prefixes=SCHEME)
def load_from_flatmix(filename, map_location=None):
    """The backbone of the checkpoint at `filename` (less the scheme), in torchvision's names, which are
    mmdetection's ResNet's; read through torch's weights_only unpickler and checked whole. (Named as
    mmengine names its loaders, load_from_*: its log then says "Loads checkpoint by flatmix backend".)"""
    return {"state_dict": extract(filename[len(SCHEME):]).state}
