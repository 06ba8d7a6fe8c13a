"""FSDP and DeepSpeed through accelerate, CPU processes included, and where the trainable components live.

accelerate is the engine (`accelerate launch --config_file recipes/accelerate/fsdp.yaml`): its FSDP2 preparation
shards the frozen base (each transformer layer, the embeddings and the LM head a unit of their own, the rest in
the root unit). What this module adds is what a soft prompt on a sharded base needs:

- `enable_engine`: accelerate maps CPU processes to MULTI_CPU and drops the FSDP or DeepSpeed plugin its launcher
  asked for, so a CPU run silently became DDP. torch's FSDP2 and DeepSpeed (its CPU accelerator) run on gloo;
  the launcher's plugin is put back.
- DeepSpeed (`deepspeed_settings`): the loop's batch size, clipping and accumulation go into its config; under
  ZeRO-3, where every parameter is split and gathered by module hooks, the prompt runs concatenated (the shared
  prefix reuses the layers' outputs after DeepSpeed has released their weights), and the trainable parameters
  stay whole (ZeRO-3's persistence threshold), since they are read outside their module's forward.
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

from softprompt.checkpoint import zero3_released
from softprompt.errors import SoftPromptError

def fsdp_requested() -> bool:
    """Whether the launcher asked for FSDP (`accelerate launch` with an FSDP config sets this)."""
    return os.environ.get("ACCELERATE_USE_FSDP", "false").lower() == "true"


def deepspeed_requested() -> bool:
    return os.environ.get("ACCELERATE_USE_DEEPSPEED", "false").lower() == "true"


def is_fsdp(accelerator) -> bool:
    from accelerate.utils import DistributedType

    return accelerator.distributed_type == DistributedType.FSDP


def zero_stage(accelerator) -> int | None:
    """The DeepSpeed ZeRO stage this run uses; None without DeepSpeed."""
    from accelerate.utils import DistributedType

    if accelerator.distributed_type != DistributedType.DEEPSPEED:
        return None
    return int(accelerator.state.deepspeed_plugin.zero_stage)


def enable_engine(accelerator) -> None:
    """Put back the FSDP or DeepSpeed the launcher asked for where accelerate dropped it (CPU processes: see the
    module docstring). Detected, not assumed: an accelerate that keeps them on CPU is left as it is."""
    from accelerate.state import PartialState
    from accelerate.utils import DeepSpeedPlugin, DistributedType, FullyShardedDataParallelPlugin

    if accelerator.distributed_type != DistributedType.MULTI_CPU:
        return
    state = accelerator.state
    if fsdp_requested():
        plugin = FullyShardedDataParallelPlugin()  # the launcher's FSDP_* settings
        version = getattr(plugin, "fsdp_version", 1)  # an accelerate before FSDP2 has FSDP1 alone
        if version != 2:
            raise SoftPromptError(f"FSDP version {version} on CPU processes: accelerate runs FSDP1 on GPUs only; set "
                                  "fsdp_version: 2 in the accelerate config (recipes/accelerate/fsdp.yaml; accelerate "
                                  ">= 1.6)")
        if accelerator.mixed_precision != "no":
            plugin.set_mixed_precision(accelerator.mixed_precision)
        state.fsdp_plugin, engine = plugin, DistributedType.FSDP
    elif deepspeed_requested():
        plugin = DeepSpeedPlugin()  # the launcher's ACCELERATE_DEEPSPEED_* settings
        plugin.set_mixed_precision(accelerator.mixed_precision)
        plugin.select(_from_accelerator_state=True)
        state.deepspeed_plugins, engine = {"default": plugin}, DistributedType.DEEPSPEED
    else:
        return
    # both: each AcceleratorState() built later (accelerate builds them inside) copies PartialState's type over
    PartialState().distributed_type = state.distributed_type = engine


def whole_base_loading(accelerator) -> None:
    """ZeRO-3: each process loads the base whole, and deepspeed.initialize splits it. accelerate's zero3_init would
    load it already split, with none of the embedding table on any process for the prompt's init to read. The
    cost: every process holds the whole base once, while loading."""
    if zero_stage(accelerator) != 3:
        return
    from transformers.integrations.deepspeed import unset_hf_deepspeed_config

    accelerator.state.deepspeed_plugin.zero3_init_flag = False
    unset_hf_deepspeed_config()  # what transformers' from_pretrained asks (is_deepspeed_zero3_enabled)


def deepspeed_settings(accelerator, model, cfg) -> None:
    """What DeepSpeed must be told that the loop knows (accelerate finds the batch size on a DataLoader, which this
    loop does not hand it): the micro-batch, the clipping (optim.max_grad_norm, over an accelerate config's own
    `gradient_clipping`), one micro-batch per step. Under ZeRO-3 the prompt runs concatenated."""
    if cfg.train.gradient_accumulation_steps != 1:
        raise SoftPromptError(f"train.gradient_accumulation_steps={cfg.train.gradient_accumulation_steps} under "
                              "DeepSpeed: not supported (DeepSpeed steps inside each backward); raise train.batch_size "
                              "instead, or launch with DDP or FSDP")
    conf = accelerator.state.deepspeed_plugin.deepspeed_config
    conf["train_micro_batch_size_per_gpu"] = cfg.train.batch_size
    conf["gradient_accumulation_steps"] = 1
    conf["gradient_clipping"] = float(cfg.optim.max_grad_norm or 0.0)
    if zero_stage(accelerator) == 3:
        if model.execution == "shared_prefix":
            raise SoftPromptError("prompt.execution=shared_prefix under DeepSpeed ZeRO-3: the shared prefix reuses "
                                  "the layers' outputs after ZeRO-3 has released their weights; use prompt.execution=auto "
                                  "(concatenated there, the same outputs)")
        model.execution = "concat"  # auto: see above
        # The trainable parameters stay whole on every process once first gathered: ZeRO-3 keeps a parameter whole
        # when it is no larger than this threshold. They are read outside their module's forward (a DePT offset in
        # the input table's forward hook, the adapter and checkpoint writes), where ZeRO-3 would have released them.
        # The cost: base parameters no larger than the prompt stay whole too (norms, biases; not the projections).
        largest = max(p.numel() for p in trainable_parameters(model))
        zero = conf.setdefault("zero_optimization", {})
        current = zero.get("stage3_param_persistence_threshold", "auto")
        zero["stage3_param_persistence_threshold"] = max(largest, 0 if current == "auto" else int(current))


def trainable_modules(model) -> list[torch.nn.Module]:
    """The model's own components beside the base that hold parameters (prompt source, head)."""
    return [m for name, m in model.named_children() if name != "base" and any(True for _ in m.parameters())]


def prepare(accelerator, model, optimizer, placement: str):
    """`accelerator.prepare(model, optimizer)`: under FSDP with the trainable components placed as `placement`
    (train.fsdp_prompt) says; under ZeRO-3 with them whole. Returns (wrapped model, optimizer). What reads the base's weights outside its forward must have read
    them before (the adapter's embedding probe: `model.base_probe`)."""
    if zero_stage(accelerator) is not None:
        wrapped, optimizer = accelerator.prepare(model, optimizer)
        model.lockstep = zero_stage(accelerator) == 3 and accelerator.num_processes > 1
        keep_whole(model)
        accelerator.print(f"DeepSpeed ZeRO-{zero_stage(accelerator)} over {accelerator.num_processes} processes")
        return wrapped, optimizer
    if not is_fsdp(accelerator):
        return accelerator.prepare(model, optimizer)
    if placement == "replicate":
        accelerator.state.fsdp_plugin.ignored_modules = trainable_modules(model)
    # FSDP2 warns that the root returns views (outputs aligned with the input are slices of the base's); the
    # warning is about in-place edits of them dropping its backward hook, and no objective edits them in place
    warnings.filterwarnings("ignore", message="FSDP2-wrapped module .* returned a view tensor")
    wrapped, optimizer = accelerator.prepare(model, optimizer)
    model.lockstep = accelerator.num_processes > 1
    where = "whole on every process" if placement == "replicate" else "sharded too"
    accelerator.print(f"FSDP: the frozen base sharded over {accelerator.num_processes} processes "
                      f"({local_share(model.base):,} of its parameters on this one); trainable components {where}")
    return wrapped, optimizer


def trainable_parameters(model) -> list[torch.nn.Parameter]:
    return [p for m in trainable_modules(model) for p in m.parameters() if p.requires_grad]


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
    present = torch.tensor([float(p.grad is not None) for p in plain], device=accelerator.device)  # NCCL: on the GPU
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
    enters together. Parameters of other units (layers, embeddings) stay sharded; their own forwards gather them.
    Under ZeRO-3 the trainable parameters are made whole (`keep_whole`)."""
    from torch.distributed.fsdp import FSDPModule

    keep_whole(model)
    if not isinstance(model, FSDPModule):
        yield
        return
    model.unshard()
    try:
        yield
    finally:
        model.reshard()


def keep_whole(model) -> None:
    """ZeRO-3: gather any trainable parameter not whole on this process (collective). They are persistent
    (`deepspeed_settings`), so they stay whole and ZeRO-3 gathers them again after each step itself; but a module
    that never runs a forward of its own (a DePT offset) is gathered by nothing else. No-op otherwise."""
    for p in trainable_parameters(model):
        if zero3_released(p):
            p.all_gather()


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
