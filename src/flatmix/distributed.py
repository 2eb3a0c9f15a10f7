"""Distributed runtime: the process group torchrun sets up (or a single process), and the collectives
MoCo, CMC and the linear probe need, written to work in one process as well as under DDP."""

import os

import torch
import torch.distributed as dist
from torch.nn.parallel import DistributedDataParallel

from flatmix.errors import FlatmixError


def launched_processes():
    """How many processes torchrun started for this run (1 without torchrun), read before any process
    group exists: mmengine's Runner, which detection uses, sets its own up."""
    return int(os.environ.get("WORLD_SIZE", "1")) if "RANK" in os.environ else 1


def is_distributed():
    return dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1


@torch.no_grad()
def concat_all_gather(tensor):
    """Every rank's `tensor` concatenated along dim 0 (no gradient), in rank order."""
    if not is_distributed():
        return tensor
    gathered = [torch.empty_like(tensor) for _ in range(dist.get_world_size())]
    dist.all_gather(gathered, tensor.contiguous())
    return torch.cat(gathered, dim=0)


class Distributed:
    """Process group set-up: torchrun's environment when present, else a single process."""

    def __init__(self, device=None):
        """device: 'cuda' or 'cpu' to insist on one; None takes CUDA where there is one."""
        if device not in (None, "cuda", "cpu"):
            raise FlatmixError(f"device must be cuda or cpu, got {device!r}")
        if device == "cuda" and not torch.cuda.is_available():
            raise FlatmixError("device cuda: no CUDA device is available here")
        self.enabled = launched_processes() > 1
        cuda = torch.cuda.is_available() if device is None else device == "cuda"
        if self.enabled:
            local = int(os.environ.get("LOCAL_RANK", "0"))
            if cuda:
                torch.cuda.set_device(local)
            dist.init_process_group("nccl" if cuda else "gloo")
            self.rank, self.world = dist.get_rank(), dist.get_world_size()
            self.device = torch.device("cuda", local) if cuda else torch.device("cpu")
        else:
            self.rank, self.world = 0, 1
            self.device = torch.device("cuda") if cuda else torch.device("cpu")
        self.main = self.rank == 0

    def any(self, flag):
        """True on every rank when `flag` is true on any rank."""
        if not self.enabled:
            return flag
        t = torch.tensor([float(flag)], device=self.device)
        dist.all_reduce(t, op=dist.ReduceOp.MAX)
        return bool(t.item())

    def sum(self, tensor):
        """`tensor` summed over all ranks (in place)."""
        if self.enabled:
            dist.all_reduce(tensor)
        return tensor

    def gather(self, obj):
        if not self.enabled:
            return [obj]
        out = [None] * self.world
        dist.all_gather_object(out, obj)
        return out

    def barrier(self):
        if self.enabled:
            dist.barrier()

    def wrap(self, model):
        """The model under DistributedDataParallel when distributed. Parameters and buffers are made
        equal at the start; after that, buffers are not synchronised: the queue and memory bank stay
        identical through identical updates, and BN statistics are per rank (as in MoCo's shuffle BN)."""
        if not self.enabled:
            return model
        return DistributedDataParallel(model, device_ids=[self.device.index] if self.device.type == "cuda" else None,
                                       forward_sync_buffers=False)

    def close(self):
        if self.enabled:
            dist.destroy_process_group()
