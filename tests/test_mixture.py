"""The mixtures against hand-computed values of eqs. (3)-(5), and the sampler's distributions."""

import pytest
import torch

from flatmix.mixture import GlobalConfig, MixtureSampler, RegionConfig, global_mix, region_mix


def _images():
    # three 1-channel 4x4 images with constant values 1, 2, 4
    return torch.tensor([1.0, 2.0, 4.0]).view(3, 1, 1, 1).expand(3, 1, 4, 4).clone()


def test_global_mix_hand_computed():
    x = _images()
    partners = torch.tensor([[1, 2, 0], [2, 0, 1]])
    lam = torch.tensor([[0.5, 1.0, 0.25], [0.8, 0.5, 1.0]])
    m = global_mix(x, partners, lam)
    # sample 0: m1 = .5*1 + .5*2 = 1.5; m2 = .8*1.5 + .2*4 = 2.0
    # sample 1: m1 = 2 (did not fire);   m2 = .5*2 + .5*1 = 1.5
    # sample 2: m1 = .25*4 + .75*1 = 1.75; m2 = 1.75 (did not fire)
    assert torch.allclose(m[:, 0, 0, 0], torch.tensor([2.0, 1.5, 1.75]))
    assert torch.equal(x, _images())  # input untouched


def test_region_mix_hand_computed_with_decay_only_on_first_fired_step():
    x = _images()
    partners = torch.tensor([[1, 2, 0], [2, 0, 1]])
    boxes = torch.tensor([
        [[0, 0, 2, 2], [0, 0, 0, 0], [1, 1, 3, 3]],   # step 1: sample 1 did not fire
        [[2, 2, 4, 4], [0, 0, 1, 4], [0, 0, 0, 0]],   # step 2
    ])
    m = region_mix(x, partners, boxes, decay=0.2)
    # sample 0: top-left 2x2 <- x1 = 2; context 1 * 0.2; step 2 pastes x2 = 4 into the bottom-right 2x2
    expected0 = torch.full((4, 4), 0.2)
    expected0[:2, :2] = 2.0
    expected0[2:, 2:] = 4.0
    # sample 1: step 1 empty -> no decay (d = 1); step 2 pastes x0 = 1 into row 0
    expected1 = torch.full((4, 4), 2.0)
    expected1[0, :] = 1.0
    # sample 2: centre 2x2 <- x0 = 1, context 4 * 0.2 = 0.8; step 2 empty
    expected2 = torch.full((4, 4), 0.8)
    expected2[1:3, 1:3] = 1.0
    assert torch.allclose(m[:, 0], torch.stack([expected0, expected1, expected2]))
    assert torch.equal(x, _images())


def test_sampler_distributions_and_state():
    sampler = MixtureSampler(GlobalConfig(n=4, p=0.3, alpha=1.0), RegionConfig(n=3, p=0.5, beta=1.0), seed=1)
    draws = [sampler.draw(64, 32, 48) for _ in range(50)]
    g_lam = torch.cat([d.global_lam for d in draws], 1)
    assert g_lam.shape[0] == 3
    assert abs((g_lam < 1).float().mean().item() - 0.3) < 0.03      # firing rate p
    fired = g_lam[g_lam < 1]
    assert abs(fired.mean().item() - 0.5) < 0.03                     # Beta(1, 1) is uniform
    for d in draws[:5]:                                              # each step a permutation of the batch
        assert all(sorted(row.tolist()) == list(range(64)) for row in d.global_partners)
    boxes = torch.cat([d.region_boxes for d in draws], 1)
    nonempty = (boxes[..., 2] > boxes[..., 0]) & (boxes[..., 3] > boxes[..., 1])
    assert abs(nonempty.float().mean().item() - 0.5) < 0.05
    assert (boxes[..., 2] <= 32).all() and (boxes[..., 3] <= 48).all() and (boxes >= 0).all()
    # box area fraction ~ 1 - lam before clipping: mean below 0.5 (clipping), well above 0
    area = ((boxes[..., 2] - boxes[..., 0]) * (boxes[..., 3] - boxes[..., 1]))[nonempty].float() / (32 * 48)
    assert 0.25 < area.mean().item() < 0.5

    state = sampler.state_dict()
    a = sampler.draw(8, 16, 16)
    sampler.load_state_dict(state)
    b = sampler.draw(8, 16, 16)
    assert torch.equal(a.global_lam, b.global_lam) and torch.equal(a.region_boxes, b.region_boxes)


def test_off_mixtures_are_identity():
    sampler = MixtureSampler(GlobalConfig(), RegionConfig(), seed=0)
    x = torch.randn(4, 3, 8, 8)
    assert torch.equal(sampler.draw(4, 8, 8).apply(x, decay=0.2), x)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_apply_is_region_on_global(dtype):
    sampler = MixtureSampler(GlobalConfig(n=2, p=1.0), RegionConfig(n=2, p=1.0), seed=3)
    x = torch.randn(6, 3, 10, 10).to(dtype)
    d = sampler.draw(6, 10, 10)
    expected = region_mix(global_mix(x, d.global_partners, d.global_lam), d.region_partners, d.region_boxes, 0.5)
    assert torch.equal(d.apply(x, decay=0.5), expected)
