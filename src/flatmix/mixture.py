"""The paper's method in one place: global (eq. 3) and region-level (eqs. 4-5) image mixtures, and the
`Mixer` that applies them to a process's batch the way the authors' code (Un-Mix's `IM/mixture.py`,
classes GM and RM) did.

The count of a level is `mixes`, the authors' `num_mix`: mixing steps, each of which fires with
probability p and mixes ONE more partner into the running image, so 2 mixes blend up to 3 images. Both
mixtures are batched tensor ops on any device (one small loop over the steps, none over samples) and leave
their input untouched. A step that did not fire is the identity: lam = 1 for the global mixture, an empty
box for the region mixture.
"""

from dataclasses import dataclass

import numpy as np
import torch

from flatmix.distributed import concat_all_gather


def global_mix(x, partners, lam, pool=None):
    """Eq. (3): m_0 = x, m_k = lam_k * m_{k-1} + (1 - lam_k) * pool[partners_k].

    x: [B, C, H, W]; pool: the images partners index (default x); partners: LongTensor [S, B], one row
    per step; lam: [S, B].
    """
    pool = x if pool is None else pool
    m = x
    lam = lam.to(dtype=x.dtype, device=x.device)
    for step in range(partners.shape[0]):
        l = lam[step].view(-1, 1, 1, 1)
        m = l * m + (1 - l) * pool[partners[step]]
    return m


def box_masks(boxes, height, width):
    """[B, 1, H, W] masks, 1 inside each half-open box (y1, x1, y2, x2) of a LongTensor [B, 4]."""
    ys = torch.arange(height, device=boxes.device)
    xs = torch.arange(width, device=boxes.device)
    inside_y = (ys >= boxes[:, 0:1]) & (ys < boxes[:, 2:3])
    inside_x = (xs >= boxes[:, 1:2]) & (xs < boxes[:, 3:4])
    return (inside_y[:, :, None] & inside_x[:, None, :]).unsqueeze(1)


def region_mix(x, partners, boxes, decay, pool=None):
    """Eqs. (4)-(5) with context pixel decay.

    m_1 = M_1 * pool[partners_1] + d * (1 - M_1) * x, with d = decay where the first box is non-empty
    (the authors decay only when the first step fires) and 1 elsewhere;
    m_k = M_k * pool[partners_k] + (1 - M_k) * m_{k-1} for k > 1.
    x: [B, C, H, W]; pool: the images partners index (default x); partners: LongTensor [S, B];
    boxes: LongTensor [S, B, 4] as (y1, x1, y2, x2).
    """
    pool = x if pool is None else pool
    _, _, height, width = x.shape
    boxes = boxes.to(x.device)
    m = x
    for step in range(partners.shape[0]):
        mask = box_masks(boxes[step], height, width).to(x.dtype)
        if step == 0:
            fired = (boxes[0, :, 2] > boxes[0, :, 0]) & (boxes[0, :, 3] > boxes[0, :, 1])
            d = torch.where(fired, torch.as_tensor(decay, dtype=x.dtype, device=x.device),
                            torch.ones((), dtype=x.dtype, device=x.device)).view(-1, 1, 1, 1)
            m = mask * pool[partners[0]] + d * (1 - mask) * m
        else:
            m = mask * pool[partners[step]] + (1 - mask) * m
    return m


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
    """One batch's mixture parameters (on the CPU; applying moves them to the images' device). Partners
    are indices into the global batch: every process's images, gathered in rank order."""
    global_partners: torch.Tensor  # [Sg, B]
    global_lam: torch.Tensor       # [Sg, B]
    region_partners: torch.Tensor  # [Sr, B]
    region_boxes: torch.Tensor     # [Sr, B, 4]
    decay: float

    def apply(self, x, pool):
        """region(global(x)), as the authors' code (RM wraps GM): a region partner is itself globally
        mixed. `pool` is the global batch x belongs to; the globally mixed one is gathered here."""
        if self.global_partners.shape[0]:
            x = global_mix(x, _to(self.global_partners, x.device), _to(self.global_lam, x.device), pool)
        if self.region_partners.shape[0]:
            pool = concat_all_gather(x) if self.global_partners.shape[0] else pool
            x = region_mix(x, _to(self.region_partners, x.device), _to(self.region_boxes, x.device), self.decay, pool)
        return x


def _to(tensor, device):
    """`tensor` on `device`; to a GPU through pinned memory, so that the copy does not wait for the GPU."""
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

    Un-Mix (AAAI 2022, MoCo only) is here too: `unmix_queries` mixes the queries with the reversed batch.
    """

    def __init__(self, mixture, seed, rank=0):
        self.global_cfg = GlobalConfig(**mixture["global"])
        self.region_cfg = RegionConfig(**mixture["region"])
        self.joint = mixture["views"] == "joint"
        self.unmix = mixture["unmix"]
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
        # CutMix boxes (Yun et al.'s rand_bbox): side sqrt(1 - lam) of the image side, uniform centre,
        # clipped to the image.
        cut = np.sqrt(1.0 - r_lam)
        cut_h, cut_w = (cut * height).astype(np.int64), (cut * width).astype(np.int64)
        cy = self.rng.integers(0, height, size=r_lam.shape)
        cx = self.rng.integers(0, width, size=r_lam.shape)
        boxes = np.stack([np.clip(cy - cut_h // 2, 0, height), np.clip(cx - cut_w // 2, 0, width),
                          np.clip(cy + cut_h // 2, 0, height), np.clip(cx + cut_w // 2, 0, width)], -1)
        boxes = np.where(r_fired[..., None], boxes, 0)
        return MixDraw(
            global_partners=torch.from_numpy(g_partners.astype(np.int64)),
            global_lam=torch.from_numpy(np.where(g_fired, g_lam, 1.0)).float(),
            region_partners=torch.from_numpy(r_partners.astype(np.int64)),
            region_boxes=torch.from_numpy(boxes.astype(np.int64)).reshape(r_lam.shape + (4,)),
            decay=r.decay,
        )

    def unmix_queries(self, queries):
        """Un-Mix's mixed queries and their one lam ~ Beta(alpha, alpha) of the global level: the batch
        mixed with itself reversed."""
        a = self.global_cfg.alpha
        lam = float(self.rng.beta(a, a))
        return lam * queries + (1 - lam) * queries.flip(0), lam

    def state_dict(self):
        return {"bit_generator": self.rng.bit_generator.state}

    def load_state_dict(self, state):
        self.rng.bit_generator.state = state["bit_generator"]
