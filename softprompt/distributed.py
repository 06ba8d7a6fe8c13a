"""FSDP through accelerate, CPU processes included, and where the trainable components live under it.

accelerate is the engine (`accelerate launch --config_file recipes/accelerate/fsdp.yaml`): its FSDP2 preparation
shards the frozen base (each transformer layer, the embeddings and the LM head a unit of their own, the rest in
the root unit). What this module adds is what a soft prompt on a sharded base needs:

- `enable_fsdp`: accelerate maps CPU processes to MULTI_CPU and drops the FSDP plugin its launcher asked for, so
  a CPU run silently became DDP. torch's FSDP2 runs on gloo; the launcher's plugin is put back.
- `prepare`: `train.fsdp_prompt` says where the trainable components (prompt, DePT offset, head) live:
  `replicate` (default: a prompt is a few thousand numbers, sharding it saves nothing and costs an all-gather per
  forward) keeps them whole on every process, outside FSDP, their gradients averaged by `sync_replicated` as DDP
  would; `shard` leaves them in the root unit, split over the processes with the base.
- `gathered`: the root unit whole on every process (its params are plain tensors inside) for what runs outside
  the model's forward: generation, the adapter and checkpoint writes. Every process must enter it together.
- lockstep evaluation: every forward all-gathers each unit from every process, so the processes must run the
  same number of forwards in the same order (`lockstep_batches`), and generation goes on until every process is
  done (`synced_gpus`, which `SoftPromptModel.generate` passes when `model.lockstep` is set).
"""

from __future__ import annotations

import contextlib
import os
import warnings

import torch

from softprompt.errors import SoftPromptError

PLACEMENTS = ("replicate", "shard")


def fsdp_requested() -> bool:
    """Whether the launcher asked for FSDP (`accelerate launch` with an FSDP config sets this)."""
    return os.environ.get("ACCELERATE_USE_FSDP", "false").lower() == "true"


def is_fsdp(accelerator) -> bool:
    from accelerate.utils import DistributedType

    return accelerator.distributed_type == DistributedType.FSDP


def enable_fsdp(accelerator) -> None:
    """Put back the FSDP the launcher asked for where accelerate dropped it (CPU processes: see the module
    docstring). Detected, not assumed: an accelerate that keeps FSDP on CPU is left as it is."""
    from accelerate.utils import DistributedType, FullyShardedDataParallelPlugin

    if not fsdp_requested() or accelerator.distributed_type != DistributedType.MULTI_CPU:
        return
    plugin = FullyShardedDataParallelPlugin()  # the launcher's FSDP_* settings
    if plugin.fsdp_version != 2:
        raise SoftPromptError(f"FSDP version {plugin.fsdp_version} on CPU processes: accelerate runs FSDP1 on GPUs "
                              "only; set fsdp_version: 2 in the accelerate config (recipes/accelerate/fsdp.yaml)")
    if accelerator.mixed_precision != "no":
        plugin.set_mixed_precision(accelerator.mixed_precision)
    from accelerate.state import PartialState

    # both: each AcceleratorState() built later (accelerate builds them inside) copies PartialState's type over
    PartialState().distributed_type = accelerator.state.distributed_type = DistributedType.FSDP
    accelerator.state.fsdp_plugin = plugin


def trainable_modules(model) -> list[torch.nn.Module]:
    """The model's own components beside the base that hold parameters (prompt source, head)."""
    return [m for name, m in model.named_children() if name != "base" and any(True for _ in m.parameters())]


def prepare(accelerator, model, optimizer, placement: str):
    """`accelerator.prepare(model, optimizer)`; under FSDP with the trainable components placed as `placement`
    says. Returns (wrapped model, optimizer). What reads the base's weights outside its forward must have read
    them before (the adapter's embedding probe: `model.base_probe`)."""
    if not is_fsdp(accelerator):
        return accelerator.prepare(model, optimizer)
    if placement == "replicate":
        accelerator.state.fsdp_plugin.ignored_modules = trainable_modules(model)
    # FSDP2 warns that the root returns views (outputs aligned with the input are slices of the base's); the
    # warning is about in-place edits of them dropping its backward hook, and no objective edits them in place
    warnings.filterwarnings("ignore", message="FSDP2-wrapped module .* returned a view tensor")
    wrapped, optimizer = accelerator.prepare(model, optimizer)
    model.lockstep = accelerator.num_processes > 1
    accelerator.print(f"FSDP: the frozen base sharded over {accelerator.num_processes} processes "
                      f"({local_share(model.base):,} of its parameters on this one); trainable components " + ("whole on every process" if placement == "replicate" else "sharded too"))
    return wrapped, optimizer


def local_share(module: torch.nn.Module) -> int:
    """How many of `module`'s parameters this process holds (a sharded one counts its local shard)."""
    return sum(local(p).numel() for p in module.parameters())


def local(t: torch.Tensor) -> torch.Tensor:
    """A DTensor's shard on this process; any other tensor itself."""
    return t.to_local() if hasattr(t, "to_local") else t


def sync_replicated(accelerator, params: list[torch.nn.Parameter]) -> None:
    """Average the replicated parameters' gradients over the processes (FSDP leaves the parameters it ignores to
    us), as DDP and FSDP's own reduce-scatter do. A gradient no process has stays None; one some lack counts
    their zeros."""
    if not is_fsdp(accelerator) or accelerator.num_processes == 1:
        return
    import torch.distributed as dist

    plain = [p for p in params if not hasattr(p, "to_local")]
    present = torch.tensor([float(p.grad is not None) for p in plain])
    dist.all_reduce(present)
    synced = [p for p, n in zip(plain, present.tolist()) if n > 0]
    if not synced:
        return
    for p in synced:
        if p.grad is None:
            p.grad = torch.zeros_like(p)
    flat = torch.cat([p.grad.reshape(-1) for p in synced])  # (sum of numels,): one collective for all
    dist.all_reduce(flat)  # gloo has no AVG: the sum, then divided
    flat /= accelerator.num_processes
    for p, g in zip(synced, flat.split([p.numel() for p in synced])):
        p.grad.copy_(g.view_as(p.grad))


@contextlib.contextmanager
def gathered(model):
    """The root FSDP unit whole on every process while inside (no-op without FSDP). Collective: every process
    enters together. Parameters of other units (layers, embeddings) stay sharded; their own forwards gather them."""
    from torch.distributed.fsdp import FSDPModule

    if not isinstance(model, FSDPModule):
        yield
        return
    model.unshard()
    try:
        yield
    finally:
        model.reshard()


def release(model) -> None:
    """After the last forward of a run with train.fsdp_prompt=shard: every trainable component's parameters whole
    and plain on every process (collective), so the adapter is written from them and a library user reads them
    off `result.model`. FSDP's pre-save hook on those modules (it would swap the shards back in) goes too; the
    base stays sharded."""
    for module in trainable_modules(model):
        for owner in module.modules():
            sharded = {n: p for n, p in owner._parameters.items() if p is not None and hasattr(p, "full_tensor")}
            for name, p in sharded.items():
                owner._parameters[name] = torch.nn.Parameter(p.full_tensor(), requires_grad=p.requires_grad)
            if sharded:
                owner._state_dict_pre_hooks.clear()


def agree(accelerator, *flags: bool) -> list[bool]:
    """For each flag, whether any process raised it (collective, one reduce for all; one process: its own)."""
    if accelerator.num_processes == 1:
        return list(flags)
    summed = accelerator.reduce(torch.tensor([float(f) for f in flags], device=accelerator.device), reduction="sum")
    return [bool(v) for v in summed.tolist()]


def stop_together(accelerator, error: SoftPromptError | None) -> None:
    """Where any process holds an error (the main process could not write a checkpoint, the adapter, the logs):
    that process raises it, every other stops with exit code 2 and no message of its own (the one line is the
    failing process's). Otherwise the others would wait for it at their next collective, forever under NCCL, or
    die with a traceback under gloo. Collective, so also a barrier."""
    if agree(accelerator, error is not None)[0]:
        if error is not None:
            raise error
        raise SystemExit(2)


def lockstep_batches(n_rows: list[int], batch_size: int) -> int:
    """How many batches every process runs in lockstep: the most any process's shard needs."""
    return max((n + batch_size - 1) // batch_size for n in n_rows)
