"""Atomic, resumable checkpoints: `<run>/step_000100/`.

Each holds the trainable tensors (safetensors), a weights-only torch file with optimizer, scheduler,
RNG and loop state (data position, best metric), and `meta.json` (resolved config, metrics, versions).
A checkpoint is written to a temp dir beside its final name and renamed, so a kill never leaves a
half-written one; loading never unpickles code (`torch.load(weights_only=True)`).
"""

from __future__ import annotations

import json
import random
import shutil
from pathlib import Path

import torch
from safetensors.torch import load_file, save

from softprompt.errors import SoftPromptError, gist

PREFIX = "step_"


def trainable_state(model) -> dict[str, torch.Tensor]:
    """What training changes: the trainable parameters and the state learned without gradients (a key
    selector's centroids, `model.learned_buffers()`)."""
    learned = {n: p for n, p in model.named_parameters() if p.requires_grad} | learned_buffers(model)
    return {n: whole(t).detach().cpu().clone().contiguous() for n, t in learned.items()}


def zero3_released(t: torch.Tensor) -> bool:
    """A parameter DeepSpeed ZeRO-3 has split and not gathered on this process (its data is a placeholder)."""
    return getattr(t, "ds_status", None) is not None and t.ds_status.name == "NOT_AVAILABLE"


def whole(t: torch.Tensor) -> torch.Tensor:
    """A tensor split over processes gathered whole (a DTensor: FSDP with train.fsdp_prompt=shard; a parameter
    under DeepSpeed ZeRO-3): collective, every process calls it; any other tensor itself."""
    if zero3_released(t):
        import deepspeed

        with deepspeed.zero.GatheredParameters([t], modifier_rank=None):
            return t.detach().clone()
    return t.full_tensor() if hasattr(t, "full_tensor") else t


def learned_buffers(model) -> dict[str, torch.Tensor]:
    return model.learned_buffers() if hasattr(model, "learned_buffers") else {}


def load_trainable_state(model, tensors: dict[str, torch.Tensor]) -> None:
    params = dict(model.named_parameters()) | learned_buffers(model)
    with torch.no_grad():
        for name, value in tensors.items():
            param = params[name]
            if hasattr(param, "ds_id"):  # ZeRO-3: gathered, written by rank 0, split again (collective)
                import deepspeed

                with deepspeed.zero.GatheredParameters([param], modifier_rank=0):
                    param.copy_(value.to(param.device))
            elif hasattr(param, "to_local"):  # sharded: this process's part of the whole value every process holds
                from torch.distributed.tensor import distribute_tensor

                value = distribute_tensor(value.to(param.device), param.device_mesh, param.placements, src_data_rank=None)
                param.to_local().copy_(value.to_local())
            else:
                param.copy_(value.to(param.device))


def optimizer_state(model, optimizer) -> dict | None:
    """The optimizer state whole, where its parameters are sharded over processes (FSDP with
    train.fsdp_prompt=shard), keyed by parameter name; None otherwise (`optimizer.state_dict()` then holds it
    all). Collective: every process calls it."""
    if not sharded_optimizer(optimizer):
        return None
    inner = getattr(optimizer, "optimizer", optimizer)
    from torch.distributed.checkpoint.state_dict import StateDictOptions, get_optimizer_state_dict

    return {"by_name": get_optimizer_state_dict(model, inner, options=StateDictOptions(full_state_dict=True))}


NOT_SAVED = "written under DeepSpeed"  # trainer_state's optimizer entry of a run whose engine keeps that state


def check_optimizer_state(optimizer, saved: dict, file: Path) -> None:
    """Whether this run can take the optimizer state `saved` (a DeepSpeed run's is not there; a sharded one is
    keyed by name), before anything is loaded."""
    if NOT_SAVED in saved:
        raise SoftPromptError(f"{file.parent} was {NOT_SAVED}, whose optimizer state is split over the processes in its "
                              "own format and is not in the checkpoint, so it cannot resume exactly; start a new run from "
                              f"its prompt: `softprompt export {file.parent} --out DIR`, then prompt.init: file, "
                              "prompt.init_file: DIR")
    if sharded_optimizer(optimizer) != ("by_name" in saved):
        raise SoftPromptError(f"{file.parent} was written by a run whose trainable parameters were "
                              f"{'' if 'by_name' in saved else 'not '}sharded (FSDP with train.fsdp_prompt=shard); "
                              "resume it under the same launcher config and train.fsdp_prompt")


def sharded_optimizer(optimizer) -> bool:
    inner = getattr(optimizer, "optimizer", optimizer)  # accelerate's wrapper
    return any(hasattr(p, "to_local") for g in inner.param_groups for p in g["params"])


def load_optimizer_state(model, optimizer, saved: dict) -> None:
    inner = getattr(optimizer, "optimizer", optimizer)
    if "by_name" in saved:
        from torch.distributed.checkpoint.state_dict import StateDictOptions, set_optimizer_state_dict

        set_optimizer_state_dict(model, inner, saved["by_name"], options=StateDictOptions(full_state_dict=True))
    else:
        optimizer.load_state_dict(saved)


def versions() -> dict[str, str]:
    import accelerate
    import peft
    import transformers

    import softprompt

    return {"softprompt": softprompt.__version__, "torch": torch.__version__, "transformers": transformers.__version__,
            "peft": peft.__version__, "accelerate": accelerate.__version__}


def save_tensors(tensors: dict[str, torch.Tensor], file: Path, metadata: dict[str, str] | None = None) -> None:
    """`safetensors.torch.save_file` with the mode every other file gets (0666 less the umask: 0644 as a rule).
    safetensors' own save_file writes a `tempfile` (mode 0600) and renames it over `file`, which left adapters
    and checkpoints unreadable to a group or a serving user; our writes are already atomic (`atomic_dir`)."""
    with open(file, "wb") as f:
        f.write(save(tensors, metadata=metadata))


def atomic_dir(final: Path) -> Path:
    """A fresh temp dir next to `final` (mode 0777 less the umask, as `final` will have); hand it to `commit`
    once everything is written."""
    tmp = final.parent / f".{final.name}.tmp"
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    return tmp


def commit(tmp: Path, final: Path) -> Path:
    if final.exists():
        old = final.parent / f".{final.name}.old"
        shutil.rmtree(old, ignore_errors=True)
        final.rename(old)
        tmp.rename(final)
        shutil.rmtree(old, ignore_errors=True)
    else:
        tmp.rename(final)
    return final


def rng_state() -> dict:
    """This process's random streams: torch's CPU generator (dropout on CPU), the current CUDA device's (dropout
    on GPU), Python's. Each process of a run has its own: they draw differently once their batches differ."""
    state = {"torch": torch.get_rng_state(), "python": random.getstate()}
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        state["cuda"] = torch.cuda.get_rng_state()
    return state


def set_rng_state(state: dict) -> None:
    torch.set_rng_state(state["torch"])
    py = state["python"]
    random.setstate((py[0], tuple(py[1]), py[2]))
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state(state["cuda"])


def save_checkpoint(run_dir: Path, step: int, model, optimizer, scheduler, loop_state: dict, meta: dict,
                    keep: int, rank_rng: list[dict] | None = None, optimizer_whole: dict | None = None) -> Path:
    """Write step `step`'s checkpoint (on the main process). `rank_rng`: every process's `rng_state()`, in rank
    order, gathered by the caller; None: this process's alone (one process). `optimizer_whole`: a sharded
    optimizer's `optimizer_state`, gathered by the caller."""
    final = run_dir / f"{PREFIX}{step:06d}"
    rank_rng = rank_rng or [rng_state()]
    tmp = None
    try:
        tmp = atomic_dir(final)
        save_tensors(trainable_state(model), tmp / "trainable.safetensors")
        torch.save({
            "optimizer": optimizer_whole or optimizer.state_dict(),
            "scheduler": scheduler.state_dict(),
            "torch_rng": rank_rng[0]["torch"],  # rank 0's, as checkpoints before rank_rng held
            "python_rng": rank_rng[0]["python"],
            "rank_rng": rank_rng,
            "loop": loop_state,
        }, tmp / "trainer_state.pt")
        (tmp / "meta.json").write_text(json.dumps({"step": step, **meta, "versions": versions()}, indent=2, default=str))
        commit(tmp, final)
    except (OSError, RuntimeError) as e:  # a full disk, a file size limit, a quota; torch.save's writer says RuntimeError
        if tmp is not None:
            shutil.rmtree(tmp, ignore_errors=True)  # nothing half-written is left; the last complete one stays
        previous = latest_checkpoint(run_dir)
        kept = f"{previous} is the last complete checkpoint" if previous else "no earlier checkpoint exists"
        raise SoftPromptError(f"checkpoint: writing {final.name} failed ({first_line(e)}); {kept}; free disk space (or "
                              "raise the quota or file size limit), then continue with --resume") from None
    for old in list_checkpoints(run_dir)[:-keep]:
        shutil.rmtree(old, ignore_errors=True)
    return final


def list_checkpoints(run_dir: Path) -> list[Path]:
    if not run_dir.is_dir():
        return []
    return sorted(p for p in run_dir.iterdir() if p.is_dir() and p.name.startswith(PREFIX) and p.name[len(PREFIX):].isdigit())


def latest_checkpoint(run_dir: Path) -> Path | None:
    found = list_checkpoints(run_dir)
    return found[-1] if found else None


def damaged(file: Path, why: str) -> SoftPromptError:
    """One error for any unreadable checkpoint file (a disk filled up, a copy cut short), with the fix."""
    ckpt = file.parent
    return SoftPromptError(f"checkpoint file {file} is damaged ({why}); delete {ckpt} to resume from the "
                           "checkpoint before it (with none left, train with --overwrite to start over)")


def read_meta(path: Path) -> dict:
    """meta.json of a checkpoint (the resolved config it ran with), checked before anything is loaded."""
    file = path / "meta.json"
    try:
        meta = json.loads(file.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise damaged(file, first_line(e)) from None
    if not isinstance(meta, dict):
        raise damaged(file, "not a JSON object")
    return meta


def load_checkpoint(path: Path, model, optimizer, scheduler, rank: int = 0, world: int = 1) -> dict:
    """Restore everything `save_checkpoint` wrote; returns the loop state. Both files are read and
    checked before any state is touched, so a damaged checkpoint leaves the model as it was. Process `rank` of
    `world` takes its own random streams when the checkpoint was written by as many processes (the resume is
    then exact); on another process count every process takes rank 0's (the run goes on, not as an
    uninterrupted one would: README, Several GPUs)."""
    tensors_file, state_file = path / "trainable.safetensors", path / "trainer_state.pt"
    try:
        tensors = load_file(str(tensors_file))
    except Exception as e:  # safetensors raises its own error types for a cut or garbled file
        raise damaged(tensors_file, first_line(e)) from None
    params = dict(model.named_parameters()) | learned_buffers(model)
    wrong = [n for n, t in tensors.items() if n not in params or params[n].shape != t.shape]
    if wrong or set(tensors) != set(trainable_state(model)):
        raise damaged(tensors_file, f"its tensors do not match the model's trainable ones ({wrong or sorted(tensors)})")
    try:
        state = torch.load(state_file, map_location="cpu", weights_only=True)
        missing = {"optimizer", "scheduler", "torch_rng", "python_rng", "loop"} - set(state)
    except Exception as e:  # torch.load: RuntimeError, EOFError or UnpicklingError depending on the damage
        raise damaged(state_file, first_line(e)) from None
    if missing:
        raise damaged(state_file, f"missing {sorted(missing)}")
    check_optimizer_state(optimizer, state["optimizer"], state_file)
    load_trainable_state(model, tensors)
    load_optimizer_state(model, optimizer, state["optimizer"])
    scheduler.load_state_dict(state["scheduler"])
    streams = state.get("rank_rng") or [{"torch": state["torch_rng"], "python": state["python_rng"]}]
    set_rng_state(streams[rank] if len(streams) == world else streams[0])
    return state["loop"]


def first_line(e: Exception) -> str:
    """The gist of a reader's error (torch's run to a paragraph on one line): its first sentence."""
    return gist(e, limit=1000).split(". ")[0]
