"""Run under `torchrun --nproc_per_node=2` (gloo, CPU) by test_pretrain.py: checks what DDP must hold for
MoCo and CMC, step by step. Exits non-zero (an AssertionError) when any of it does not."""

import torch
import torch.distributed as dist
import torch.nn.functional as F

from flatmix.distributed import Distributed
from flatmix.mixture import Mixer, global_mix, region_mix
from flatmix.models.cmc import CMC, cmc_loss
from flatmix.models.moco import MoCo, info_nce
from flatmix.presets import DEFAULTS


def gathered(t):
    out = [torch.empty_like(t) for _ in range(dist.get_world_size())]
    dist.all_gather(out, t.contiguous())
    return out


def same_on_all_ranks(t):
    return all(torch.equal(t, other) for other in gathered(t))


def check_moco(env):
    rank = env.rank
    torch.manual_seed(0)  # same initial weights on every rank
    model = MoCo("resnet_tiny", dim=8, K=32, m=0.9)
    net = env.wrap(model)
    opt = torch.optim.SGD([p for p in model.parameters() if p.requires_grad], lr=0.1, momentum=0.9)
    torch.manual_seed(100 + rank)  # different data and shuffles per rank
    seen, keys = {}, {}
    model.encoder_k.register_forward_pre_hook(lambda m, a: seen.__setitem__("k_input", a[0].clone()))
    shuffled_keys = model._shuffled_keys
    model._shuffled_keys = lambda x: keys.setdefault("k", shuffled_keys(x))
    foreign = 0
    for step in range(5):
        im_q, im_k = torch.randn(4, 3, 32, 32), torch.randn(4, 3, 32, 32)
        ptr = int(model.queue_ptr)
        keys.clear()
        loss = info_nce(net(im_q, im_k)[0][0])
        opt.zero_grad()
        loss.backward()
        opt.step()
        # shuffle BN: the key encoder saw samples of the other rank
        local = {tuple(r.flatten()[:4].tolist()) for r in im_k}
        foreign += sum(tuple(r.flatten()[:4].tolist()) not in local for r in seen["k_input"])
        # the queue received every rank's keys, in rank order, and is the same everywhere
        new = model.queue[:, ptr:ptr + 8].T
        assert torch.allclose(new[rank * 4:(rank + 1) * 4], F.normalize(keys["k"], dim=1)), "own keys not queued"
        assert same_on_all_ranks(model.queue), "queues differ between ranks"
        # identical weights after each step
        params = torch.cat([p.detach().flatten() for p in model.parameters()])
        assert same_on_all_ranks(params), f"weights differ between ranks after step {step}"
    assert foreign > 0, "shuffle BN never moved a sample across ranks"
    # unshuffling restores the order: with BN in eval mode (the same running statistics on every rank),
    # keys computed on the shuffled batch equal keys computed on the local batch
    for buffer in model.encoder_k.buffers():
        dist.broadcast(buffer, src=0)
    model.encoder_k.eval()
    x = torch.randn(4, 3, 32, 32)
    assert torch.allclose(shuffled_keys(x), model.encoder_k(x), atol=1e-5), "shuffle BN lost the order"


def check_cmc(env):
    rank = env.rank
    torch.manual_seed(0)
    model = CMC(n_data=40, arch="resnet_tiny", dim=8, K=6)
    net = env.wrap(model)
    opt = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
    torch.manual_seed(100 + rank)
    for step in range(3):
        index = torch.arange(4) + 4 * rank + 8 * step
        before = model.memory_l.clone()
        loss = cmc_loss(*net(torch.randn(4, 3, 32, 32), index))
        # the forward updated the memory with every rank's samples
        changed = (model.memory_l != before).any(1).nonzero().flatten().tolist()
        assert changed == list(range(8 * step, 8 * step + 8)), f"memory rows updated: {changed}"
        opt.zero_grad()
        loss.backward()
        opt.step()
        assert same_on_all_ranks(model.memory_l) and same_on_all_ranks(model.memory_ab)
        assert same_on_all_ranks(torch.cat([p.detach().flatten() for p in model.parameters()]))


def check_mixer(env):
    """Partners come from the whole global batch (the other rank's images too), never the sample itself,
    and a region partner is the partner's globally mixed image, gathered from its rank."""
    mix = {**DEFAULTS["mixture"], "global": {"mixes": 3, "p": 1.0, "alpha": 1.0},
           "region": {"mixes": 2, "p": 1.0, "beta": 1.0, "decay": 0.5}}
    mixer, replay = Mixer(mix, 0, env.rank), Mixer(mix, 0, env.rank)
    local, world = 4, env.world
    foreign = 0
    for step in range(5):
        torch.manual_seed(1000 * step + env.rank)
        q, k = torch.randn(local, 3, 8, 8), torch.randn(local, 3, 8, 8)
        replay.load_state_dict(mixer.state_dict())
        mq, mk = mixer([q, k])
        d = replay.draw(local, local * world, 8, 8)
        partners = torch.cat([d.global_partners, d.region_partners])
        own = env.rank * local + torch.arange(local)
        assert not (partners == own).any(), "a sample was mixed with itself"
        foreign += int(((partners // local) != env.rank).sum())
        for view, mixed in ((q, mq), (k, mk)):
            g = global_mix(view, d.global_partners, d.global_lam, torch.cat(gathered(view)))
            expected = region_mix(g, d.region_partners, d.region_boxes, d.region_decayed, 0.5, torch.cat(gathered(g)))
            assert torch.equal(mixed, expected), "mixed views differ from eqs. (3)-(5) on the global batch"
    assert foreign > 0, "no partner ever came from the other rank"


if __name__ == "__main__":
    env = Distributed()  # gloo on CPU
    check_moco(env)
    check_cmc(env)
    check_mixer(env)
    env.close()
    print(f"rank {env.rank}: DDP checks passed")
