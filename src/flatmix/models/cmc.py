"""CMC (Tian et al.) as its code base runs it on ImageNet: one encoder per colour view (L|ab or
Y|CbCr: 1 and 2 input channels), a memory bank of every training image's embedding in each view
(updated with momentum 0.5), K negatives drawn uniformly from it, and Softmax-CE in both directions.

Under DDP every rank keeps the whole memory bank and applies every rank's updates, so the banks stay
identical; each rank draws its own negatives. As in MoCo, the encoders run under the caller's autocast
and the head (normalisation, scores, memory update, Softmax-CE) in fp32 with autocast off.
"""

import math

import torch
from torch import nn
import torch.nn.functional as F

from flatmix.distributed import concat_all_gather
from flatmix.models.moco import info_nce, normalize
from flatmix.models.resnet import build_resnet


class CMC(nn.Module):
    def __init__(self, n_data, arch="resnet50half", dim=128, K=16384, T=0.07, momentum=0.5):
        super().__init__()
        self.K, self.T, self.momentum = K, T, momentum
        self.l_to_ab = build_resnet(arch, num_classes=dim, in_channels=1)
        self.ab_to_l = build_resnet(arch, num_classes=dim, in_channels=2)
        stdv = 1.0 / math.sqrt(dim / 3)
        self.register_buffer("memory_l", torch.rand(n_data, dim).mul_(2 * stdv).add_(-stdv))
        self.register_buffer("memory_ab", torch.rand(n_data, dim).mul_(2 * stdv).add_(-stdv))

    def encoders(self):
        return [self.l_to_ab, self.ab_to_l]

    def backbones(self):
        """The encoders the evaluations read, in flatmix.convert's order (L first)."""
        return self.encoders()

    def embed(self, x):
        """The encoders' outputs for the two views of x [B, 3, H, W] (channel 0 | channels 1-2)."""
        l, ab = torch.split(x, [1, 2], dim=1)
        return self.l_to_ab(l), self.ab_to_l(ab)

    def forward(self, x, index):
        """fp32 scores [B, 1 + K] of each view against the other view's memory (own entry first); then the
        batch updates the memory (as the CMC code base's NCEAverage: the scores use the memory before)."""
        feat_l, feat_ab = self.embed(x)
        with torch.autocast(x.device.type, enabled=False):
            feat_l, feat_ab = normalize(feat_l), normalize(feat_ab)
            idx = torch.randint(0, self.memory_l.shape[0], (x.shape[0], self.K + 1), device=x.device)
            idx[:, 0] = index
            weight_ab = self.memory_ab[idx].detach()   # [B, K+1, D]
            weight_l = self.memory_l[idx].detach()
            out_l = torch.bmm(weight_ab, feat_l.unsqueeze(2)).squeeze(2) / self.T
            out_ab = torch.bmm(weight_l, feat_ab.unsqueeze(2)).squeeze(2) / self.T
            self.update_memory(feat_l, feat_ab, index)
        return out_l, out_ab

    @torch.no_grad()
    def update_memory(self, feat_l, feat_ab, index):
        """memory[i] = normalise(m * memory[i] + (1 - m) * feature), with every rank's samples."""
        feat_l, feat_ab, index = (concat_all_gather(t) for t in (feat_l, feat_ab, index))
        for memory, feat in ((self.memory_l, feat_l), (self.memory_ab, feat_ab)):
            updated = memory[index] * self.momentum + feat * (1 - self.momentum)
            memory.index_copy_(0, index, F.normalize(updated, dim=1))


def cmc_loss(out_l, out_ab):
    """Softmax-CE in both directions, summed as in the CMC code base."""
    return info_nce(out_l) + info_nce(out_ab)
