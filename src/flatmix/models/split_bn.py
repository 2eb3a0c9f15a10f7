"""SplitBatchNorm (the MoCo CIFAR demo's): in training, BatchNorm statistics over each of `splits` shares
of the batch (every splits-th image), as `splits` GPUs would each compute over their own, so that one GPU
imitates MoCo's per-GPU BN (the demo's 8 splits imitate 8 GPUs; 1 is one BN over the whole batch, as
SyncBN). The running statistics are the shares' mean; evaluation is plain BatchNorm. Its state dict is
BatchNorm2d's, so every checkpoint converts as any other.
"""

from functools import partial

from torch import nn
import torch.nn.functional as F


class SplitBatchNorm(nn.BatchNorm2d):
    def __init__(self, num_features, splits, **kwargs):
        super().__init__(num_features, **kwargs)
        self.splits = splits

    def forward(self, x):
        if not self.training:
            return super().forward(x)
        n, c, h, w = x.shape
        mean, var = self.running_mean.repeat(self.splits), self.running_var.repeat(self.splits)
        out = F.batch_norm(x.reshape(-1, c * self.splits, h, w), mean, var, self.weight.repeat(self.splits),
                           self.bias.repeat(self.splits), True, self.momentum, self.eps).reshape(n, c, h, w)
        self.running_mean.copy_(mean.view(self.splits, c).mean(0))
        self.running_var.copy_(var.view(self.splits, c).mean(0))
        return out


def norm_layer(splits):
    """The BatchNorm layer of an encoder whose batches BN sees in `splits` slices (1: nn.BatchNorm2d)."""
    return nn.BatchNorm2d if splits == 1 else partial(SplitBatchNorm, splits=splits)
