"""Scale-out for training (§3.7): under torchrun the generator is sharded with FSDP2, the frozen
encoders and backbone are replicated on every rank (data parallel), and each rank takes its
slice of the global batch.

Without torchrun's environment (WORLD_SIZE unset or 1) everything here is a no-op, so the same
entry point runs on one process. The backend is NCCL on CUDA, gloo on the CPU.

FSDP2 facts used here: fully_shard(module) turns its parameters into DTensors and gathers them
around the module's __call__, so the generator is always run as generator(cond, mask) (its
forward), never through generate(); gradients are averaged over ranks in reduce-scatter; the
full state dict for saving comes from torch.distributed.checkpoint.state_dict with
full_state_dict=True, cpu_offload=True, which leaves it on rank 0 only.
"""
from __future__ import annotations

import os
from dataclasses import dataclass

import torch
import torch.distributed as dist
from torch import nn


@dataclass
class DistributedContext:
    rank: int = 0
    world_size: int = 1
    local_rank: int = 0

    @property
    def enabled(self) -> bool:
        return self.world_size > 1

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    def barrier(self) -> None:
        if self.enabled:
            dist.barrier()

    def sum(self, tensor: torch.Tensor) -> torch.Tensor:
        """Sum over ranks (a copy; the input is unchanged)."""
        tensor = tensor.clone()
        if self.enabled:
            dist.all_reduce(tensor, op=dist.ReduceOp.SUM)
        return tensor

    def average_gradients(self, parameters) -> None:
        """All-reduce mean of the gradients of replicated (unsharded) trainable parameters."""
        if not self.enabled:
            return
        for p in parameters:
            if p.grad is not None:
                dist.all_reduce(p.grad, op=dist.ReduceOp.SUM)
                p.grad.div_(self.world_size)

    def shutdown(self) -> None:
        if self.enabled and dist.is_initialized():
            dist.destroy_process_group()


def init_distributed(device: str = "auto") -> DistributedContext:
    """Join torchrun's process group when WORLD_SIZE > 1 (and pin this rank's GPU before ComfyUI picks it)."""
    world_size = int(os.environ.get("WORLD_SIZE", "1"))
    if world_size <= 1:
        return DistributedContext()
    rank, local_rank = int(os.environ["RANK"]), int(os.environ.get("LOCAL_RANK", "0"))
    use_cuda = device != "cpu" and torch.cuda.is_available()
    if use_cuda:
        torch.cuda.set_device(local_rank)
    if not dist.is_initialized():
        dist.init_process_group(backend="nccl" if use_cuda else "gloo")
    return DistributedContext(rank, world_size, local_rank)


def shard_generator(generator: nn.Module, context: DistributedContext, device: torch.device) -> nn.Module:
    """FSDP2: each NNT block is its own unit, the rest (embeddings, heads, condition projection) the root."""
    if not context.enabled:
        return generator
    from torch.distributed.device_mesh import init_device_mesh
    from torch.distributed.fsdp import fully_shard

    mesh = init_device_mesh(device.type, (context.world_size,))
    for block in generator.nnt.blocks:
        fully_shard(block, mesh=mesh)
    fully_shard(generator, mesh=mesh)
    return generator


def set_gradient_sync(module: nn.Module, enabled: bool) -> None:
    """Skip FSDP2's reduce-scatter on all but the last micro-step of gradient accumulation."""
    if hasattr(module, "set_requires_gradient_sync"):
        module.set_requires_gradient_sync(enabled)


def full_model_state(module: nn.Module) -> dict[str, torch.Tensor]:
    """The unsharded state dict on the CPU (on rank 0; empty on the other ranks when sharded)."""
    from torch.distributed.checkpoint.state_dict import StateDictOptions, get_model_state_dict

    return get_model_state_dict(module, options=StateDictOptions(full_state_dict=True, cpu_offload=True))


def full_optimizer_state(module: nn.Module, optimizer: torch.optim.Optimizer) -> dict:
    """The unsharded optimizer state keyed by parameter name (on rank 0 when sharded)."""
    from torch.distributed.checkpoint.state_dict import StateDictOptions, get_optimizer_state_dict

    return get_optimizer_state_dict(module, optimizer, options=StateDictOptions(full_state_dict=True, cpu_offload=True))


def load_full_model_state(module: nn.Module, model_state: dict) -> None:
    """Load a full (unsharded) state dict that every rank passes; sharded modules keep their shard."""
    from torch.distributed.checkpoint.state_dict import StateDictOptions, set_model_state_dict

    set_model_state_dict(module, model_state, options=StateDictOptions(full_state_dict=True, strict=True))


def load_full_optimizer_state(module: nn.Module, optimizer: torch.optim.Optimizer, optimizer_state: dict) -> None:
    """Load a full optimizer state keyed by parameter names under `module` (as full_optimizer_state wrote it).

    Not strict: a trainable parameter that never got a gradient (a dual encoder's logit scale, which U
    does not use) has no AdamW state, in the saved run as in an uninterrupted one."""
    from torch.distributed.checkpoint.state_dict import StateDictOptions, set_optimizer_state_dict

    set_optimizer_state_dict(module, optimizer, optimizer_state,
                             options=StateDictOptions(full_state_dict=True, strict=False))
