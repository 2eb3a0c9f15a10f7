"""MoCo and CMC internals: the loss, the queue, the momentum update, the views, the memory bank."""

import torch
import torch.nn.functional as F

from flatmix.models.cmc import CMC, cmc_loss
from flatmix.models.moco import MoCo, info_nce
from flatmix.models.resnet import build_resnet


def test_resnet_widths():
    assert build_resnet("resnet50").feature_dim == 2048
    assert build_resnet("resnet50w2").feature_dim == 4096
    half = build_resnet("resnet50half", in_channels=2)
    assert half.feature_dim == 1024 and half.conv1.weight.shape == (64, 2, 7, 7)
    assert build_resnet("resnet50w2").conv1.weight.shape[0] == 128
    # torchvision's names, so conversion is a renaming
    import torchvision
    assert set(build_resnet("resnet50").state_dict()) == set(torchvision.models.resnet50().state_dict())


def test_moco_loss_is_the_hand_written_cross_entropy():
    torch.manual_seed(0)
    model = MoCo("resnet_tiny", dim=8, K=12, m=0.9, T=0.2)
    model.train()
    im_q, im_k = torch.randn(4, 3, 32, 32), torch.randn(4, 3, 32, 32)
    queue = model.queue.clone()
    logits = model(im_q, im_k)
    q = F.normalize(model.encoder_q(im_q), dim=1)
    k = F.normalize(model.encoder_k(im_k), dim=1)  # the key encoder after this step's momentum update
    scores = torch.cat([(q * k).sum(1, keepdim=True), q @ queue], dim=1) / 0.2
    expected = -(scores[:, 0] - torch.logsumexp(scores, dim=1)).mean()
    assert logits.shape == (4, 13)
    assert torch.allclose(info_nce(logits), expected, atol=1e-5)


def test_queue_wraps_around():
    model = MoCo("resnet_tiny", dim=4, K=10)
    batches = [F.normalize(torch.randn(4, 4), dim=1) for _ in range(3)]
    for b in batches:
        model.enqueue(b)
    assert int(model.queue_ptr) == 2
    assert torch.equal(model.queue[:, 8:10].T, batches[2][:2])
    assert torch.equal(model.queue[:, 0:2].T, batches[2][2:])
    assert torch.equal(model.queue[:, 4:8].T, batches[1])


def test_momentum_update():
    model = MoCo("resnet_tiny", dim=4, K=8, m=0.75)
    with torch.no_grad():
        for p in model.encoder_q.parameters():
            p.add_(1.0)
    before_k = [p.clone() for p in model.encoder_k.parameters()]
    model.momentum_update()
    for q, k, k0 in zip(model.encoder_q.parameters(), model.encoder_k.parameters(), before_k):
        assert torch.allclose(k, 0.75 * k0 + 0.25 * q)
        assert not k.requires_grad


def test_cmc_splits_channels_between_the_two_encoders():
    model = CMC(n_data=20, arch="resnet_tiny", dim=8, K=5)
    seen = {}
    model.l_to_ab.conv1.register_forward_pre_hook(lambda m, a: seen.__setitem__("l", a[0]))
    model.ab_to_l.conv1.register_forward_pre_hook(lambda m, a: seen.__setitem__("ab", a[0]))
    x = torch.randn(3, 3, 32, 32)
    out_l, out_ab, feat_l, feat_ab = model(x, torch.tensor([0, 5, 7]))
    assert torch.equal(seen["l"], x[:, :1]) and torch.equal(seen["ab"], x[:, 1:])
    assert out_l.shape == out_ab.shape == (3, 6)
    # the positive is the sample's own entry of the other view's memory
    assert torch.allclose(out_l[:, 0], (model.memory_ab[[0, 5, 7]] * feat_l).sum(1) / 0.07, atol=1e-5)
    assert torch.isfinite(cmc_loss(out_l, out_ab))


def test_cmc_memory_update_with_momentum():
    model = CMC(n_data=6, arch="resnet_tiny", dim=4, K=3, momentum=0.5)
    old = model.memory_l[2].clone()
    feat = F.normalize(torch.randn(1, 4), dim=1)
    model.update_memory(feat, feat, torch.tensor([2]))
    assert torch.allclose(model.memory_l[2], F.normalize(0.5 * old + 0.5 * feat[0], dim=0))
    assert torch.allclose(model.memory_l[2].norm(), torch.tensor(1.0))


def test_unmix_logits_use_own_and_reversed_keys():
    torch.manual_seed(0)
    model = MoCo("resnet_tiny", dim=8, K=12, m=0.9, T=0.2)
    model.eval()  # per-sample BN, so the keys can be recomputed below
    im_q, im_k = torch.randn(4, 3, 32, 32), torch.randn(4, 3, 32, 32)
    im_mix = 0.7 * im_q + 0.3 * im_q.flip(0)
    queue = model.queue.clone()
    logits, mixed, reversed_ = model(im_q, im_k, im_mix)
    k = F.normalize(model.encoder_k(im_k), dim=1)
    q_mix = F.normalize(model.encoder_q(im_mix), dim=1)
    assert torch.allclose(mixed[:, 0], (q_mix * k).sum(1) / 0.2, atol=1e-5)
    assert torch.allclose(reversed_[:, 0], (q_mix * k.flip(0)).sum(1) / 0.2, atol=1e-5)
    assert torch.allclose(reversed_[:, 1:], q_mix @ queue / 0.2, atol=1e-5)
