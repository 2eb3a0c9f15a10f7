"""MoCo v1/v2 (He et al.), after facebookresearch/moco's builder: a query encoder, a momentum key
encoder, a queue of K negative keys and the Softmax-CE (InfoNCE) loss with the positive at index 0.

Under DDP the key encoder's batch is shuffled across all ranks (shuffle BN), so that BatchNorm cannot
use the statistics of the very batch it encodes to cheat. In one process there is one BN batch and
shuffling it would change nothing, so it is skipped, unless the encoders' BN splits the batch
(`bn_splits`, flatmix.models.split_bn: one GPU imitating several), where the keys' batch is shuffled
within the process, as the MoCo CIFAR demo does.

`symmetric` (the demo's option, after SimCLR and BYOL) adds the swapped pair: the second view's queries
against the first view's keys; both directions' keys join the queue.

The encoders run under the caller's autocast (bf16 in the paper runs); the head (normalisation, dot
products with the keys and the queue, /T, Softmax-CE) runs in fp32 with autocast off: in bf16 each cosine
would be rounded by about 0.004, 0.056 in logits at T 0.07, against effects of 0.3-1.3 points.
"""

import torch
from torch import nn
import torch.distributed as dist
import torch.nn.functional as F

from flatmix.distributed import concat_all_gather, is_distributed
from flatmix.models.resnet import build_resnet
from flatmix.models.split_bn import norm_layer


class MoCo(nn.Module):
    def __init__(self, arch="resnet50", dim=128, K=65536, m=0.999, T=0.07, mlp=False, symmetric=False, bn_splits=1):
        super().__init__()
        self.K, self.m, self.T, self.symmetric, self.bn_splits = K, m, T, symmetric, bn_splits
        self.encoder_q = build_resnet(arch, num_classes=dim, norm_layer=norm_layer(bn_splits))
        self.encoder_k = build_resnet(arch, num_classes=dim, norm_layer=norm_layer(bn_splits))
        if mlp:  # MoCo v2's projection head
            for enc in (self.encoder_q, self.encoder_k):
                hidden = enc.fc.weight.shape[1]
                enc.fc = nn.Sequential(nn.Linear(hidden, hidden), nn.ReLU(), enc.fc)
        for q, k in zip(self.encoder_q.parameters(), self.encoder_k.parameters()):
            k.data.copy_(q.data)
            k.requires_grad = False
        self.register_buffer("queue", F.normalize(torch.randn(dim, K), dim=0))
        self.register_buffer("queue_ptr", torch.zeros(1, dtype=torch.long))

    def encoders(self):
        return [self.encoder_q, self.encoder_k]

    def backbones(self):
        """The encoder the evaluations read (kNN, the probe after convert): the query encoder."""
        return [self.encoder_q]

    @torch.no_grad()
    def momentum_update(self):
        """key = m * key + (1 - m) * query, for parameters (BN buffers are the key encoder's own)."""
        keys = list(self.encoder_k.parameters())
        torch._foreach_mul_(keys, self.m)
        torch._foreach_add_(keys, list(self.encoder_q.parameters()), alpha=1.0 - self.m)

    @torch.no_grad()
    def enqueue(self, keys):
        """Write every rank's keys into the queue after the pointer, wrapping around its end."""
        keys = concat_all_gather(keys)
        ptr = int(self.queue_ptr)
        slots = (ptr + torch.arange(keys.shape[0], device=keys.device)) % self.K
        self.queue[:, slots] = keys.T.to(self.queue.dtype)
        self.queue_ptr[0] = (ptr + keys.shape[0]) % self.K

    @torch.no_grad()
    def _shuffled_keys(self, im_k):
        """Keys of im_k computed on a batch shuffled across ranks (in one process: within it, when its BN
        splits the batch), returned in the original order."""
        if not is_distributed():
            if self.bn_splits == 1:
                return self.encoder_k(im_k)
            perm = torch.randperm(im_k.shape[0], device=im_k.device)
            return self.encoder_k(im_k[perm])[torch.argsort(perm)]
        local = im_k.shape[0]
        gathered = concat_all_gather(im_k)
        perm = torch.randperm(gathered.shape[0], device=im_k.device)
        dist.broadcast(perm, src=0)
        rank = dist.get_rank()
        mine = perm.view(-1, local)[rank]
        keys = concat_all_gather(self.encoder_k(gathered[mine]))
        unshuffle = torch.argsort(perm)
        return keys[unshuffle.view(-1, local)[rank]]

    def _logits(self, q, k):
        l_pos = torch.einsum("nc,nc->n", q, k).unsqueeze(-1)
        l_neg = torch.einsum("nc,ck->nk", q, self.queue.clone().detach())
        return torch.cat([l_pos, l_neg], dim=1) / self.T

    def forward(self, im_q, im_k, im_mix=None):
        """fp32 logits [B, 1 + K] (positive first) as (main, mixed); the keys then join the queue.

        main: the queries of im_q against the keys of im_k, and with `symmetric` also those of im_k against
        the keys of im_q. mixed (Un-Mix, with im_mix: im_q mixed with the reversed batch; else []): for each
        direction's keys, (the mixed queries' logits against them, against the reversed batch's).
        """
        pairs = [(im_q, im_k), (im_k, im_q)] if self.symmetric else [(im_q, im_k)]
        queries = [self.encoder_q(q) for q, _ in pairs]
        with torch.no_grad():
            self.momentum_update()
            keys = [self._shuffled_keys(k) for _, k in pairs]
        q_mix = None if im_mix is None else self.encoder_q(im_mix)
        with torch.autocast(im_q.device.type, enabled=False):
            keys = [normalize(k) for k in keys]
            main = [self._logits(normalize(q), k) for q, k in zip(queries, keys, strict=True)]
            mixed = []
            if q_mix is not None:
                q_mix = normalize(q_mix)
                mixed = [(self._logits(q_mix, k), self._logits(q_mix, k.flip(0))) for k in keys]
            self.enqueue(torch.cat(keys[::-1]))  # the demo's order: the first view's keys first
        return main, mixed


def normalize(features):
    """Embeddings L2-normalised in fp32, for the head (run with autocast off)."""
    return F.normalize(features.float(), dim=1)


def info_nce(logits):
    """Eq. (1): cross-entropy with the positive at index 0, in fp32 whatever the autocast."""
    labels = torch.zeros(logits.shape[0], dtype=torch.long, device=logits.device)
    with torch.autocast(logits.device.type, enabled=False):
        return F.cross_entropy(logits.float(), labels)
