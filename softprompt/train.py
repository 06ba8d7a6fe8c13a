"""THE training loop. Every method trains here; nothing else builds an Accelerator.

Read top to bottom: accelerator -> data -> model -> optimizer/scheduler -> (resume) -> loop
(accumulate, clip, step, log, eval, keep best, early stop, checkpoint) -> final adapter -> test eval.

The loop knows no task: the objective (objectives/) encodes rows, collates batches, gives each batch's
loss and its weight, and evaluates; the components (build.py) give the model and the optimizer groups.

Loss normalisation: each optimizer step divides the summed loss by the objective's weight of the whole
accumulation window across all processes (for the LM objective: the scored target tokens), so the
gradient is the per-unit mean however units fall into micro-batches and ranks (DDP averages over
ranks, hence the `world`).
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import logging
import os
import signal
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import torch
from accelerate.utils import gather_object

from softprompt.checkpoint import (NOT_SAVED, latest_checkpoint, load_checkpoint, load_trainable_state, optimizer_state,
                                   read_meta, rng_state,
                                   save_checkpoint, trainable_state)
from softprompt import distributed, sharded_eval
from softprompt.build import build_model, build_objective, complete_config, param_groups
from softprompt.config import Config, flat, from_dict, to_dict
from softprompt.data import BatchStream, load_splits
from softprompt.errors import ConfigError, SoftPromptError
from softprompt.layers import fused
from softprompt.loading import load_base
from softprompt.plots import plot_curves
from softprompt.run_dir import check_new_run, checkpoint_to_resume, drop_later, start_fresh, write_config

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
    source_step: int | None = None  # the step final/'s adapter comes from (the best eval's, or the last)
    chosen_by: str = ""  # why final/ holds that step's adapter: "best eval_loss", "last step"


def train(cfg: Config, resume: bool | str | Path = False, overwrite: bool = False,
          on_accepted: Callable[[], None] | None = None) -> RunResult:
    """Train per `cfg`. `resume=True` continues the run dir's latest checkpoint; a path continues that
    checkpoint (step_NNNNNN/) or the latest one of that run dir. Either way a checkpoint must exist: a
    resume that finds none is an error, not a silent fresh start.

    A new run into a run dir that already holds one (checkpoints, final/, metrics.jsonl) is refused unless
    `overwrite`, which replaces it; with `resume`, `overwrite` lets a resume from an earlier checkpoint
    drop the later ones. While it runs, SIGTERM checkpoints after the current optimizer step and exits
    with 0 and one line (see `sigterm_flag`). `on_accepted` is called once every input check has passed, just before
    the run dir is written (the CLI prints the warnings it held back until then)."""
    with sigterm_flag() as term:
        return _train(cfg, resume, overwrite, term, on_accepted or (lambda: None))


def _train(cfg: Config, resume: bool | str | Path, overwrite: bool, term: threading.Event,
           on_accepted: Callable[[], None]) -> RunResult:
    # input checks that need no model: they fail before anything is written
    cfg = complete_config(cfg)  # settings the data gives (label names a recipe left out), recorded with the run
    objective = build_objective(cfg)
    if cfg.train.metric is None:  # the objective's selection metric; config.yaml and checkpoints record it
        cfg = dataclasses.replace(cfg, train=dataclasses.replace(cfg.train, metric=objective.default_metric))
    tc = cfg.train
    check_metric(objective, tc)
    run_dir = Path(tc.output_dir) / tc.run_name
    accelerator = build_accelerator(cfg, run_dir)
    rank, world = accelerator.process_index, accelerator.num_processes
    main = accelerator.is_main_process
    ckpt = checkpoint_to_resume(run_dir, resume, overwrite) if resume else None
    if ckpt is not None:
        check_resumable(read_meta(ckpt).get("config"), cfg, ckpt)
    else:
        check_new_run(run_dir, overwrite)

    # data and model
    base, tokenizer, kind = load_base(cfg.model)
    torch.manual_seed(tc.seed)
    model = build_model(cfg, base, tokenizer, kind)
    if tc.gradient_checkpointing:
        base.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
    # every split the config names is checked at once; data.validation_fraction carves eval rows from train
    items = {k: objective.encode(rows, tokenizer, cfg.data, kind, split)
             for k, (split, rows) in load_splits(cfg.data).items()}
    eval_items = items.get("eval")
    model.to(accelerator.device)
    fused.enabled(model.prompt.kernel, model.input_table, model.device)  # e.g. triton forced on CPU: fail now

    # optimizer and schedule
    groups = param_groups(cfg, model)
    optimizer = build_optimizer(cfg, groups)
    scheduler = build_scheduler(cfg, optimizer)
    # counted (and the embedding table read) while whole: FSDP and ZeRO-3 split them
    n_params, n_frozen = model.trainable_parameters(), sum(p.numel() for p in base.parameters())
    if distributed.is_fsdp(accelerator) or distributed.zero_stage(accelerator) == 3:
        from softprompt.adapter import embedding_probe  # what the adapter records of the embedding table

        model.base_probe, model.base_vocab_size = embedding_probe(base), base.get_input_embeddings().weight.shape[0]
    if distributed.zero_stage(accelerator) is not None:
        distributed.deepspeed_settings(accelerator, model, cfg)
    wrapped, optimizer = distributed.prepare(accelerator, model, optimizer, tc.fsdp_prompt)
    trainable = [p for g in optimizer.param_groups for p in g["params"]]  # FSDP's sharding replaces parameters

    # stopped: None while training, then "early_stopping" or "max_steps" (saved with the last checkpoint);
    # last_metrics: the latest eval, which describes the last step's adapter (an eval runs at the last step)
    loop = {"step": 0, "position": 0, "best_value": None, "best_metrics": {}, "best_state": None, "best_step": None,
            "bad_evals": 0, "before": {}, "history": [], "last_metrics": {}, "stopped": None, "nonfinite": 0}
    if ckpt is not None:
        loop.update(load_checkpoint(ckpt, model, optimizer, scheduler, rank, world))
        on_accepted()  # the last input check (a damaged checkpoint) has passed
        if main:  # a resume from an earlier checkpoint (allowed by overwrite) drops what the later run wrote
            drop_later(run_dir, ckpt)
        accelerator.wait_for_everyone()
        if finished(loop, tc) and (run_dir / "final").is_dir():
            how = ("early stopping; train with --overwrite instead of --resume to start over"
                   if loop["stopped"] == "early_stopping" else "max_steps reached; raise train.max_steps to train on")
            accelerator.print(f"{run_dir} already finished at step {loop['step']} ({how}); final/ is unchanged")
            return finished_result(run_dir, loop, model)
        accelerator.print(f"resumed from {ckpt} at step {loop['step']}")
        if main:  # drop what the interrupted run logged after its last checkpoint; record what runs now
            (run_dir / "metrics.jsonl").write_text("".join(json.dumps(h) + "\n" for h in loop["history"]))
            write_config(run_dir, cfg)
    else:
        on_accepted()
        if main:
            start_fresh(run_dir, cfg)
    accelerator.wait_for_everyone()
    if tc.trackers:  # only now: bad input must fail before anything is written
        accelerator.init_trackers(tc.run_name, config=flat(to_dict(cfg)), init_kwargs=tracker_kwargs(tc, run_dir))
    metrics_file = run_dir / "metrics.jsonl"
    accelerator.print(f"trainable parameters: {n_params:,} (base frozen: {n_frozen:,})")

    fault: list[SoftPromptError] = []  # a write the main process could not make; every process stops at the next step

    def record(values: dict, step: int) -> None:
        values = {k: float(v) for k, v in values.items()}
        loop["history"].append({"step": step, **values})
        if main and not fault:
            try:
                with metrics_file.open("a") as f:
                    f.write(json.dumps({"step": step, **values}) + "\n")
            except OSError as e:
                fault.append(write_failed(f"appending to {metrics_file}", e, run_dir))
        accelerator.log(values, step=step)

    # what an eval line prints (metrics.jsonl keeps everything): an objective may name a short list
    shown = [*(getattr(objective, "shown_metrics", None) or objective.metric_names()), tc.metric]

    def evaluate(rows: list[dict]) -> dict[str, float]:  # every process scores its shard of the rows
        return sharded_eval.evaluate(objective, model, rows, tc.eval_batch_size, accelerator)

    if loop["step"] == 0 and eval_items:
        loop["before"] = evaluate(eval_items)
        if "test" in items:  # the held-out numbers a user compares the final adapter against
            loop["before"].update({k.replace("eval_", "test_"): v for k, v in evaluate(items["test"]).items()})
        record(loop["before"], 0)
        accelerator.print("before training: " + metrics_text(loop["before"], shown))

    stream = BatchStream(items["train"], tc.batch_size, tc.seed, cfg.data.group_by_length, rank, world, loop["position"])
    progress = tqdm_bar(tc, main, loop["step"])
    say = progress_printer(accelerator, progress)
    wrapped.train()
    stop = loop["stopped"] == "early_stopping"  # resumed after its last checkpoint, before final/ was written
    window_start = time.perf_counter()
    while loop["step"] < tc.max_steps and not stop:
        micro = [objective.collate(stream.next(), tokenizer.pad_token_id, kind) for _ in range(tc.gradient_accumulation_steps)]
        micro = [{k: v.to(accelerator.device) for k, v in b.items()} for b in micro]
        local = torch.tensor(float(sum(float(objective.weight(b, kind)) for b in micro)), device=accelerator.device)
        total = accelerator.reduce(local, reduction="sum").clamp(min=1)
        loss_total = torch.zeros((), device=accelerator.device)
        for i, batch in enumerate(micro):
            last = i == len(micro) - 1
            with contextlib.nullcontext() if last or world == 1 else accelerator.no_sync(wrapped):
                loss_sum = objective.loss(wrapped, batch)
                accelerator.backward(loss_sum * (world / total))
            loss_total += loss_sum.detach()
        distributed.sync_replicated(accelerator, trainable)  # FSDP: the prompt it leaves whole (train.fsdp_prompt)
        grad_norm = accelerator.clip_grad_norm_(trainable, cfg.optim.max_grad_norm) if cfg.optim.max_grad_norm else None
        if not finite_step(accelerator, loss_total, trainable):
            if distributed.zero_stage(accelerator) is not None:
                raise SoftPromptError(
                    f"train: a non-finite loss after step {loop['step']} under DeepSpeed, whose engine took the step "
                    "inside its backward, so it cannot be skipped; lower optim.lr, keep optim.max_grad_norm set, or "
                    "check the data (DeepSpeed's fp16 loss scaler skips overflows itself)")
            optimizer.zero_grad(set_to_none=True)  # nothing of this step reaches the prompt, the moments or the schedule
            loop["nonfinite"] += 1
            record({"nonfinite_steps": loop["nonfinite"]}, loop["step"])
            say(f"after step {loop['step']}: a non-finite loss or gradient; step skipped "
                f"({loop['nonfinite']} of at most {tc.max_nonfinite_steps})")
            if loop["nonfinite"] > tc.max_nonfinite_steps:
                raise SoftPromptError(
                    f"train: {loop['nonfinite']} steps had a non-finite loss or gradient (train.max_nonfinite_steps is "
                    f"{tc.max_nonfinite_steps}), the last after step {loop['step']}; lower optim.lr, keep "
                    "optim.max_grad_norm set, prefer bf16 to fp16, or check the data; "
                    + (f"{latest.name} is the last checkpoint" if (latest := latest_checkpoint(run_dir)) else
                       "no checkpoint was written"))
            continue
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
            # input tokens (not the objective's normaliser: label tokens, rows x labels, row weights), all processes
            tokens = accelerator.reduce(sum(input_tokens(b) for b in micro).float(), reduction="sum").item()
            values = {"train_loss": train_loss, "lr": scheduler.get_last_lr()[0], "tokens_per_s": tokens / max(elapsed, 1e-9)}
            if grad_norm is not None:
                values["grad_norm"] = float(grad_norm)
            if accelerator.scaler is not None:  # fp16: the loss scale, which halves on every overflowing step
                values["loss_scale"] = float(accelerator.scaler.get_scale())
            record(values, step)
            progress.set_postfix(loss=f"{train_loss:.4f}")
        window_start = time.perf_counter()

        if eval_items and (step % tc.eval_every == 0 or step == tc.max_steps):
            metrics = evaluate(eval_items)
            record(metrics, step)
            loop["last_metrics"] = dict(metrics)
            stop = update_best(loop, metrics, model, tc, step, objective)
            say(f"step {step}/{tc.max_steps}  {metrics_text(metrics, shown)}" + ("  (best)" if loop["best_step"] == step else ""))
            if stop:
                loop["stopped"] = "early_stopping"
                say(f"early stopping at step {step}: no {tc.metric} improvement in {tc.early_stopping_patience} evaluations")
        if step == tc.max_steps and not stop:
            loop["stopped"] = "max_steps"
        # every rank must agree to stop on a signal (or a failed write), or the others would wait for it forever
        terminated, failing = distributed.agree(accelerator, term.is_set(), bool(fault))
        if failing:
            distributed.stop_together(accelerator, fault[0] if fault else None)
        if step % tc.save_every == 0 or step == tc.max_steps or stop or terminated:
            rank_rng = gather_object([rng_state()]) if world > 1 else None  # every process's streams, rank order
            # a sharded one, gathered; DeepSpeed's stays its own (split over the processes in its own format)
            optimizer_whole = {NOT_SAVED: True} if distributed.zero_stage(accelerator) is not None else \
                optimizer_state(model, optimizer)
            with distributed.gathered(model):
                failed = None
                if main:
                    try:
                        save_checkpoint(run_dir, step, model, optimizer, scheduler, loop,
                                        {"config": to_dict(cfg), "metrics": loop["history"][-3:]}, tc.keep_checkpoints,
                                        rank_rng, optimizer_whole)
                    except SoftPromptError as e:
                        failed = e
                distributed.stop_together(accelerator, failed)  # also the barrier: the checkpoint is complete
        if terminated:
            progress.close()
            saved = run_dir / f"step_{step:06d}"
            accelerator.print(f"SIGTERM: saved checkpoint {saved} after step {step}; continue with --resume")
            accelerator.end_training()
            # 0: the run stopped where it was asked to, with nothing lost (schedulers read a non-zero exit of a
            # preempted job as a failure); the one line above says where to resume
            raise SystemExit(0)
    progress.close()

    # the adapter users get (best by the chosen metric, or the last), described by its own metrics
    state, final_metrics, source_step = final_choice(loop, tc)
    if state is not None:
        load_trainable_state(model, state)
    model.run_config = to_dict(cfg)  # what classify_texts reads the labels and template from
    if eval_items and hasattr(objective, "fit_decision") and hasattr(objective, "eval_parts"):  # the decision rule for final/'s adapter, fitted on
        parts = sharded_eval.parts(objective, model, eval_items, tc.eval_batch_size, accelerator)  # the eval split
        model.decision = objective.fit_decision(parts, eval_items)
        objective.use_decision(model.decision)
        if model.decision is not None:  # what the fitted rule scores on the split it was fitted on (optimistic)
            tuned = objective.eval_metrics(parts, eval_items)
            final_metrics = {**final_metrics, **{k: v for k, v in tuned.items() if k not in final_metrics}}
    result = RunResult(run_dir, run_dir / "final", loop["step"], n_params, loop["before"], dict(final_metrics),
                       source_step=source_step, chosen_by=chosen_by(loop, tc))
    if "test" in items:
        result.test = {k.replace("eval_", "test_"): v for k, v in evaluate(items["test"]).items()}
        record(result.test, loop["step"])
    distributed.release(model)  # a sharded prompt, whole for writing (no forward runs after this)
    with distributed.gathered(model):
        if main and not fault:
            try:
                # steps: how far the run trained; source_step: the step whose adapter final/ holds (the best eval's
                # with keep_best, so it can be earlier); config: what ran, so `softprompt eval` needs no recipe
                model.save_adapter(result.adapter_dir, method=cfg.method.name, steps=loop["step"], source_step=source_step,
                                   chosen_by=result.chosen_by, metrics={**final_metrics, **result.test}, config=to_dict(cfg))
                plot_curves(loop["history"], run_dir / "curves.png", title=curves_title(cfg, loop["step"]),
                            metric=tc.metric, best_step=source_step, greater_is_better=greater_is_better(tc, objective))
            except OSError as e:  # a full disk: adapter.save leaves no half-written final/
                fault.append(write_failed(f"writing {result.adapter_dir}", e, run_dir))
        distributed.stop_together(accelerator, fault[0] if fault else None)
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
    distributed.enable_engine(accelerator)  # CPU processes: accelerate would drop the launcher's FSDP or DeepSpeed
    distributed.whole_base_loading(accelerator)
    check_world(accelerator)
    return accelerator


def write_failed(what: str, error: OSError, run_dir: Path) -> SoftPromptError:
    """The one error for a run-dir write the disk refused (full, a quota, a file size limit), naming what to resume."""
    latest = latest_checkpoint(run_dir)
    kept = f"{latest} is the last complete checkpoint" if latest else "no checkpoint was written"
    return SoftPromptError(f"train: {what} failed ({error.strerror or error}); {kept}; free disk space (or raise the "
                           "quota or file size limit), then continue with --resume")


def check_world(accelerator) -> None:
    """Stop when the launcher started more processes than the Accelerator joined (CPU processes without
    cpu=True each train alone: N unsynchronised runs writing one run dir)."""
    expected = int(os.environ.get("WORLD_SIZE", "1"))
    if accelerator.num_processes != expected:
        raise SoftPromptError(f"launcher started {expected} processes but accelerate sees {accelerator.num_processes}; "
                              "launch with `accelerate launch --multi_gpu --num_processes N` (with --cpu, or "
                              "ACCELERATE_USE_CPU=true, on a machine without GPUs) or torchrun")


def tracker_kwargs(tc, run_dir: Path) -> dict:
    """wandb logs into the run dir, offline when there is no API key (sync later with `wandb sync`). A WANDB_MODE
    in the environment is passed on explicitly: wandb reads the environment once per process, so a second run
    in one process (a library user's loop) would otherwise keep the first one's mode."""
    if "wandb" not in tc.trackers:
        return {}
    wandb = {"dir": str(run_dir), "settings": {"silent": True}}
    mode = os.environ.get("WANDB_MODE") or (None if os.environ.get("WANDB_API_KEY") else "offline")
    if mode:
        wandb["mode"] = mode
    return {"wandb": wandb}




def finite_step(accelerator, loss: torch.Tensor, params: list) -> bool:
    """Whether this step's loss (every process's) and gradients are finite. Under fp16 the gradients are the
    loss scaler's to judge (it skips an overflowing step and lowers the scale), so only the loss is checked."""
    bad = ~torch.isfinite(loss)
    if accelerator.scaler is None:
        for p in params:
            if p.grad is not None:  # a sharded gradient: this process's part (the processes' verdicts are summed)
                bad = bad | ~torch.isfinite(distributed.local(p.grad)).all()
    bad = bad.float()
    if accelerator.num_processes > 1:  # every process must skip the same steps
        bad = accelerator.reduce(bad, reduction="sum")
    return not bool(bad.item())


@contextlib.contextmanager
def sigterm_flag():
    """SIGTERM (a scheduler's preemption, `kill`) sets a flag instead of ending the process, so the loop
    can finish its optimizer step and checkpoint first; the previous handler is restored afterwards.
    Signals reach only the main thread, so train() called from another thread keeps the default."""
    flag = threading.Event()
    if threading.current_thread() is not threading.main_thread():
        yield flag
        return
    previous = signal.signal(signal.SIGTERM, lambda signum, frame: flag.set())
    try:
        yield flag
    finally:
        signal.signal(signal.SIGTERM, previous if previous is not None else signal.SIG_DFL)


# Keys a resumed run may change. Each applies exactly from the step it resumes at, as none is part of the
# model, the optimizer state, the data stream or the eval that picks the best adapter (output_dir and
# run_name only locate the run: a checkpoint was found there).
RESUMABLE = frozenset({
    "train.output_dir", "train.run_name", "train.max_steps", "train.eval_every", "train.save_every",
    "train.log_every", "train.keep_checkpoints", "train.progress_bar", "train.trackers",
    "train.early_stopping_patience", "train.eval_batch_size", "train.keep_best", "train.max_nonfinite_steps",
    # the prompt's starting point: the checkpoint's prompt replaces it on resume
    "prompt.init", "prompt.init_labels", "prompt.init_text", "prompt.init_file", "prompt.init_range",
    "prompt.vocab_top_k", "prompt.seed",
    "objective.tune_thresholds",  # only read after the last step
})


def check_resumable(old: dict | None, cfg: Config, ckpt: Path) -> None:
    """Refuse to resume `ckpt` with a recipe that differs in anything but RESUMABLE keys: the checkpoint's
    state (prompt shape, optimizer moments, data position) belongs to the config it recorded."""
    if old is None:  # written before checkpoints recorded their config: nothing to compare
        return
    # read back as today's config: keys that moved since are where they are now, keys added since hold
    # their defaults (what that run had); a recorded config this version cannot read is compared as written
    try:
        before = flat(to_dict(from_dict(old, warn_moved=False)))
    except ConfigError:
        before = flat(old)
    now = flat(to_dict(cfg))
    changed = [k for k in sorted(before.keys() | now.keys())
               if k not in RESUMABLE and before.get(k, "<unset>") != now.get(k, "<unset>")]
    if changed:
        diff = ", ".join(f"{k} ({before.get(k, '<unset>')} -> {now.get(k, '<unset>')})" for k in changed)
        raise SoftPromptError(f"cannot resume {ckpt}: the recipe changed {diff}; restore those values, "
                              "or train with --overwrite instead of --resume to start over")


def input_tokens(batch: dict) -> torch.Tensor:
    """The batch's real input tokens (its attention mask's ones; every position without one)."""
    mask = batch.get("attention_mask")
    return mask.sum() if mask is not None else torch.tensor(batch["input_ids"].numel(), device=batch["input_ids"].device)


def finished(loop: dict, tc) -> bool:
    """The run this loop state belongs to has ended: early stopping fired, or max_steps is reached."""
    return loop["stopped"] == "early_stopping" or loop["step"] >= tc.max_steps


def final_choice(loop: dict, tc) -> tuple[dict | None, dict, int]:
    """The adapter for final/ (trainable tensors to load, or None: the model as it is), the eval metrics
    that describe it, and the step it comes from: the best by `tc.metric` with keep_best, else the last
    step's, which the last eval measured (an eval runs at max_steps and at an early stop)."""
    if tc.keep_best and loop["best_state"] is not None:
        return loop["best_state"], loop["best_metrics"], loop["best_step"]
    return None, loop["last_metrics"], loop["step"]


def chosen_by(loop: dict, tc) -> str:
    """Why final/ holds the adapter of its source_step, in the sidecar's words."""
    if tc.keep_best and loop["best_state"] is not None:
        return f"best {tc.metric}"
    return "last step"


def curves_title(cfg: Config, steps: int) -> str:
    """One line naming what the curves show: run, method, prompt length, learning rate, steps."""
    what = cfg.method.name or cfg.prompt.type
    return f"{cfg.train.run_name}: {what}, p={cfg.prompt.num_virtual_tokens}, lr={cfg.optim.lr:g}, {steps} steps"


def finished_result(run_dir: Path, loop: dict, model) -> RunResult:
    """The result of a run that had already ended, read back from final/ and metrics.jsonl (nothing is
    rewritten); `model` gets final/'s adapter, which is the last checkpoint's or the best one it kept."""
    from softprompt.adapter import SIDECAR

    meta = json.loads((run_dir / "final" / SIDECAR).read_text())
    if loop["best_state"] is not None and meta.get("source_step") == loop["best_step"] != loop["step"]:
        load_trainable_state(model, loop["best_state"])
    model.decision = meta.get("decision")
    model.run_config = meta.get("config") if isinstance(meta.get("config"), dict) else None
    metrics = meta.get("metrics") or {}
    lines = (run_dir / "metrics.jsonl").read_text().splitlines() if (run_dir / "metrics.jsonl").exists() else []
    return RunResult(run_dir, run_dir / "final", loop["step"], model.trainable_parameters(), loop["before"],
                     best={k: v for k, v in metrics.items() if not k.startswith("test_")},
                     test={k: v for k, v in metrics.items() if k.startswith("test_")},
                     history=[json.loads(line) for line in lines], model=model, source_step=meta.get("source_step"),
                     chosen_by=meta.get("chosen_by", ""))


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


def check_metric(objective, tc) -> None:
    """train.metric must be one the objective's evaluate() returns: a typo fails before anything is
    written, not at the first eval after checkpoints exist."""
    names = objective.metric_names()
    if tc.metric not in names:
        hint = " (eval_accuracy needs objective.generate_eval: true)" if tc.metric == "eval_accuracy" else ""
        raise SoftPromptError(f"train.metric: {tc.metric!r} is not an eval metric of this run; "
                              f"choose one of {sorted(names)}{hint}")


def greater_is_better(tc, objective) -> bool:
    """The direction of `tc.metric`: `tc.greater_is_better` when set, else the objective's."""
    if tc.greater_is_better is not None:
        return tc.greater_is_better
    return objective.greater_is_better(tc.metric)


def update_best(loop: dict, metrics: dict, model, tc, step: int, objective) -> bool:
    """Track the best eval by `tc.metric`; returns True when early stopping should stop the run."""
    if tc.metric not in metrics:
        raise SoftPromptError(f"train.metric: {tc.metric!r} is not an eval metric; available: {sorted(metrics)}")
    value = metrics[tc.metric]
    best = loop["best_value"]
    if best is None or (value > best if greater_is_better(tc, objective) else value < best):
        loop.update(best_value=value, best_metrics=dict(metrics), best_state=trainable_state(model), best_step=step,
                    bad_evals=0)
        return False
    loop["bad_evals"] += 1
    return tc.early_stopping_patience is not None and loop["bad_evals"] >= tc.early_stopping_patience


def tqdm_bar(tc, main: bool, start: int):
    from tqdm.auto import tqdm

    return tqdm(total=tc.max_steps, initial=start, disable=not (main and tc.progress_bar), desc="train", dynamic_ncols=True)


def progress_printer(accelerator, progress) -> Callable[[str], None]:
    """Print a line from the main process only; above the bar while it is drawn, as a plain print would
    cut through the bar's line."""
    def say(line: str) -> None:
        if progress.disable:
            accelerator.print(line)
        elif accelerator.is_main_process:
            progress.write(line)

    return say


def sig4(value: float) -> str:
    """4 significant digits, trailing zeros kept so a column of them lines up (0.9000, 2.253, 1235)."""
    text = f"{value:#.4g}"
    return text if "e" in text else text.rstrip(".")


def metrics_text(metrics: dict, names: list[str] | None = None) -> str:
    """One line of rounded metrics: the objective's `names` (eval_* and their test_* twins) where given, so a
    classifier's two dozen label metrics stay in metrics.jsonl and the line stays readable."""
    if names is not None:
        keys = {*names, *(n.replace("eval_", "test_", 1) for n in names)}
        metrics = {k: v for k, v in metrics.items() if k in keys}
    return "  ".join(f"{k} {sig4(v)}" for k, v in metrics.items())
