"""MoCo and CMC internals: the loss, the queue, the momentum update, the views, the memory bank, the fp32
head under bf16 autocast."""

import torch
import torch.nn.functional as F

from flatmix.models.cmc import CMC, cmc_loss
from flatmix.models.moco import MoCo, info_nce
from flatmix.models.resnet import build_resnet
from flatmix.models.split_bn import SplitBatchNorm


def test_resnet_widths():
    assert build_resnet("resnet50").feature_dim == 2048
    assert build_resnet("resnet50w2").feature_dim == 4096
    half = build_resnet("resnet50half", in_channels=2)
    assert half.feature_dim == 1024 and half.conv1.weight.shape == (64, 2, 7, 7)
    assert build_resnet("resnet50w2").conv1.weight.shape[0] == 128
    # torchvision's names, so conversion is a renaming
    import torchvision
    assert set(build_resnet("resnet50").state_dict()) == set(torchvision.models.resnet50().state_dict())


def test_resnet18_cifar_stem_keeps_32_pixels_and_torchvision_names():
    """The MoCo CIFAR demo's ResNet-18: a 3x3 stride-1 stem, no max-pool, BasicBlocks, 512-d; layer4 sees
    4x4 of a 32-pixel image (an ImageNet stem would leave 1x1)."""
    import torchvision
    net = build_resnet("resnet18cifar", num_classes=128)
    assert net.feature_dim == 512 and net.conv1.weight.shape == (64, 3, 3, 3) and net.conv1.stride == (1, 1)
    assert isinstance(net.maxpool, torch.nn.Identity)
    seen = _outputs(net.layer4)
    assert net(torch.randn(2, 3, 32, 32)).shape == (2, 128)
    assert seen[0][0].shape == (2, 512, 4, 4)
    reference = torchvision.models.resnet18(num_classes=128).state_dict()
    assert {k: v.shape for k, v in net.state_dict().items() if k != "conv1.weight"} == \
        {k: v.shape for k, v in reference.items() if k != "conv1.weight"}


def test_split_batchnorm_is_bn_over_each_share_of_the_batch():
    """In training each of the splits (every splits-th image) is normalised by its own statistics, and the
    running statistics are the shares' mean; in eval it is BatchNorm."""
    torch.manual_seed(0)
    split = SplitBatchNorm(3, splits=2)
    split.weight.data.uniform_(0.5, 2)
    split.bias.data.uniform_(-1, 1)
    x = torch.randn(8, 3, 5, 5) * 3 + 1
    out = split(x)
    for share in range(2):
        bn = torch.nn.BatchNorm2d(3)
        bn.load_state_dict({k: v for k, v in split.state_dict().items()} | {
            "running_mean": torch.zeros(3), "running_var": torch.ones(3)})
        assert torch.allclose(out[share::2], bn(x[share::2]), atol=1e-5)
    expected_mean = torch.stack([0.1 * x[s::2].mean((0, 2, 3)) for s in range(2)]).mean(0)
    assert torch.allclose(split.running_mean, expected_mean, atol=1e-6)
    split.eval()
    plain = torch.nn.BatchNorm2d(3).eval()
    plain.load_state_dict(split.state_dict())
    assert torch.equal(split(x), plain(x))


def test_symmetric_moco_scores_both_directions_and_queues_both_keys():
    torch.manual_seed(0)
    model = MoCo("resnet_tiny", dim=8, K=16, m=0.9, T=0.2, symmetric=True, bn_splits=2).eval()
    im1, im2 = torch.randn(4, 3, 32, 32), torch.randn(4, 3, 32, 32)
    queue = model.queue.clone()
    (l12, l21), mixed = model(im1, im2)
    assert mixed == []
    q1, q2 = (F.normalize(model.encoder_q(x), dim=1) for x in (im1, im2))
    k1, k2 = (F.normalize(model.encoder_k(x), dim=1) for x in (im1, im2))
    assert torch.allclose(l12[:, 0], (q1 * k2).sum(1) / 0.2, atol=1e-5)
    assert torch.allclose(l21[:, 0], (q2 * k1).sum(1) / 0.2, atol=1e-5)
    assert torch.allclose(l21[:, 1:], q2 @ queue / 0.2, atol=1e-5)
    assert torch.allclose(model.queue[:, :8].T, torch.cat([k1, k2]), atol=1e-5)  # the demo's order
    assert int(model.queue_ptr) == 8
    im_mix = 0.6 * im1 + 0.4 * im1.flip(0)
    _, mixed = model(im1, im2, im_mix)
    assert len(mixed) == 2  # Un-Mix's terms against each direction's keys


def test_moco_loss_is_the_hand_written_cross_entropy():
    torch.manual_seed(0)
    model = MoCo("resnet_tiny", dim=8, K=12, m=0.9, T=0.2)
    model.train()
    im_q, im_k = torch.randn(4, 3, 32, 32), torch.randn(4, 3, 32, 32)
    queue = model.queue.clone()
    (logits,), mixed = model(im_q, im_k)
    assert mixed == []
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
    out_l, out_ab = model(x, torch.tensor([0, 5, 7]))
    assert torch.equal(seen["l"], x[:, :1]) and torch.equal(seen["ab"], x[:, 1:])
    assert out_l.shape == out_ab.shape == (3, 6)
    assert torch.isfinite(cmc_loss(out_l, out_ab))


def test_cmc_forward_scores_with_the_memory_then_updates_it():
    """As NCEAverage: the positive is the sample's own entry of the other view's memory before this
    step's update; then memory[i] = normalise(m * memory[i] + (1 - m) * feature), other rows untouched."""
    torch.manual_seed(0)
    model = CMC(n_data=10, arch="resnet_tiny", dim=4, K=3, momentum=0.5)
    x, index = torch.randn(3, 3, 32, 32), torch.tensor([0, 5, 7])
    memory_l, memory_ab = model.memory_l.clone(), model.memory_ab.clone()
    out_l, out_ab = model(x, index)
    feat_l, feat_ab = (F.normalize(f, dim=1) for f in model.embed(x))
    assert torch.allclose(out_l[:, 0], (memory_ab[index] * feat_l).sum(1) / 0.07, atol=1e-5)
    assert torch.allclose(out_ab[:, 0], (memory_l[index] * feat_ab).sum(1) / 0.07, atol=1e-5)
    for memory, old, feat in ((model.memory_l, memory_l, feat_l), (model.memory_ab, memory_ab, feat_ab)):
        assert torch.allclose(memory[index], F.normalize(0.5 * old[index] + 0.5 * feat, dim=1), atol=1e-6)
        rest = torch.ones(10, dtype=torch.bool).index_fill_(0, index, False)
        assert torch.equal(memory[rest], old[rest])


def test_unmix_logits_use_own_and_reversed_keys():
    torch.manual_seed(0)
    model = MoCo("resnet_tiny", dim=8, K=12, m=0.9, T=0.2)
    model.eval()  # per-sample BN, so the keys can be recomputed below
    im_q, im_k = torch.randn(4, 3, 32, 32), torch.randn(4, 3, 32, 32)
    im_mix = 0.7 * im_q + 0.3 * im_q.flip(0)
    queue = model.queue.clone()
    (logits,), [(mixed, reversed_)] = model(im_q, im_k, im_mix)
    k = F.normalize(model.encoder_k(im_k), dim=1)
    q_mix = F.normalize(model.encoder_q(im_mix), dim=1)
    assert torch.allclose(mixed[:, 0], (q_mix * k).sum(1) / 0.2, atol=1e-5)
    assert torch.allclose(reversed_[:, 0], (q_mix * k.flip(0)).sum(1) / 0.2, atol=1e-5)
    assert torch.allclose(reversed_[:, 1:], q_mix @ queue / 0.2, atol=1e-5)


def _outputs(*modules):
    """Records each module's outputs (as its caller got them) in a list, returned one per module."""
    seen = [[] for _ in modules]
    for module, out in zip(modules, seen):
        module.register_forward_hook(lambda m, a, o, out=out: out.append(o.detach()))
    return seen


def _cross_entropy(scores):
    return -(scores[:, 0] - torch.logsumexp(scores, dim=1)).mean()


def test_moco_head_is_fp32_under_bf16_autocast():
    """The encoders run in bf16; normalisation, the logits (Un-Mix's too), the queue and the loss in fp32:
    equal to an fp32 computation by hand on the same encoder outputs."""
    torch.manual_seed(0)
    model = MoCo("resnet_tiny", dim=8, K=12, T=0.07).to(memory_format=torch.channels_last)
    assert model.queue.dtype == torch.float32
    im_q, im_k = torch.randn(4, 3, 32, 32), torch.randn(4, 3, 32, 32)
    im_mix = 0.7 * im_q + 0.3 * im_q.flip(0)
    queue = model.queue.clone()
    seen = _outputs(model.encoder_q, model.encoder_k)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        (main,), [(own, reversed_)] = model(im_q, im_k, im_mix)
        logits = (main, own, reversed_)
        losses = [info_nce(x) for x in logits]
    (q, q_mix), (k,) = seen
    assert q.dtype == torch.bfloat16  # the encoders did run in bf16
    q, q_mix, k = (F.normalize(f.float(), dim=1) for f in (q, q_mix, k))
    expected = [torch.cat([(a * b).sum(1, keepdim=True), a @ queue], dim=1) / 0.07
                for a, b in ((q, k), (q_mix, k), (q_mix, k.flip(0)))]
    for got, want, loss in zip(logits, expected, losses):
        assert got.dtype == loss.dtype == torch.float32
        assert torch.allclose(got, want, atol=1e-5)
        assert torch.allclose(loss, _cross_entropy(want), atol=1e-5)
    assert model.queue.dtype == torch.float32
    assert torch.allclose(model.queue[:, :4].T, k, atol=1e-6)


def test_cmc_head_is_fp32_under_bf16_autocast():
    """As MoCo: the scores against the memory, the memory update and the loss in fp32."""
    torch.manual_seed(0)
    model = CMC(n_data=10, arch="resnet_tiny", dim=8, K=5, T=0.07).to(memory_format=torch.channels_last)
    assert model.memory_l.dtype == model.memory_ab.dtype == torch.float32
    x, index = torch.randn(3, 3, 32, 32), torch.tensor([0, 5, 7])
    memory_l, memory_ab = model.memory_l.clone(), model.memory_ab.clone()
    seen = _outputs(model.l_to_ab, model.ab_to_l)
    torch.manual_seed(1)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out_l, out_ab = model(x, index)
        loss = cmc_loss(out_l, out_ab)
    (feat_l,), (feat_ab,) = seen
    assert feat_l.dtype == torch.bfloat16
    torch.manual_seed(1)  # the same negatives, drawn again
    idx = torch.randint(0, 10, (3, 6))
    idx[:, 0] = index
    feat_l, feat_ab = (F.normalize(f.float(), dim=1) for f in (feat_l, feat_ab))
    want_l = (memory_ab[idx] @ feat_l.unsqueeze(2)).squeeze(2) / 0.07
    want_ab = (memory_l[idx] @ feat_ab.unsqueeze(2)).squeeze(2) / 0.07
    assert out_l.dtype == out_ab.dtype == loss.dtype == torch.float32
    assert torch.allclose(out_l, want_l, atol=1e-5) and torch.allclose(out_ab, want_ab, atol=1e-5)
    assert torch.allclose(loss, _cross_entropy(want_l) + _cross_entropy(want_ab), atol=1e-5)
    assert model.memory_l.dtype == model.memory_ab.dtype == torch.float32
    assert torch.allclose(model.memory_l[index], F.normalize(0.5 * memory_l[index] + 0.5 * feat_l, dim=1), atol=1e-6)
