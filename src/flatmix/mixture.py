"""The paper's method in one place: global (eq. 3) and region-level (eqs. 4-5) image mixtures, and the
`Mixer` that applies them to a process's batch the way the authors' code (Un-Mix's `IM/mixture.py`,
classes GM and RM) did.

The count of a level is `mixes`, the authors' `num_mix`: mixing steps, each of which fires with
probability p and mixes ONE more partner into the running image, so 2 mixes blend up to 3 images. A step
that did not fire is the identity: lam = 1 for the global mixture, an empty box for the region mixture.

Both levels are computed in closed form rather than step by step: the global result is a weighted sum of
the sample and its fired partners, the region result the partner of the last box covering a pixel, else
the decayed sample. On the CPU that is one pass over each output image, reading only the fired partners
and writing only the boxes; on a GPU, where each op is a kernel launch, a few batched ops per fired step.
The parameters stay on the CPU, so no loop waits on the device, and the input is left untouched.
"""

from dataclasses import dataclass

import numpy as np
import torch

from flatmix.distributed import concat_all_gather


def global_mix(x, partners, lam, pool=None, per_sample=None):
    """Eq. (3): m_0 = x, m_k = lam_k * m_{k-1} + (1 - lam_k) * pool[partners_k], as
    m_S = c_0 * x + sum_k c_k * pool[partners_k] with c_0 = prod_j lam_j, c_k = (1 - lam_k) prod_{j>k} lam_j.

    x: [B, C, H, W]; pool: the images partners index (default x); partners: LongTensor [S, B], one row
    per step; lam: [S, B] (CPU). per_sample: the CPU path (default: on the CPU) reads only the fired
    partners, one image at a time; the batched one (GPUs, where each op is a launch) one gather per step.
    """
    pool = x if pool is None else pool
    lam = lam.double().cpu()
    later = torch.cat([lam.flip(0).cumprod(0).flip(0)[1:], torch.ones_like(lam[:1])])  # prod_{j>k} lam_j
    own, weights = lam.prod(0), (1 - lam) * later
    if not _per_sample(per_sample, x):
        out = x * _to(own.to(x.dtype).view(-1, 1, 1, 1), x.device)
        for step_partners, step_weights in zip(partners, weights, strict=True):
            if step_weights.any():
                weight = _to(step_weights.to(x.dtype).view(-1, 1, 1, 1), x.device)
                out.addcmul_(pool[_to(step_partners, x.device)], weight)
        return out
    out = torch.empty_like(x)
    for image, mixed, factor, sample_partners, sample_weights in zip(
            x, out, own.tolist(), partners.cpu().T.tolist(), weights.T.tolist(), strict=True):
        torch.mul(image, factor, out=mixed)
        for partner, weight in zip(sample_partners, sample_weights, strict=True):
            if weight:
                mixed.add_(pool[partner], alpha=weight)
    return out


def box_masks(boxes, height, width):
    """[B, 1, H, W] masks, 1 inside each half-open box (y1, x1, y2, x2) of a LongTensor [B, 4]."""
    ys = torch.arange(height, device=boxes.device)
    xs = torch.arange(width, device=boxes.device)
    inside_y = (ys >= boxes[:, 0:1]) & (ys < boxes[:, 2:3])
    inside_x = (xs >= boxes[:, 1:2]) & (xs < boxes[:, 3:4])
    return (inside_y[:, :, None] & inside_x[:, None, :]).unsqueeze(1)


def region_mix(x, partners, boxes, decayed, decay, pool=None, per_sample=None):
    """Eqs. (4)-(5) with context pixel decay.

    m_1 = M_1 * pool[partners_1] + d * (1 - M_1) * x, with d = decay where the first step fired (its coin:
    the authors decay even when the box comes out empty after clipping) and 1 elsewhere;
    m_k = M_k * pool[partners_k] + (1 - M_k) * m_{k-1} for k > 1. So a pixel is the partner's of the last
    box covering it, else d times the sample's.
    x: [B, C, H, W]; pool: the images partners index (default x); partners: LongTensor [S, B];
    boxes: LongTensor [S, B, 4] as half-open (y1, x1, y2, x2); decayed: BoolTensor [B]; all on the CPU.
    per_sample: as global_mix's; the CPU path copies each box, the batched one blends each step's masks.
    """
    pool = x if pool is None else pool
    d = torch.where(decayed.cpu(), decay, 1.0).to(x.dtype).view(-1, 1, 1, 1)
    out = x * _to(d, x.device)
    if not _per_sample(per_sample, x):
        for step_partners, step_boxes in zip(partners, boxes, strict=True):
            if ((step_boxes[:, 2] > step_boxes[:, 0]) & (step_boxes[:, 3] > step_boxes[:, 1])).any():
                mask = box_masks(_to(step_boxes, x.device), *x.shape[2:])
                out = torch.where(mask, pool[_to(step_partners, x.device)], out)
        return out
    for step_partners, step_boxes in zip(partners.cpu().tolist(), boxes.cpu().tolist(), strict=True):
        for b, (partner, (y1, x1, y2, x2)) in enumerate(zip(step_partners, step_boxes, strict=True)):
            if y2 > y1 and x2 > x1:
                out[b, :, y1:y2, x1:x2] = pool[partner, :, y1:y2, x1:x2]
    return out


def _per_sample(per_sample, x):
    """Loop over samples where an op costs no launch (the CPU) unless told otherwise."""
    return x.device.type == "cpu" if per_sample is None else per_sample


@dataclass(frozen=True)
class GlobalConfig:
    mixes: int = 0      # mixing steps (the authors' num_mix); 0 turns the level off
    p: float = 0.0      # probability that each step fires
    alpha: float = 1.0  # lam ~ Beta(alpha, alpha)


@dataclass(frozen=True)
class RegionConfig:
    mixes: int = 0
    p: float = 0.0
    beta: float = 1.0   # lam ~ Beta(beta, beta); the box side is sqrt(1 - lam) of the image side
    decay: float = 1.0  # context pixel decay of the first step; 1.0 = none


@dataclass
class MixDraw:
    """One batch's mixture parameters, on the CPU on any device. Partners are indices into the global
    batch: every process's images, gathered in rank order."""
    global_partners: torch.Tensor  # [Sg, B]
    global_lam: torch.Tensor       # [Sg, B]
    region_partners: torch.Tensor  # [Sr, B]
    region_boxes: torch.Tensor     # [Sr, B, 4]
    region_decayed: torch.Tensor   # [B] bool: the first region step fired
    decay: float

    def apply(self, x, pool):
        """region(global(x)), as the authors' code (RM wraps GM): a region partner is itself globally
        mixed. `pool` is the global batch x belongs to; the globally mixed one is gathered here."""
        if self.global_partners.shape[0]:
            x = global_mix(x, self.global_partners, self.global_lam, pool)
        if self.region_partners.shape[0]:
            pool = concat_all_gather(x) if self.global_partners.shape[0] else pool
            x = region_mix(x, self.region_partners, self.region_boxes, self.region_decayed, self.decay, pool)
        return x


def _to(tensor, device):
    """`tensor` (CPU) on `device`; to a GPU through pinned memory, so that the copy does not wait for it."""
    if device.type != "cuda":
        return tensor
    return tensor.pin_memory().to(device, non_blocking=True)


class Mixer:
    """The mixtures of one process of a run (`mixture` section of the run spec).

    Per step of a level and per sample: a partner drawn uniformly from the global batch, never the sample
    itself (the authors draw from the whole training set, each partner with its own augmentation; the
    global batch is a uniform sample of it), lam ~ Beta, firing with probability p, and for the region
    level a CutMix box. With joint views (the authors' code) the query and key views share partners, lam
    and boxes. Draws come from the Mixer's own generator, seeded per rank and checkpointed, so a resumed
    run draws what the uninterrupted run would have.

    Un-Mix (AAAI 2022, MoCo only) is here too: `unmix_queries` mixes the queries with the reversed batch,
    by mixup or CutMix.
    """

    def __init__(self, mixture, seed, rank=0):
        self.global_cfg = GlobalConfig(**mixture["global"])
        self.region_cfg = RegionConfig(**mixture["region"])
        self.joint = mixture["views"] == "joint"
        self.unmix, self.unmix_prob = mixture["unmix"], mixture["unmix_prob"]
        self.rank = rank
        self.rng = np.random.Generator(np.random.PCG64([seed, rank]))

    @property
    def on(self):
        return self.global_cfg.mixes > 0 or self.region_cfg.mixes > 0

    def __call__(self, views):
        """The views with the mixtures applied: the first (query) view, and with joint views every view,
        the same draw for each; the others unchanged."""
        if not self.on:
            return views
        mixed = len(views) if self.joint else 1
        pools = [concat_all_gather(v) for v in views[:mixed]]
        batch, _, height, width = views[0].shape
        draw = self.draw(batch, pools[0].shape[0], height, width)
        return [draw.apply(v, pool) for v, pool in zip(views, pools)] + list(views[mixed:])

    def _partners(self, steps, batch, pool_size):
        """[steps, batch] indices into the global batch, uniform over all but each sample's own."""
        if pool_size < 2:
            raise ValueError("a mixture needs a global batch of at least 2 images")
        own = self.rank * batch + np.arange(batch)
        drawn = self.rng.integers(0, pool_size - 1, size=(steps, batch))
        return drawn + (drawn >= own)

    def _steps(self, mixes, p, a, batch, pool_size):
        partners = self._partners(mixes, batch, pool_size)
        lam = self.rng.beta(a, a, size=(mixes, batch))
        fired = self.rng.random((mixes, batch)) < p
        return partners, lam, fired

    def draw(self, batch, pool_size, height, width):
        """The parameters of one batch of `batch` samples, partners taken from a global batch of
        `pool_size` (this process's samples at rank * batch onwards)."""
        g = self.global_cfg
        g_partners, g_lam, g_fired = self._steps(g.mixes, g.p, g.alpha, batch, pool_size)
        r = self.region_cfg
        r_partners, r_lam, r_fired = self._steps(r.mixes, r.p, r.beta, batch, pool_size)
        boxes = np.where(r_fired[..., None], self._boxes(r_lam, height, width), 0)
        return MixDraw(
            global_partners=torch.from_numpy(g_partners.astype(np.int64)),
            global_lam=torch.from_numpy(np.where(g_fired, g_lam, 1.0)).float(),
            region_partners=torch.from_numpy(r_partners.astype(np.int64)),
            region_boxes=torch.from_numpy(boxes.astype(np.int64)).reshape(r_lam.shape + (4,)),
            region_decayed=torch.from_numpy(r_fired[0] if r.mixes else np.zeros(batch, bool)),
            decay=r.decay,
        )

    def _boxes(self, lam, height, width):
        """CutMix boxes (Yun et al.'s rand_bbox) [..., 4] for lam [...]: side sqrt(1 - lam) of the image
        side, uniform centre, clipped to the image."""
        cut = np.sqrt(1.0 - lam)
        cut_h, cut_w = (cut * height).astype(np.int64), (cut * width).astype(np.int64)
        cy = self.rng.integers(0, height, size=np.shape(lam))
        cx = self.rng.integers(0, width, size=np.shape(lam))
        return np.stack([np.clip(cy - cut_h // 2, 0, height), np.clip(cx - cut_w // 2, 0, width),
                         np.clip(cy + cut_h // 2, 0, height), np.clip(cx + cut_w // 2, 0, width)], -1)

    def unmix_queries(self, queries):
        """Un-Mix's mixed queries and their lam ~ Beta(alpha, alpha) of the global level, as the authors'
        main_moco_unmix.py: with probability `unmix_prob` the batch mixed with itself reversed, otherwise a
        CutMix box of the reversed batch pasted in, lam then the share of pixels outside the box."""
        a = self.global_cfg.alpha
        mixup = self.rng.random() < self.unmix_prob
        lam = float(self.rng.beta(a, a))
        if mixup:
            return lam * queries + (1 - lam) * queries.flip(0), lam
        height, width = queries.shape[-2:]
        y1, x1, y2, x2 = self._boxes(np.array(lam), height, width).tolist()
        mixed = queries.clone()
        mixed[..., y1:y2, x1:x2] = queries[..., y1:y2, x1:x2].flip(0)
        return mixed, 1 - (y2 - y1) * (x2 - x1) / (height * width)

    def state_dict(self):
        return {"bit_generator": self.rng.bit_generator.state}

    def load_state_dict(self, state):
        self.rng.bit_generator.state = state["bit_generator"]
