"""The paper's core: global (eq. 3) and region-level (eqs. 4-5) image mixtures, and the sampler that
draws their parameters the way the authors' code did.

Both mixtures are batched tensor ops on any device (one small loop over the n - 1 mixing steps, none
over samples) and leave their input untouched. A step that did not fire is the identity: lam = 1 for
the global mixture, an empty box for the region mixture.
"""

from dataclasses import dataclass

import numpy as np
import torch


def global_mix(x, partners, lam):
    """Eq. (3): m_0 = x, m_k = lam_k * m_{k-1} + (1 - lam_k) * x[partners_k].

    x: [B, C, H, W]; partners: LongTensor [S, B] of batch indices (one row per step); lam: [S, B].
    """
    m = x
    lam = lam.to(dtype=x.dtype, device=x.device)
    for step in range(partners.shape[0]):
        l = lam[step].view(-1, 1, 1, 1)
        m = l * m + (1 - l) * x[partners[step]]
    return m


def box_masks(boxes, height, width):
    """[B, 1, H, W] masks, 1 inside each half-open box (y1, x1, y2, x2) of a LongTensor [B, 4]."""
    ys = torch.arange(height, device=boxes.device)
    xs = torch.arange(width, device=boxes.device)
    inside_y = (ys >= boxes[:, 0:1]) & (ys < boxes[:, 2:3])
    inside_x = (xs >= boxes[:, 1:2]) & (xs < boxes[:, 3:4])
    return (inside_y[:, :, None] & inside_x[:, None, :]).unsqueeze(1)


def region_mix(x, partners, boxes, decay):
    """Eqs. (4)-(5) with context pixel decay.

    m_1 = M_1 * x[partners_1] + d * (1 - M_1) * x, with d = decay where the first box is non-empty
    (the authors decay only when the first step fires) and 1 elsewhere;
    m_k = M_k * x[partners_k] + (1 - M_k) * m_{k-1} for k > 1.
    x: [B, C, H, W]; partners: LongTensor [S, B]; boxes: LongTensor [S, B, 4] as (y1, x1, y2, x2).
    """
    _, _, height, width = x.shape
    boxes = boxes.to(x.device)
    m = x
    for step in range(partners.shape[0]):
        mask = box_masks(boxes[step], height, width).to(x.dtype)
        if step == 0:
            fired = (boxes[0, :, 2] > boxes[0, :, 0]) & (boxes[0, :, 3] > boxes[0, :, 1])
            d = torch.where(fired, torch.as_tensor(decay, dtype=x.dtype, device=x.device),
                            torch.ones((), dtype=x.dtype, device=x.device)).view(-1, 1, 1, 1)
            m = mask * x[partners[0]] + d * (1 - mask) * m
        else:
            m = mask * x[partners[step]] + (1 - mask) * m
    return m


@dataclass
class GlobalConfig:
    n: int = 1          # images in a mixture (n - 1 mixing steps); 1 turns the mixture off
    p: float = 0.0      # probability that each step fires
    alpha: float = 1.0  # lam ~ Beta(alpha, alpha)


@dataclass
class RegionConfig:
    n: int = 1
    p: float = 0.0
    beta: float = 1.0   # lam ~ Beta(beta, beta); the box side is sqrt(1 - lam) of the image side
    decay: float = 1.0  # context pixel decay of the first step; 1.0 = none


@dataclass
class MixDraw:
    """One batch's mixture parameters (on the CPU; the mixtures move them to the images' device)."""
    global_partners: torch.Tensor  # [Sg, B]
    global_lam: torch.Tensor       # [Sg, B]
    region_partners: torch.Tensor  # [Sr, B]
    region_boxes: torch.Tensor     # [Sr, B, 4]

    def apply(self, x, decay):
        """region(global(x)), as the authors' code: region mixing on top of global mixing."""
        if self.global_partners.shape[0]:
            x = global_mix(x, _to(self.global_partners, x.device), _to(self.global_lam, x.device))
        if self.region_partners.shape[0]:
            x = region_mix(x, _to(self.region_partners, x.device), _to(self.region_boxes, x.device), decay)
        return x


def _to(tensor, device):
    """`tensor` on `device`; to a GPU through pinned memory, so that the copy does not wait for the GPU."""
    if device.type != "cuda":
        return tensor
    return tensor.pin_memory().to(device, non_blocking=True)


class MixtureSampler:
    """Draws partners (a fresh permutation of the batch per step), lam ~ Beta, per-step firing with
    probability p, and CutMix boxes, from its own seeded generator whose state is checkpointed."""

    def __init__(self, global_cfg, region_cfg, seed):
        self.global_cfg, self.region_cfg = global_cfg, region_cfg
        self.rng = np.random.Generator(np.random.PCG64(seed))

    def _steps(self, n, p, a, batch):
        steps = max(n - 1, 0)
        partners = np.stack([self.rng.permutation(batch) for _ in range(steps)]) if steps else \
            np.zeros((0, batch), dtype=np.int64)
        lam = self.rng.beta(a, a, size=(steps, batch))
        fired = self.rng.random((steps, batch)) < p
        return partners, lam, fired

    def draw(self, batch, height, width):
        g = self.global_cfg
        g_partners, g_lam, g_fired = self._steps(g.n, g.p, g.alpha, batch)
        r = self.region_cfg
        r_partners, r_lam, r_fired = self._steps(r.n, r.p, r.beta, batch)
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
        )

    def unmix_lam(self):
        """Un-Mix's one lam for the whole batch, ~ Beta(alpha, alpha) of the global mixture."""
        a = self.global_cfg.alpha
        return float(self.rng.beta(a, a))

    def state_dict(self):
        return {"bit_generator": self.rng.bit_generator.state}

    def load_state_dict(self, state):
        self.rng.bit_generator.state = state["bit_generator"]
