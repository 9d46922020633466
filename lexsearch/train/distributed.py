"""Multi-process training through PyTorch's own stack: ``torchrun`` + DDP, negatives gathered across ranks.

Launch (one node, 8 GPUs; add ``--nnodes``/``--rdzv-endpoint`` for several nodes)::

    torchrun --nproc_per_node=8 $(which lexsearch) train --preset paper --data 'cc12m/{00000..01242}.tar' ...

torchrun sets RANK, WORLD_SIZE, LOCAL_RANK, MASTER_ADDR and MASTER_PORT; :func:`init_distributed` reads them
(``env://``) and picks NCCL on GPUs, gloo on CPU. Features are all-gathered *with* gradients
(``torch.distributed.nn.functional.all_gather``), so every rank computes the loss over the global batch;
the gather's backward sums each rank's gradient copies, and DDP's gradient average then gives exactly the
single-process gradient of that global batch. Only rank 0 writes logs and checkpoints.
"""

from __future__ import annotations

import contextlib
import logging
import os
from dataclasses import dataclass, field

import torch
import torch.distributed as dist
from torch import nn

from lexsearch.errors import UsageError

log = logging.getLogger(__name__)


@dataclass
class DistInfo:
    """Where this process stands: rank, world size, and the device it trains on."""

    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    device: torch.device = field(default_factory=lambda: torch.device("cpu"))
    owns_group: bool = False  # True when init_distributed created the process group (and must destroy it)

    @property
    def is_main(self) -> bool:
        """Rank 0: the one process that writes logs and checkpoints."""
        return self.rank == 0

    @property
    def distributed(self) -> bool:
        return self.world_size > 1


def _env_int(name: str, default: int) -> int:
    try:
        return int(os.environ.get(name, default))
    except ValueError:
        raise UsageError(f"environment variable {name} must be an integer") from None


def init_distributed(device: str = "auto") -> DistInfo:
    """Join the process group torchrun describes (a no-op for a single process) and choose the device.

    ``device``: auto | cpu | cuda | mps | cuda:N. Under torchrun with CUDA each rank uses cuda:LOCAL_RANK.
    """
    from lexsearch.model.encoder import pick_device

    world = _env_int("WORLD_SIZE", 1)
    if world <= 1:
        return DistInfo(device=pick_device(device))
    rank, local_rank = _env_int("RANK", 0), _env_int("LOCAL_RANK", 0)
    use_cuda = device.startswith("cuda") or (device == "auto" and torch.cuda.is_available())
    if use_cuda:
        if not torch.cuda.is_available():
            raise UsageError("--device cuda was asked for, but CUDA is not available on this machine")
        if local_rank >= torch.cuda.device_count():
            raise UsageError(
                f"LOCAL_RANK {local_rank} but only {torch.cuda.device_count()} GPU(s) are visible"
            )
        torch.cuda.set_device(local_rank)
        dev = torch.device("cuda", local_rank)
    elif device in ("auto", "cpu"):
        dev = torch.device("cpu")
    else:
        raise UsageError(f"--device {device} cannot be used with several processes (use cuda or cpu)")
    owns = False
    if not dist.is_initialized():
        # NCCL for GPUs; gloo is the CPU backend (tests, debugging).
        dist.init_process_group(backend="nccl" if dev.type == "cuda" else "gloo", init_method="env://")
        owns = True
    if dist.get_world_size() != world:
        raise UsageError(f"process group has {dist.get_world_size()} ranks but WORLD_SIZE is {world}")
    log.info("rank %d/%d on %s (%s)", rank, world, dev, dist.get_backend())
    return DistInfo(
        rank=dist.get_rank(), world_size=world, local_rank=local_rank, device=dev, owns_group=owns
    )


def cleanup(info: DistInfo) -> None:
    """Leave the process group if :func:`init_distributed` created it."""
    if info.owns_group and dist.is_initialized():
        dist.destroy_process_group()


def gather_features(tensor: torch.Tensor, info: DistInfo) -> torch.Tensor:
    """(n, D) per rank -> (world * n, D), rank order, *with* gradients flowing back to each rank's rows."""
    if not info.distributed:
        return tensor
    import warnings

    from torch.distributed.nn.functional import all_gather

    # The differentiable all_gather is deprecated in favour of a private module; it is still the public,
    # autograd-aware one, so keep it and keep the log clean.
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)
        return torch.cat(all_gather(tensor.contiguous()), dim=0)


def wrap_ddp(module: nn.Module, info: DistInfo) -> nn.Module:
    """DDP around ``module`` when distributed; the module itself otherwise.

    Buffers are not broadcast each step: LexVLA's buffers (Z_txt, the prompt ids) are frozen and identical
    on every rank, and Z_txt of a 7B LM is hundreds of MB.
    """
    if not info.distributed:
        return module
    from torch.nn.parallel import DistributedDataParallel

    device_ids = [info.device.index] if info.device.type == "cuda" else None
    return DistributedDataParallel(module, device_ids=device_ids, broadcast_buffers=False)


def unwrap(module: nn.Module) -> nn.Module:
    """The module inside a DDP wrapper (or the module itself)."""
    return getattr(module, "module", module)


def no_sync(module: nn.Module, skip: bool):
    """DDP's ``no_sync`` (accumulate gradients locally) when ``skip`` and wrapped; a no-op otherwise."""
    if skip and hasattr(module, "no_sync"):
        return module.no_sync()
    return contextlib.nullcontext()


def any_rank(flag: bool, info: DistInfo) -> bool:
    """True on every rank if ``flag`` is true on any rank (e.g. "time is up"), so all stop at one step."""
    if not info.distributed:
        return flag
    t = torch.tensor([1.0 if flag else 0.0], device=info.device)
    dist.all_reduce(t, op=dist.ReduceOp.MAX)
    return bool(t.item() > 0)


def gather_bytes(tensor: torch.Tensor, info: DistInfo) -> list[torch.Tensor]:
    """Every rank's copy of an equally sized uint8 tensor (RNG states, for the resume state)."""
    if not info.distributed:
        return [tensor]
    t = tensor.to(info.device)
    out = [torch.empty_like(t) for _ in range(info.world_size)]
    dist.all_gather(out, t)
    return [o.cpu() for o in out]


def barrier(info: DistInfo) -> None:
    if info.distributed:
        dist.barrier()


def rank_batches(n_samples: int, batch_size: int, info: DistInfo, seed: int, epoch: int) -> list[list[int]]:
    """This rank's batches of one epoch: ``batch_size`` is the *global* batch, dropped if incomplete.

    A seeded DistributedSampler permutes the samples identically on every rank (by ``seed`` and ``epoch``)
    and deals them out, so an epoch's batches are a pure function of (seed, epoch, rank): resuming at a step
    needs no saved sampler state.
    """
    from torch.utils.data import DistributedSampler

    per_rank = batch_size // info.world_size
    sampler = DistributedSampler(
        range(n_samples),
        num_replicas=info.world_size,
        rank=info.rank,
        shuffle=True,
        seed=seed,
        drop_last=True,
    )
    sampler.set_epoch(epoch)
    indices = list(sampler)
    return [indices[i : i + per_rank] for i in range(0, len(indices) - per_rank + 1, per_rank)]
