"""ResNet backbones with torchvision's module names (conv1, bn1, layer1..4, fc), in the widths the paper
uses, so that every checkpoint converts to torchvision, mmdetection and detectron2 by renaming alone.

- resnet50:      the standard ResNet-50 (2048-d features).
- resnet50w2:    Table 6's "R50 w2x": the stem and every stage twice as wide (4096-d), as in MoCo/CPC.
- resnet50half:  CMC's "ResNet-50 half" (the CMC code base's width 0.5): the stem keeps 64 channels,
                 every stage half as wide (1024-d); one per colour view, with 1 or 2 input channels.
- resnet18cifar: the CIFAR recipe's ResNet-18 (the MoCo CIFAR demo's ModelBase): BasicBlocks, the stem a
                 3x3 stride-1 convolution and no max-pool, so that 32-pixel images keep their detail (512-d).
- resnet_tiny:   a one-block-per-stage, 1/8-width Bottleneck ResNet for CPU tests (256-d).

Every architecture takes a BatchNorm layer (`norm_layer`): flatmix.models.split_bn's SplitBatchNorm
imitates several GPUs' BN batches on one.
"""

import torch
from torch import nn
from torchvision.models.resnet import BasicBlock, Bottleneck, ResNet

from flatmix.errors import FlatmixError

BLOCKS = {"bottleneck": Bottleneck, "basic": BasicBlock}
def _arch(layers, stem, width, block="bottleneck", cifar_stem=False):
    return {"layers": layers, "stem": stem, "width": width, "block": block, "cifar_stem": cifar_stem}


# name: blocks per stage, stem channels, first stage width, block, CIFAR stem (flatmix.convert infers the
# same from a state dict)
ARCHS = {
    "resnet50": _arch((3, 4, 6, 3), 64, 64),
    "resnet50w2": _arch((3, 4, 6, 3), 128, 128),
    "resnet50half": _arch((3, 4, 6, 3), 64, 32),
    "resnet18cifar": _arch((2, 2, 2, 2), 64, 64, "basic", cifar_stem=True),
    "resnet_tiny": _arch((1, 1, 1, 1), 16, 8),
}


class WideResNet(ResNet):
    """torchvision's ResNet with a chosen block, stem (ImageNet's 7x7 stride 2 and max-pool, or CIFAR's
    3x3 stride 1 without), stem width, stage width, input channels and BatchNorm layer."""

    def __init__(self, layers, stem, width, in_channels=3, num_classes=1000, block="bottleneck", cifar_stem=False,
                 norm_layer=nn.BatchNorm2d):
        nn.Module.__init__(self)
        block = BLOCKS[block]
        self._norm_layer = norm_layer
        self.inplanes, self.dilation, self.groups, self.base_width = stem, 1, 1, 64
        if cifar_stem:
            self.conv1 = nn.Conv2d(in_channels, stem, kernel_size=3, stride=1, padding=1, bias=False)
        else:
            self.conv1 = nn.Conv2d(in_channels, stem, kernel_size=7, stride=2, padding=3, bias=False)
        self.bn1 = norm_layer(stem)
        self.relu = nn.ReLU(inplace=True)
        self.maxpool = nn.Identity() if cifar_stem else nn.MaxPool2d(kernel_size=3, stride=2, padding=1)
        self.layer1 = self._make_layer(block, width, layers[0])
        self.layer2 = self._make_layer(block, width * 2, layers[1], stride=2)
        self.layer3 = self._make_layer(block, width * 4, layers[2], stride=2)
        self.layer4 = self._make_layer(block, width * 8, layers[3], stride=2)
        self.avgpool = nn.AdaptiveAvgPool2d((1, 1))
        self.feature_dim = width * 8 * block.expansion
        self.fc = nn.Linear(self.feature_dim, num_classes)
        for m in self.modules():  # torchvision's initialisation
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
            elif isinstance(m, nn.BatchNorm2d):  # SplitBatchNorm too
                nn.init.constant_(m.weight, 1)
                nn.init.constant_(m.bias, 0)

    def pooled(self, x):
        """The pooled features before `fc`, whatever `fc` holds (a classifier, MoCo's head, nothing)."""
        x = self.maxpool(self.relu(self.bn1(self.conv1(x))))
        x = self.layer4(self.layer3(self.layer2(self.layer1(x))))
        return torch.flatten(self.avgpool(x), 1)


def pooled_features(encoders, x):
    """What the evaluations on frozen features read: one encoder's pooled features of x, or CMC's two
    encoders' on their channels of x (L | ab, or Y | CbCr) side by side."""
    views = [x] if len(encoders) == 1 else torch.split(x, [1, 2], dim=1)
    return torch.cat([e.pooled(v) for e, v in zip(encoders, views, strict=False)], dim=1)


def frozen_backbone(arch, state):
    """A backbone without its fc from a converted state dict and its `arch` (flatmix.convert), frozen."""
    net = WideResNet(arch["layers"], arch["stem"], arch["width"], arch["in_channels"], block=arch["block"],
                     cifar_stem=arch["cifar_stem"])
    net.fc = nn.Identity()
    net.load_state_dict(state, strict=True)
    return net.requires_grad_(False)


def build_resnet(arch, num_classes=1000, in_channels=3, norm_layer=nn.BatchNorm2d):
    if arch not in ARCHS:
        raise FlatmixError(f"unknown architecture {arch!r}; known: {', '.join(ARCHS)}")
    return WideResNet(**ARCHS[arch], in_channels=in_channels, num_classes=num_classes, norm_layer=norm_layer)
