"""One decision for every rank of a torch.distributed job (torch imported only when called).

A planned stop's save is collective under FSDP and DeepSpeed: ranks that disagreed on saving
at a step would wait on each other. Each rank looks at its own node's save request
(`ProgressWriter.save_requested()`); `any_rank` makes that one answer for all:

    if any_rank(writer.save_requested()):
        save_checkpoint(step)
        writer.saved()
"""

from __future__ import annotations


def any_rank(flag: bool) -> bool:
    """`flag` on any rank of the torch.distributed group (itself without one): every rank must
    take the same save decision. One 1-element all-reduce per step; the Trainer already syncs
    with the device each step (its NaN/inf loss filter)."""
    try:
        import torch
        import torch.distributed as dist
    except ImportError:
        return flag
    if not (dist.is_available() and dist.is_initialized()) or dist.get_world_size() < 2:
        return flag
    device = torch.device("cpu")
    if dist.get_backend() == "nccl":
        device = torch.device("cuda", torch.cuda.current_device())
    seen = torch.tensor([1 if flag else 0], dtype=torch.int32, device=device)
    dist.all_reduce(seen, op=dist.ReduceOp.MAX)
    return bool(seen.item())
