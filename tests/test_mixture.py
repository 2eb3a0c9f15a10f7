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


@pytest.mark.parametrize("coin", [False, True])
def test_region_mix_hand_computed_with_decay_where_the_first_step_fired(coin):
    """Sample 1's first box is empty: decayed if its coin fired (the box clipped away, as the authors'
    RM decays on the coin), not if it did not fire."""
    x = _images()
    partners = torch.tensor([[1, 2, 0], [2, 0, 1]])
    boxes = torch.tensor([
        [[0, 0, 2, 2], [0, 0, 0, 0], [1, 1, 3, 3]],   # step 1: sample 1's box empty
        [[2, 2, 4, 4], [0, 0, 1, 4], [0, 0, 0, 0]],   # step 2
    ])
    m = region_mix(x, partners, boxes, torch.tensor([True, coin, True]), decay=0.2)
    # sample 0: top-left 2x2 <- x1 = 2; context 1 * 0.2; step 2 pastes x2 = 4 into the bottom-right 2x2
    expected0 = torch.full((4, 4), 0.2)
    expected0[:2, :2] = 2.0
    expected0[2:, 2:] = 4.0
    # sample 1: context 2 * 0.2 where its first coin fired, else 2; step 2 pastes x0 = 1 into row 0
    expected1 = torch.full((4, 4), 0.4 if coin else 2.0)
    expected1[0, :] = 1.0
    # sample 2: centre 2x2 <- x0 = 1, context 4 * 0.2 = 0.8; step 2 empty
    expected2 = torch.full((4, 4), 0.8)
    expected2[1:3, 1:3] = 1.0
    assert torch.allclose(m[:, 0], torch.stack([expected0, expected1, expected2]))
    assert torch.equal(x, _images())


def _equation_3(x, partners, lam, pool):
    """Eq. (3) step by step, as written (the reference the closed form is checked against)."""
    m = x
    for step in range(partners.shape[0]):
        weight = lam[step].to(x.dtype).view(-1, 1, 1, 1)
        m = weight * m + (1 - weight) * pool[partners[step]]
    return m


def _equations_4_5(x, partners, boxes, decayed, decay, pool):
    """Eqs. (4)-(5) step by step with box masks, as written."""
    ys, xs = torch.arange(x.shape[2]), torch.arange(x.shape[3])
    m = x
    for step in range(partners.shape[0]):
        b = boxes[step]
        mask = (((ys >= b[:, 0:1]) & (ys < b[:, 2:3]))[:, :, None]
                & ((xs >= b[:, 1:2]) & (xs < b[:, 3:4]))[:, None, :]).unsqueeze(1).to(x.dtype)
        d = torch.where(decayed, decay, 1.0).to(x.dtype).view(-1, 1, 1, 1) if step == 0 else 1
        m = mask * pool[partners[step]] + d * (1 - mask) * m
    return m


@pytest.mark.parametrize("per_sample", [True, False], ids=["cpu-path", "batched-gpu-path"])
@pytest.mark.parametrize("dtype,tol", [(torch.float32, 1e-6), (torch.bfloat16, 5e-2)])
def test_the_closed_forms_equal_the_equations_step_by_step(dtype, tol, per_sample):
    """The paper's best G+R (4 global mixes, 5 region mixes, p 0.5, decay 0.2) on random draws, the
    partners taken from a global batch of 4 processes (this is rank 2), the input left untouched. Both
    paths run here: the batched one is the GPU's. bf16's tolerance is a few of its ulps at |x| ~ 4, as
    the step-by-step form rounds after every step."""
    mixer = _mixer(global_mixes=4, global_p=0.5, region_mixes=5, region_p=0.5, decay=0.2, rank=2)
    pool = torch.randn(32, 3, 24, 24).to(dtype)
    x = pool[16:24].clone()
    for _ in range(20):
        d = mixer.draw(8, 32, 24, 24)
        g = global_mix(x, d.global_partners, d.global_lam, pool, per_sample)
        error = (g - _equation_3(x, d.global_partners, d.global_lam, pool)).abs().max().item()
        assert error <= tol, error
        r = region_mix(g, d.region_partners, d.region_boxes, d.region_decayed, 0.2, pool, per_sample)
        assert torch.equal(r, _equations_4_5(g, d.region_partners, d.region_boxes, d.region_decayed, 0.2, pool))
    assert torch.equal(x, pool[16:24])


def test_a_first_step_that_fires_decays_even_when_its_box_is_clipped_away():
    """At 2 x 2 pixels every CutMix box comes out empty (half its side rounds to 0), so with p 1 every
    image is only decayed."""
    mixer = _mixer(region_mixes=1, region_p=1.0, decay=0.5)
    x = torch.rand(16, 3, 2, 2)
    d = mixer.draw(16, 16, 2, 2)
    boxes = d.region_boxes
    assert ((boxes[..., 2] == boxes[..., 0]) | (boxes[..., 3] == boxes[..., 1])).all() and d.region_decayed.all()
    assert torch.allclose(mixer([x])[0], 0.5 * x)


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
        mixed_globally = global_mix(view, d.global_partners, d.global_lam)
        expected = region_mix(mixed_globally, d.region_partners, d.region_boxes, d.region_decayed, 0.5)
        assert torch.equal(mixed, expected)


def test_query_views_leave_the_key_alone():
    mixer = _mixer(global_mixes=3, global_p=1.0, views="query")
    q, k = torch.randn(6, 3, 10, 10), torch.randn(6, 3, 10, 10)
    mq, mk = mixer([q, k])
    assert not torch.equal(mq, q) and mk is k


@pytest.mark.parametrize("prob", [0.0, 1.0])
def test_unmix_mixes_by_mixup_with_probability_unmix_prob_else_by_cutmix(prob):
    """unmix_prob 1: always the batch blended with itself reversed; 0: always a box of the reversed batch
    pasted in, lam the share of pixels outside it (the authors' main_moco_unmix.py)."""
    mixer = Mixer({**DEFAULTS["mixture"], "unmix": True, "unmix_prob": prob}, 0)
    q = torch.randn(5, 3, 16, 16)
    for _ in range(10):
        mixed, lam = mixer.unmix_queries(q)
        if prob:
            assert torch.allclose(mixed, lam * q + (1 - lam) * q.flip(0))
            continue
        pasted = (mixed != q).any(1)  # [B, H, W]; the middle sample is its own reverse
        assert not pasted[2].any() and torch.equal(pasted[0], pasted[1])
        inside = torch.zeros(16, 16, dtype=torch.bool)
        ys, xs = pasted[0].nonzero(as_tuple=True)
        if len(ys):
            inside[ys.min():ys.max() + 1, xs.min():xs.max() + 1] = True
            assert torch.equal(pasted[0], inside) and torch.equal(mixed[:, :, inside], q.flip(0)[:, :, inside])
        assert lam == pytest.approx(1 - inside.sum().item() / 256)
        assert torch.equal(mixed[:, :, ~inside], q[:, :, ~inside])


def test_unmix_chooses_mixup_at_its_rate():
    mixer = Mixer({**DEFAULTS["mixture"], "unmix": True, "unmix_prob": 0.5}, 0)
    q = torch.rand(4, 1, 8, 8)
    mixups = sum(bool(torch.allclose(m, lam * q + (1 - lam) * q.flip(0)))
                 for m, lam in (mixer.unmix_queries(q) for _ in range(400)))
    assert 160 < mixups < 240
