"""MoCo and CMC internals: the loss, the queue, the momentum update, the views, the memory bank, the fp32
head under bf16 autocast."""

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
    logits, mixed, reversed_ = model(im_q, im_k, im_mix)
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
        logits = model(im_q, im_k, im_mix)
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
