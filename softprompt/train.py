"""THE training loop. Every method trains here; nothing else builds an Accelerator.

Read top to bottom: accelerator -> data -> model -> optimizer/scheduler -> (resume) -> loop
(accumulate, clip, step, log, eval, keep best, early stop, checkpoint) -> final adapter -> test eval.

Loss normalisation: each optimizer step divides the summed token cross-entropy by the number of label
tokens in the whole accumulation window across all processes, so the gradient is the per-token mean
however the tokens fall into micro-batches and ranks (DDP averages over ranks, hence the `world`).
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import shutil
import time
from dataclasses import dataclass, field
from pathlib import Path

import torch
import yaml

from softprompt.checkpoint import (latest_checkpoint, list_checkpoints, load_checkpoint, load_trainable_state,
                                   save_checkpoint, trainable_state)
from softprompt.config import Config, to_dict
from softprompt.data import BatchStream, collate, encode_rows, load_split
from softprompt.errors import SoftPromptError
from softprompt.methods import build_method
from softprompt.model import load_base

log = logging.getLogger(__name__)


@dataclass
class RunResult:
    run_dir: Path
    adapter_dir: Path
    steps: int
    trainable_parameters: int
    before: dict = field(default_factory=dict)  # eval metrics of the initial prompt
    best: dict = field(default_factory=dict)  # eval metrics of the adapter in final/
    test: dict = field(default_factory=dict)  # test metrics of the adapter in final/
    history: list = field(default_factory=list)
    model: object = None  # the trained SoftPromptModel (final/'s adapter loaded)


def train(cfg: Config, resume: bool = False) -> RunResult:
    tc = cfg.train
    run_dir = Path(tc.output_dir) / tc.run_name
    accelerator = build_accelerator(cfg, run_dir)
    rank, world = accelerator.process_index, accelerator.num_processes
    main = accelerator.is_main_process

    # data and model
    method = build_method(cfg)
    base, tokenizer, kind = load_base(cfg.model.name_or_path, cfg.model.kind, cfg.model.dtype,
                                      cfg.model.revision, cfg.model.trust_remote_code)
    torch.manual_seed(tc.seed)
    model = method.build_model(base, tokenizer, kind)
    if tc.gradient_checkpointing:
        base.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
    splits = {"train": cfg.data.train_split, "eval": cfg.data.eval_split, "test": cfg.data.test_split}
    items = {k: encode_rows(load_split(cfg.data.path, s, cfg.data.name), tokenizer, cfg.data, kind, s)
             for k, s in splits.items() if s}
    eval_items = items.get("eval")
    model.to(accelerator.device)

    # optimizer and schedule
    groups = method.param_groups(model)
    optimizer = build_optimizer(cfg, groups)
    scheduler = build_scheduler(cfg, optimizer)
    wrapped, optimizer = accelerator.prepare(model, optimizer)
    trainable = [p for g in groups for p in g["params"]]

    loop = {"step": 0, "position": 0, "best_value": None, "best_metrics": {}, "best_state": None,
            "bad_evals": 0, "before": {}, "history": []}
    if resume and (ckpt := latest_checkpoint(run_dir)) is not None:
        loop = load_checkpoint(ckpt, model, optimizer, scheduler)
        accelerator.print(f"resumed from {ckpt} at step {loop['step']}")
        if main:  # drop what the interrupted run logged after its last checkpoint
            (run_dir / "metrics.jsonl").write_text("".join(json.dumps(h) + "\n" for h in loop["history"]))
    elif main:
        start_fresh(run_dir, cfg)
    accelerator.wait_for_everyone()
    if tc.trackers:  # only now: bad input must fail before anything is written
        accelerator.init_trackers(tc.run_name, config=flat(to_dict(cfg)), init_kwargs=tracker_kwargs(tc, run_dir))
    metrics_file = run_dir / "metrics.jsonl"
    n_params = model.trainable_parameters()
    accelerator.print(f"trainable parameters: {n_params:,} (base frozen: {sum(p.numel() for p in base.parameters()):,})")

    def record(values: dict, step: int) -> None:
        values = {k: float(v) for k, v in values.items()}
        loop["history"].append({"step": step, **values})
        if main:
            with metrics_file.open("a") as f:
                f.write(json.dumps({"step": step, **values}) + "\n")
        accelerator.log(values, step=step)

    if loop["step"] == 0 and eval_items:
        loop["before"] = method.evaluate(model, eval_items, tc.eval_batch_size)
        if "test" in items:  # the held-out numbers a user compares the final adapter against
            loop["before"].update({k.replace("eval_", "test_"): v
                                   for k, v in method.evaluate(model, items["test"], tc.eval_batch_size).items()})
        record(loop["before"], 0)
        accelerator.print("before training: " + fmt(loop["before"]))

    stream = BatchStream(items["train"], tc.batch_size, tc.seed, cfg.data.group_by_length, rank, world, loop["position"])
    progress = tqdm_bar(tc, main, loop["step"])
    wrapped.train()
    stop = False
    window_start = time.perf_counter()
    while loop["step"] < tc.max_steps and not stop:
        micro = [collate(stream.next(), tokenizer.pad_token_id, kind) for _ in range(tc.gradient_accumulation_steps)]
        micro = [{k: v.to(accelerator.device) for k, v in b.items()} for b in micro]
        local = torch.tensor(float(sum(label_tokens(b["labels"], kind) for b in micro)), device=accelerator.device)
        total = accelerator.reduce(local, reduction="sum").clamp(min=1)
        loss_total = torch.zeros((), device=accelerator.device)
        for i, batch in enumerate(micro):
            last = i == len(micro) - 1
            with contextlib.nullcontext() if last or world == 1 else accelerator.no_sync(wrapped):
                loss_sum, _ = method.loss(wrapped, batch)
                accelerator.backward(loss_sum * (world / total))
            loss_total += loss_sum.detach()
        grad_norm = accelerator.clip_grad_norm_(trainable, cfg.optim.max_grad_norm) if cfg.optim.max_grad_norm else None
        optimizer.step()
        scheduler.step()
        optimizer.zero_grad(set_to_none=True)
        loop["step"] += 1
        loop["position"] = stream.position
        step = loop["step"]
        progress.update(1)

        if step % tc.log_every == 0 or step == tc.max_steps:
            train_loss = (accelerator.reduce(loss_total, reduction="sum") / total).item()
            elapsed = time.perf_counter() - window_start
            values = {"train_loss": train_loss, "lr": scheduler.get_last_lr()[0],
                      "tokens_per_s": total.item() / max(elapsed, 1e-9)}
            if grad_norm is not None:
                values["grad_norm"] = float(grad_norm)
            record(values, step)
            progress.set_postfix(loss=f"{train_loss:.4f}")
        window_start = time.perf_counter()

        if eval_items and (step % tc.eval_every == 0 or step == tc.max_steps):
            metrics = method.evaluate(model, eval_items, tc.eval_batch_size)
            record(metrics, step)
            stop = update_best(loop, metrics, model, tc)
            if stop:
                accelerator.print(f"early stopping at step {step}: no {tc.metric} improvement in "
                                  f"{tc.early_stopping_patience} evaluations")
        if step % tc.save_every == 0 or step == tc.max_steps or stop:
            if main:
                save_checkpoint(run_dir, step, model, optimizer, scheduler, loop,
                                {"config": to_dict(cfg), "metrics": loop["history"][-3:]}, tc.keep_checkpoints)
            accelerator.wait_for_everyone()
    progress.close()

    # the adapter users get: best by the chosen metric, or the last
    if tc.keep_best and loop["best_state"] is not None:
        load_trainable_state(model, loop["best_state"])
    result = RunResult(run_dir, run_dir / "final", loop["step"], n_params, loop["before"], loop["best_metrics"])
    if "test" in items:
        result.test = {k.replace("eval_", "test_"): v for k, v in method.evaluate(model, items["test"], tc.eval_batch_size).items()}
        record(result.test, loop["step"])
    if main:
        model.save_adapter(result.adapter_dir, method=cfg.method.name, steps=loop["step"], metrics=result.test or loop["best_metrics"])
        plot_curves(loop["history"], run_dir / "curves.png")
    accelerator.wait_for_everyone()
    accelerator.end_training()
    result.history, result.model = loop["history"], model
    return result


# ---------------------------------------------------------------------------------------------------


def build_accelerator(cfg: Config, run_dir: Path):
    from accelerate import Accelerator

    trackers = list(cfg.train.trackers)
    if os.environ.get("WORLD_SIZE", "1") == "1":
        from accelerate.state import AcceleratorState

        AcceleratorState._reset_state()  # a library user may call train() again with other precision
    # Without cpu=True, CPU processes started by torchrun/accelerate silently run unsynchronised
    # (research/env_probe.md §4).
    accelerator = Accelerator(
        cpu=not torch.cuda.is_available(),
        mixed_precision=cfg.train.mixed_precision,
        log_with=trackers or None,
        project_dir=str(run_dir),
    )
    expected = int(os.environ.get("WORLD_SIZE", "1"))
    if accelerator.num_processes != expected:
        raise SoftPromptError(f"launcher started {expected} processes but accelerate sees {accelerator.num_processes}; "
                              "launch with `accelerate launch --multi_gpu --num_processes N` or torchrun")
    return accelerator


def tracker_kwargs(tc, run_dir: Path) -> dict:
    """wandb logs into the run dir, offline when there is no API key (sync later with `wandb sync`)."""
    if "wandb" not in tc.trackers:
        return {}
    wandb = {"dir": str(run_dir), "settings": {"silent": True}}
    if not os.environ.get("WANDB_API_KEY") and not os.environ.get("WANDB_MODE"):
        wandb["mode"] = "offline"
    return {"wandb": wandb}


def flat(d: dict, prefix: str = "") -> dict:
    out = {}
    for k, v in d.items():
        if isinstance(v, dict):
            out.update(flat(v, f"{prefix}{k}."))
        else:
            out[f"{prefix}{k}"] = v if isinstance(v, (int, float, str, bool)) else str(v)
    return out


def start_fresh(run_dir: Path, cfg: Config) -> None:
    """A new run in an existing dir replaces that run's checkpoints and adapter (not other files)."""
    for stale in list_checkpoints(run_dir) + [run_dir / "final"]:
        shutil.rmtree(stale, ignore_errors=True)
    run_dir.mkdir(parents=True, exist_ok=True)
    (run_dir / "metrics.jsonl").unlink(missing_ok=True)
    (run_dir / "config.yaml").write_text(yaml.safe_dump(to_dict(cfg), sort_keys=False))


def label_tokens(labels: torch.Tensor, kind: str) -> int:
    """Tokens the loss scores: causal models predict labels[:, 1:] (see SoftPromptModel._causal)."""
    return int((labels[:, 1:] if kind == "causal" else labels).ne(-100).sum())


def build_optimizer(cfg: Config, groups: list[dict]):
    o = cfg.optim
    groups = [{k: v for k, v in g.items() if k != "name"} for g in groups]
    if o.name == "adamw":
        return torch.optim.AdamW(groups, lr=o.lr, betas=o.betas, eps=o.eps, weight_decay=o.weight_decay)
    from transformers.optimization import Adafactor

    # Lester et al.'s setting: fixed lr (no relative step), no parameter scaling; HF's default
    # decay_rate -0.8 is T5X's beta2 exponent (research/methods.md §1.7).
    return Adafactor(groups, lr=o.lr, scale_parameter=False, relative_step=False, warmup_init=False,
                     weight_decay=o.weight_decay)


def build_scheduler(cfg: Config, optimizer):
    from transformers import get_scheduler

    name = {"constant": "constant_with_warmup", "linear": "linear", "cosine": "cosine"}[cfg.optim.scheduler]
    return get_scheduler(name, optimizer, num_warmup_steps=cfg.optim.warmup_steps, num_training_steps=cfg.train.max_steps)


def update_best(loop: dict, metrics: dict, model, tc) -> bool:
    """Track the best eval by `tc.metric`; returns True when early stopping should stop the run."""
    if tc.metric not in metrics:
        raise SoftPromptError(f"train.metric: {tc.metric!r} is not an eval metric; available: {sorted(metrics)}")
    value = metrics[tc.metric]
    best = loop["best_value"]
    if best is None or (value > best if tc.greater_is_better else value < best):
        loop.update(best_value=value, best_metrics=dict(metrics), best_state=trainable_state(model), bad_evals=0)
        return False
    loop["bad_evals"] += 1
    return tc.early_stopping_patience is not None and loop["bad_evals"] >= tc.early_stopping_patience


def tqdm_bar(tc, main: bool, start: int):
    from tqdm.auto import tqdm

    return tqdm(total=tc.max_steps, initial=start, disable=not (main and tc.progress_bar), desc="train", dynamic_ncols=True)


def fmt(metrics: dict) -> str:
    return ", ".join(f"{k}={v:.4f}" for k, v in metrics.items())


def plot_curves(history: list[dict], out: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    keys = sorted({k for h in history for k in h if k != "step" and k != "lr"})
    if not keys:
        return
    fig, axes = plt.subplots(len(keys), 1, figsize=(6, 2.2 * len(keys)), squeeze=False)
    for ax, key in zip(axes[:, 0], keys):
        points = [(h["step"], h[key]) for h in history if key in h]
        ax.plot([p[0] for p in points], [p[1] for p in points], marker="." if len(points) < 30 else None)
        ax.set_ylabel(key)
    axes[-1, 0].set_xlabel("step")
    fig.tight_layout()
    fig.savefig(out, dpi=80)
    plt.close(fig)
