"""The mixtures against hand-computed values of eqs. (3)-(5), and the Mixer's draws: counts, partners,
distributions, joint views and its checkpointed state."""

import pytest
import torch

from flatmix.mixture import Mixer, global_mix, region_mix
from flatmix.presets import DEFAULTS


def _mixer(global_mixes=0, global_p=0.0, region_mixes=0, region_p=0.0, decay=1.0, views="joint", seed=0, rank=0):
    mix = {**DEFAULTS["mixture"], "views": views,
           "global": {"mixes": global_mixes, "p": global_p, "alpha": 1.0},
           "region": {"mixes": region_mixes, "p": region_p, "beta": 1.0, "decay": decay}}
    return Mixer(mix, seed, rank)


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


def test_global_mix_takes_partners_from_the_pool():
    x = torch.tensor([1.0, 2.0]).view(2, 1, 1, 1)
    pool = torch.tensor([10.0, 20.0, 1.0, 2.0]).view(4, 1, 1, 1)  # rank 1's samples are pool[2:]
    m = global_mix(x, torch.tensor([[0, 1]]), torch.tensor([[0.5, 0.5]]), pool)
    assert m.flatten().tolist() == [5.5, 11.0]


@pytest.mark.parametrize("mixes", range(8))
def test_mixes_k_draws_exactly_k_steps_per_level(mixes):
    """`mixes` counts mixing steps (the authors' num_mix), not images: k mixes, k partners per sample."""
    d = _mixer(global_mixes=mixes, global_p=1.0, region_mixes=mixes, region_p=1.0).draw(8, 8, 16, 16)
    assert d.global_partners.shape == d.global_lam.shape == (mixes, 8)
    assert d.region_partners.shape == (mixes, 8) and d.region_boxes.shape == (mixes, 8, 4)
    assert (d.global_lam < 1).all()  # p = 1: every step fires


def test_partners_are_uniform_over_the_global_batch_and_never_the_sample_itself():
    batch, world = 16, 4
    for rank in range(world):
        d = _mixer(global_mixes=7, global_p=1.0, region_mixes=7, region_p=1.0, rank=rank).draw(batch, batch * world, 8, 8)
        own = rank * batch + torch.arange(batch)
        partners = torch.cat([d.global_partners, d.region_partners])
        for _ in range(200):
            more = _mixer(global_mixes=7, rank=rank, seed=len(partners)).draw(batch, batch * world, 8, 8)
            partners = torch.cat([partners, more.global_partners])
        assert not (partners == own).any()
        assert partners.min() >= 0 and partners.max() < batch * world
        counts = torch.stack([torch.bincount(partners[:, i], minlength=batch * world) for i in range(batch)])
        assert (counts[torch.arange(batch), own] == 0).all()
        others = counts.sum(0).float() / batch  # each other image is a partner ~ equally often
        expected = partners.shape[0] / (batch * world - 1)
        assert ((others - expected).abs() / expected < 0.2).sum() >= batch * world - batch


def test_draw_distributions():
    mixer = _mixer(global_mixes=3, global_p=0.3, region_mixes=2, region_p=0.5)
    draws = [mixer.draw(64, 64, 32, 48) for _ in range(50)]
    g_lam = torch.cat([d.global_lam for d in draws], 1)
    assert abs((g_lam < 1).float().mean().item() - 0.3) < 0.03      # firing rate p
    fired = g_lam[g_lam < 1]
    assert abs(fired.mean().item() - 0.5) < 0.03                     # Beta(1, 1) is uniform
    boxes = torch.cat([d.region_boxes for d in draws], 1)
    nonempty = (boxes[..., 2] > boxes[..., 0]) & (boxes[..., 3] > boxes[..., 1])
    assert abs(nonempty.float().mean().item() - 0.5) < 0.05
    assert (boxes[..., 2] <= 32).all() and (boxes[..., 3] <= 48).all() and (boxes >= 0).all()
    # box area fraction ~ 1 - lam before clipping: mean below 0.5 (clipping), well above 0
    area = ((boxes[..., 2] - boxes[..., 0]) * (boxes[..., 3] - boxes[..., 1]))[nonempty].float() / (32 * 48)
    assert 0.25 < area.mean().item() < 0.5


def test_state_restores_the_same_draws():
    mixer = _mixer(global_mixes=2, global_p=0.5, region_mixes=2, region_p=0.5)
    mixer.draw(8, 8, 16, 16)
    state = mixer.state_dict()
    a = mixer.draw(8, 8, 16, 16)
    mixer.load_state_dict(state)
    b = mixer.draw(8, 8, 16, 16)
    assert torch.equal(a.global_partners, b.global_partners) and torch.equal(a.global_lam, b.global_lam)
    assert torch.equal(a.region_partners, b.region_partners) and torch.equal(a.region_boxes, b.region_boxes)


def test_off_mixtures_are_identity():
    views = [torch.randn(4, 3, 8, 8), torch.randn(4, 3, 8, 8)]
    mixed = _mixer()(list(views))
    assert all(torch.equal(a, b) for a, b in zip(mixed, views))


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_views_are_region_on_global_with_one_draw(dtype):
    """region(global(x)), with the query and key views sharing partners, lam and boxes (joint views)."""
    mixer = _mixer(global_mixes=2, global_p=1.0, region_mixes=2, region_p=1.0, decay=0.5)
    q, k = torch.randn(6, 3, 10, 10).to(dtype), torch.randn(6, 3, 10, 10).to(dtype)
    state = mixer.state_dict()
    mq, mk = mixer([q, k])
    mixer.load_state_dict(state)
    d = mixer.draw(6, 6, 10, 10)
    for view, mixed in ((q, mq), (k, mk)):
        expected = region_mix(global_mix(view, d.global_partners, d.global_lam), d.region_partners, d.region_boxes, 0.5)
        assert torch.equal(mixed, expected)


def test_query_views_leave_the_key_alone():
    mixer = _mixer(global_mixes=3, global_p=1.0, views="query")
    q, k = torch.randn(6, 3, 10, 10), torch.randn(6, 3, 10, 10)
    mq, mk = mixer([q, k])
    assert not torch.equal(mq, q) and mk is k
