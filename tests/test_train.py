"""The training loop on a real tiny Llama: frozen base, accumulation, resume, best/early stop, outputs."""

import json

import pytest
import torch
from safetensors.torch import load_file

from helpers import overrides, write_task
from softprompt import load_config, train
from softprompt.checkpoint import list_checkpoints


@pytest.fixture()
def task(tmp_path):
    return write_task(tmp_path / "data")


def run(saved_model, task, out, **extra):
    return train(load_config(None, overrides(saved_model("llama"), task, out, **extra)))


def test_base_bitwise_unchanged_prompt_trained(saved_model, task, tmp_path):
    from transformers import AutoModelForCausalLM

    result = run(saved_model, task, tmp_path / "out")
    fresh = AutoModelForCausalLM.from_pretrained(saved_model("llama")).state_dict()
    trained = result.model.base.state_dict()
    assert fresh.keys() == trained.keys()
    assert all(torch.equal(fresh[k], trained[k]) for k in fresh)
    assert [n for n, p in result.model.named_parameters() if p.requires_grad] == ["prompt.prompt"]
    init = train(load_config(None, overrides(saved_model("llama"), task, tmp_path / "o2", **{"optim.lr": 0.0})))
    assert not torch.equal(result.model.prompt.prompt, init.model.prompt.prompt)
    assert result.trainable_parameters == 4 * 32


def test_run_dir_outputs(saved_model, task, tmp_path):
    result = run(saved_model, task, tmp_path / "out")
    run_dir = tmp_path / "out" / "t"
    assert {"metrics.jsonl", "curves.png", "config.yaml", "final"} <= {p.name for p in run_dir.iterdir()}
    assert [p.name for p in list_checkpoints(run_dir)] == ["step_000003", "step_000006"]
    meta = json.loads((run_dir / "step_000006" / "meta.json").read_text())
    assert meta["config"]["train"]["max_steps"] == 6 and "torch" in meta["versions"]
    lines = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    assert [line["step"] for line in lines if "train_loss" in line] == [1, 2, 3, 4, 5, 6]
    assert {"eval_loss", "eval_accuracy"} <= {k for line in lines for k in line}
    assert result.before and result.test and "test_accuracy" in result.test
    final = load_file(str(run_dir / "final" / "adapter_model.safetensors"))["prompt_embeddings"]
    assert torch.equal(final, result.model.prompt.prompt.detach())


def test_keep_best_and_early_stopping(saved_model, task, tmp_path):
    # lr 0: the metric never improves after the first eval, so patience 1 stops at the second
    result = run(saved_model, task, tmp_path / "out", **{"optim.lr": 0.0, "train.max_steps": 30,
                                                         "train.early_stopping_patience": 1})
    assert result.steps == 6
    assert result.best["eval_loss"] == pytest.approx(result.before["eval_loss"], abs=1e-6)


def grad_norm_at_step_one(saved_model, task, out, **extra):
    result = run(saved_model, task, out, **{"train.max_steps": 1, "optim.max_grad_norm": 1e9, **extra})
    return [h["grad_norm"] for h in result.history if "grad_norm" in h][0]


def test_accumulation_is_normalised_by_label_tokens(saved_model, task, tmp_path):
    # the same 8 rows (different lengths) as one batch or as 2 micro-batches of 4: the same gradient
    full = grad_norm_at_step_one(saved_model, task, tmp_path / "a", **{"train.batch_size": 8})
    accum = grad_norm_at_step_one(saved_model, task, tmp_path / "b", **{"train.batch_size": 4,
                                                                        "train.gradient_accumulation_steps": 2})
    assert accum == pytest.approx(full, rel=1e-5)
    single = grad_norm_at_step_one(saved_model, task, tmp_path / "c", **{"train.batch_size": 4})
    assert single != pytest.approx(full, rel=1e-3)  # the check can tell batches apart


def test_resume_equals_uninterrupted(saved_model, task, tmp_path):
    extra = {"train.max_steps": 8, "train.save_every": 4, "train.keep_checkpoints": 5, "optim.scheduler": "linear",
             "optim.warmup_steps": 2, "data.group_by_length": "true", "train.gradient_accumulation_steps": 2,
             "train.keep_best": "false", "train.batch_size": 5}
    whole = run(saved_model, task, tmp_path / "whole", **extra)
    # the same run, stopped after its step-4 checkpoint: remove everything it wrote later
    cut = run(saved_model, task, tmp_path / "cut", **extra)
    run_dir = tmp_path / "cut" / "t"
    import shutil

    shutil.rmtree(run_dir / "step_000008"), shutil.rmtree(run_dir / "final")
    resumed = train(load_config(None, overrides(saved_model("llama"), task, tmp_path / "cut", **extra)), resume=True)
    assert resumed.steps == 8
    a = load_file(str(tmp_path / "whole" / "t" / "final" / "adapter_model.safetensors"))["prompt_embeddings"]
    b = load_file(str(run_dir / "final" / "adapter_model.safetensors"))["prompt_embeddings"]
    assert torch.equal(a, b)  # bitwise on CPU
    assert not torch.equal(a, load_file(str(tmp_path / "whole" / "t" / "step_000004" / "trainable.safetensors"))["prompt.prompt"])
    steps = [json.loads(x)["step"] for x in (run_dir / "metrics.jsonl").read_text().splitlines()]
    assert steps == sorted(steps)  # nothing logged twice after resuming
    assert cut.steps == whole.steps


def test_adafactor_cosine_warmup(saved_model, task, tmp_path):
    result = run(saved_model, task, tmp_path / "out", **{"optim.name": "adafactor", "optim.lr": 0.3,
                                                         "optim.scheduler": "cosine", "optim.warmup_steps": 3})
    lrs = [h["lr"] for h in result.history if "lr" in h]
    assert lrs[0] < lrs[2] == pytest.approx(0.3) and lrs[-1] < lrs[2]


def test_bf16_mixed_precision_runs(saved_model, task, tmp_path):
    result = run(saved_model, task, tmp_path / "out", **{"train.mixed_precision": "bf16", "train.max_steps": 2})
    assert result.model.prompt.prompt.dtype == torch.float32  # fp32 master copy
    assert all(torch.isfinite(torch.tensor(h["train_loss"])) for h in result.history if "train_loss" in h)


def test_seq2seq_training(saved_model, task, tmp_path):
    result = train(load_config(None, overrides(saved_model("t5"), task, tmp_path / "out", **{"train.max_steps": 3})))
    assert result.model.kind == "seq2seq" and result.test["test_loss"] > 0


@pytest.mark.slow
def test_trackers_wandb_offline_and_tensorboard(saved_model, task, tmp_path, monkeypatch):
    monkeypatch.delenv("WANDB_API_KEY", raising=False)
    monkeypatch.delenv("WANDB_MODE", raising=False)
    monkeypatch.delenv("WANDB_DIR", raising=False)
    run(saved_model, task, tmp_path / "out", **{"train.trackers": "[wandb, tensorboard]", "train.max_steps": 3})
    run_dir = tmp_path / "out" / "t"
    assert list(run_dir.rglob("events.out.tfevents.*")), "no tensorboard event file"
    offline = list((run_dir / "wandb").glob("offline-run-*"))
    assert offline and list(offline[0].glob("*.wandb")), "no offline wandb run"


def test_gradient_checkpointing_gives_the_same_gradient(saved_model, task, tmp_path):
    plain = grad_norm_at_step_one(saved_model, task, tmp_path / "a")
    checkpointed = grad_norm_at_step_one(saved_model, task, tmp_path / "b", **{"train.gradient_checkpointing": "true"})
    assert checkpointed == pytest.approx(plain, rel=1e-5)
    result = run(saved_model, task, tmp_path / "c", **{"train.gradient_checkpointing": "true", "train.max_steps": 1})
    assert result.model.base.is_gradient_checkpointing
