"""Training-loop defects, one test each: best direction, final/'s metadata, resume of finished or changed
or damaged runs, full batches under group_by_length, early input checks, SIGTERM checkpoints."""

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from helpers import overrides, write_task
from softprompt import load_config, train
from softprompt.checkpoint import list_checkpoints
from softprompt.data.collate import BatchStream
from softprompt.errors import SoftPromptError


@pytest.fixture()
def task(tmp_path):
    return write_task(tmp_path / "data")


def cfg_for(saved_model, task, out, **extra):
    return load_config(None, overrides(saved_model("llama"), task, out, **extra))


def run(saved_model, task, out, resume=False, **extra):
    return train(cfg_for(saved_model, task, out, **extra), resume=resume)


def sidecar(run_dir: Path) -> dict:
    return json.loads((run_dir / "final" / "softprompt.json").read_text())


# 1. the best direction follows the metric


@pytest.mark.parametrize("metric, explicit, expected", [
    ("eval_loss", None, False), ("eval_ppl", None, False), ("test_perplexity", None, False),
    ("eval_accuracy", None, True), ("eval_accuracy", False, False), ("eval_loss", True, True),
])
def test_greater_is_better_inferred_from_the_metric(metric, explicit, expected):
    from softprompt.build import build_objective
    from softprompt.train import greater_is_better

    setting = "null" if explicit is None else explicit
    tc = load_config(None, [f"train.metric={metric}", f"train.greater_is_better={setting}"]).train
    assert tc.greater_is_better is explicit
    assert greater_is_better(tc, build_objective(load_config())) is expected


def test_update_best_keeps_the_highest_accuracy():
    from softprompt.build import build_objective
    from softprompt.train import update_best

    tc = load_config(None, ["train.metric=eval_accuracy"]).train
    model = torch.nn.Linear(2, 2)  # any module: update_best snapshots its trainable tensors
    loop = {"best_value": None, "best_metrics": {}, "best_state": None, "bad_evals": 0}
    objective = build_objective(load_config())
    update_best(loop, {"eval_loss": 2.0, "eval_accuracy": 0.2}, model, tc, 3, objective)
    update_best(loop, {"eval_loss": 2.5, "eval_accuracy": 0.8}, model, tc, 6, objective)
    assert loop["best_metrics"]["eval_accuracy"] == 0.8 and loop["best_step"] == 6


# 2. final/'s metadata describes the adapter in final/


def test_keep_best_false_reports_the_last_adapter(saved_model, task, tmp_path):
    # "best" by the highest eval_loss: the first eval, while final/ holds the last step's adapter
    result = run(saved_model, task, tmp_path / "out", **{"train.keep_best": "false", "train.greater_is_better": "true",
                                                         "data.test_split": "null"})
    evals = [h for h in result.history if "eval_loss" in h and h["step"] > 0]
    assert [h["step"] for h in evals] == [3, 6] and evals[0]["eval_loss"] != evals[1]["eval_loss"]
    last = {k: v for k, v in evals[-1].items() if k != "step"}
    meta = sidecar(tmp_path / "out" / "t")
    assert result.best == pytest.approx(last) and meta["metrics"] == pytest.approx(last)
    assert meta["steps"] == 6 and meta["source_step"] == 6 and meta["chosen_by"] == "last step"
    assert result.source_step == 6 and result.chosen_by == "last step"


def test_keep_best_records_the_source_step(saved_model, task, tmp_path):
    result = run(saved_model, task, tmp_path / "out", **{"optim.lr": 0.0, "train.max_steps": 30,
                                                         "train.early_stopping_patience": 1})
    meta = sidecar(tmp_path / "out" / "t")
    # steps: how far the run trained; source_step: the (earlier) step whose adapter final/ holds, and why
    assert result.steps == meta["steps"] == 6 and meta["source_step"] == result.source_step == 3
    assert meta["chosen_by"] == result.chosen_by == "best eval_loss"
    assert meta["metrics"]["eval_loss"] == pytest.approx(result.best["eval_loss"]) and "test_loss" in meta["metrics"]


# 3. a finished run is not trained again


def test_resume_after_early_stopping_does_not_train_again(saved_model, task, tmp_path, capsys):
    extra = {"optim.lr": 0.0, "train.max_steps": 30, "train.early_stopping_patience": 1}
    first = run(saved_model, task, tmp_path / "out", **extra)
    final = tmp_path / "out" / "t" / "final"
    before = {p.name: (p.stat().st_mtime_ns, p.read_bytes()) for p in final.rglob("*") if p.is_file()}
    capsys.readouterr()
    again = run(saved_model, task, tmp_path / "out", resume=True, **extra)
    out = capsys.readouterr().out
    assert "already finished" in out and "early stopping" in out
    assert {p.name: (p.stat().st_mtime_ns, p.read_bytes()) for p in final.rglob("*") if p.is_file()} == before
    assert again.steps == first.steps == 6 and [p.name for p in list_checkpoints(final.parent)][-1] == "step_000006"
    assert again.best == pytest.approx(first.best) and again.test == pytest.approx(first.test)
    assert (again.source_step, again.chosen_by) == (first.source_step, first.chosen_by) == (3, "best eval_loss")
    assert torch.equal(again.model.prompt.prompt, first.model.prompt.prompt)


def test_resume_of_a_finished_run_writes_a_missing_final(saved_model, task, tmp_path):
    first = run(saved_model, task, tmp_path / "out")
    shutil.rmtree(tmp_path / "out" / "t" / "final")  # killed between the last checkpoint and the export
    again = run(saved_model, task, tmp_path / "out", resume=True)
    assert again.steps == 6 and [h["step"] for h in again.history if "train_loss" in h] == [1, 2, 3, 4, 5, 6]
    a = load_file(str(tmp_path / "out" / "t" / "final" / "adapter_model.safetensors"))["prompt_embeddings"]
    assert torch.equal(a, first.model.prompt.prompt.detach())


# 4. group_by_length serves only full batches


@pytest.mark.parametrize("batch_size, world", [(1, 1), (2, 1), (3, 1), (4, 2), (5, 1), (8, 1), (3, 2)])
def test_grouped_batches_are_full_unique_and_aligned(batch_size, world):
    # Distinct lengths, so a length-grouped global batch is recognisable: within one 50-batch window the
    # global batches are consecutive runs of the window's length order, so their length ranges never
    # overlap. A ragged group shuffled into the middle shifts every later batch across two groups.
    g = torch.Generator().manual_seed(batch_size)
    global_batch = batch_size * world
    window = 50
    sizes = sorted({*range(global_batch, 4 * global_batch + 3),
                    *range(window * global_batch - 2, window * global_batch + 2 * global_batch + 3),
                    2 * window * global_batch + global_batch + 1})
    for n in sizes:
        items = [{"input_ids": [0] * int(k)} for k in torch.randperm(n, generator=g) + 1]
        streams = [BatchStream(items, batch_size, 1, True, rank=r, world=world) for r in range(world)]
        per_epoch = n // global_batch
        for epoch in range(2):
            seen, ranges = [], []
            for index in range(per_epoch):
                lengths = []
                for s in streams:
                    batch = s.next()
                    assert len(batch) == batch_size, (n, batch_size, world, epoch)
                    lengths += [len(it["input_ids"]) for it in batch]
                seen += lengths
                ranges.append((index // window, min(lengths), max(lengths)))
            assert len(seen) == len(set(seen)) == per_epoch * global_batch, (n, batch_size, world)
            for a in range(len(ranges)):
                for b in range(a + 1, len(ranges)):
                    (wa, lo_a, hi_a), (wb, lo_b, hi_b) = ranges[a], ranges[b]
                    assert wa != wb or hi_a < lo_b or hi_b < lo_a, (n, batch_size, world, epoch, a, b)


def test_grouped_stream_resumes_bit_exact():
    items = [{"input_ids": [0] * (1 + i % 17)} for i in range(263)]
    whole = BatchStream(items, 5, seed=3, group_by_length=True)
    served = [whole.next() for _ in range(120)]
    resumed = BatchStream(items, 5, seed=3, group_by_length=True, position=77)
    assert [resumed.next() for _ in range(43)] == served[77:]


# 5 and 6. bad input fails before the run dir is written


def test_misspelt_metric_fails_before_writing(saved_model, task, tmp_path):
    with pytest.raises(SoftPromptError, match=r"train.metric.*eval_acuracy.*eval_accuracy.*eval_loss.*eval_ppl"):
        run(saved_model, task, tmp_path / "out", **{"train.metric": "eval_acuracy"})
    assert not (tmp_path / "out").exists()
    with pytest.raises(SoftPromptError, match="eval_loss.*eval_ppl"):  # no generation: no accuracy to pick
        run(saved_model, task, tmp_path / "out", **{"train.metric": "eval_accuracy", "objective.generate_eval": "false"})
    assert not (tmp_path / "out").exists()


def test_dept_metric_names(saved_model, task, tmp_path):
    from softprompt.build import build_objective

    cfg = cfg_for(saved_model, task, tmp_path / "out", **{"method.name": "dept", "data.max_length": 64,
                                                          "prompt.max_length": 64})
    assert sorted(build_objective(cfg).metric_names()) == ["eval_accuracy", "eval_loss", "eval_ppl"]


def test_triton_on_cpu_fails_before_writing(saved_model, task, tmp_path, monkeypatch):
    if torch.cuda.is_available():
        pytest.skip("checks the CPU refusal")
    monkeypatch.delenv("TRITON_INTERPRET", raising=False)
    with pytest.raises(SoftPromptError, match="prompt.kernel"):
        run(saved_model, task, tmp_path / "out", **{"prompt.kernel": "triton"})
    assert not (tmp_path / "out").exists()


# 7. SIGTERM writes a checkpoint


@pytest.mark.slow
def test_sigterm_checkpoints_and_resumes(saved_model, task, tmp_path):
    out = tmp_path / "out"
    args = overrides(saved_model("llama"), task, out, **{"train.max_steps": 100000, "train.save_every": 100000,
                                                          "train.eval_every": 100000, "data.test_split": "null"})
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "WANDB_MODE": "offline",
           "PYTHONPATH": str(Path(__file__).resolve().parents[1])}
    proc = subprocess.Popen([sys.executable, "-m", "softprompt", "train", *args], env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    metrics = out / "t" / "metrics.jsonl"
    deadline = time.time() + 120
    while time.time() < deadline and proc.poll() is None:
        if metrics.exists() and any("train_loss" in line for line in metrics.read_text().splitlines()):
            break
        time.sleep(0.1)
    assert proc.poll() is None, proc.communicate()[0]
    proc.send_signal(signal.SIGTERM)
    output = proc.communicate(timeout=60)[0]
    assert proc.returncode == 0 and output.count("SIGTERM") == 1, output  # a clean stop, said once
    ckpts = list_checkpoints(out / "t")
    assert len(ckpts) == 1 and str(ckpts[0]) in output, output
    stopped_at = int(ckpts[0].name.split("_")[1])
    assert stopped_at >= 1 and not (out / "t" / "final").exists()
    # --resume continues from it (to a nearer end, which resume may change)
    extra = {"train.max_steps": stopped_at + 2, "train.save_every": 100000, "train.eval_every": 100000,
             "data.test_split": "null"}
    resumed = run(saved_model, task, out, resume=True, **extra)
    assert resumed.steps == stopped_at + 2
    assert [h["step"] for h in resumed.history if "train_loss" in h] == list(range(1, stopped_at + 3))


# 8. resume with a changed recipe


def test_resume_refuses_a_changed_recipe(saved_model, task, tmp_path):
    run(saved_model, task, tmp_path / "out", **{"train.max_steps": 3})
    run_dir = tmp_path / "out" / "t"
    snapshot = {p: p.stat().st_mtime_ns for p in run_dir.rglob("*")}
    changes = {"prompt.num_virtual_tokens": 5, "optim.betas": "[0.8,0.99]", "data.group_by_length": "true",
               "train.max_steps": 6}
    with pytest.raises(SoftPromptError) as err:
        run(saved_model, task, tmp_path / "out", resume=True, **changes)
    message = str(err.value)
    assert "prompt.num_virtual_tokens (4 -> 5)" in message and "optim.betas" in message
    assert "data.group_by_length (False -> True)" in message and "max_steps" not in message
    assert "\n" not in message
    assert {p: p.stat().st_mtime_ns for p in run_dir.rglob("*")} == snapshot  # refusal writes nothing
    with pytest.raises(SoftPromptError, match=r"method.name \(prompt_tuning -> dept\)"):
        run(saved_model, task, tmp_path / "out", resume=True, **{"method.name": "dept", "data.max_length": 64,
                                                                  "prompt.max_length": 64})


def test_resume_to_new_max_steps_rewrites_config(saved_model, task, tmp_path):
    run(saved_model, task, tmp_path / "out", **{"train.max_steps": 3})
    result = run(saved_model, task, tmp_path / "out", resume=True, **{"train.max_steps": 5, "train.eval_every": 5,
                                                                       "train.log_every": 2})
    assert result.steps == 5
    import yaml

    written = yaml.safe_load((tmp_path / "out" / "t" / "config.yaml").read_text())
    assert written["train"]["max_steps"] == 5 and written["train"]["log_every"] == 2
    recorded = sidecar(tmp_path / "out" / "t")["config"]  # what `softprompt eval` reads: the same config
    assert recorded["train"]["max_steps"] == 5 and recorded == written


# 9. damaged checkpoints


@pytest.fixture(scope="module")
def trained_once(saved_model, tmp_path_factory):
    root = tmp_path_factory.mktemp("damaged")
    task = write_task(root / "data")
    run(saved_model, task, root / "out", **{"train.max_steps": 2, "train.save_every": 2, "train.eval_every": 100})
    return root, task


@pytest.mark.parametrize("name, damage", [
    ("trainer_state.pt", lambda b: b[: len(b) // 2]),
    ("trainer_state.pt", lambda b: b"not a torch file at all"),
    ("trainable.safetensors", lambda b: b[: len(b) - 7]),
    ("meta.json", lambda b: b[:-3]),
])
def test_damaged_checkpoint_is_one_error(saved_model, trained_once, tmp_path, name, damage):
    root, task = trained_once
    shutil.copytree(root / "out", tmp_path / "out")
    path = tmp_path / "out" / "t" / "step_000002" / name
    path.write_bytes(damage(path.read_bytes()))
    with pytest.raises(SoftPromptError) as err:
        run(saved_model, task, tmp_path / "out", resume=True, **{"train.max_steps": 4, "train.save_every": 2,
                                                                  "train.eval_every": 100})
    message = str(err.value)
    assert name in message and "step_000002" in message and "delete" in message and "\n" not in message


def test_a_checkpoint_from_before_a_key_existed_still_resumes(saved_model, task, tmp_path):
    """A checkpoint written before a config key was added (its recorded config lacks it) resumes when the
    recipe leaves that key at its default, and is refused when the recipe sets it otherwise."""
    run(saved_model, task, tmp_path / "out", **{"train.max_steps": 3, "train.save_every": 3})
    meta_file = tmp_path / "out" / "t" / "step_000003" / "meta.json"
    meta = json.loads(meta_file.read_text())
    for key in ("validation_fraction", "split_seed"):  # keys newer than such a checkpoint
        del meta["config"]["data"][key]
    meta_file.write_text(json.dumps(meta))
    with pytest.raises(SoftPromptError, match=r"data.split_seed \(0 -> 7\)"):
        run(saved_model, task, tmp_path / "out", resume=True, **{"train.max_steps": 4, "data.split_seed": 7})
    assert run(saved_model, task, tmp_path / "out", resume=True, **{"train.max_steps": 4}).steps == 4


# 9. non-finite losses and gradients


def test_nonfinite_steps_are_skipped_counted_and_stop_the_run(saved_model, task, tmp_path):
    """A prompt of NaNs makes every loss NaN: each step is skipped (the prompt, the optimizer and the schedule
    untouched), counted in metrics.jsonl, and the third one past the limit of 2 stops the run with the fix."""
    from safetensors.torch import save_file

    save_file({"prompt": torch.full((4, 32), float("nan"))}, str(tmp_path / "nan.safetensors"))
    with pytest.raises(SoftPromptError, match=r"train: 3 steps had a non-finite loss or gradient .*lower optim.lr"):
        run(saved_model, task, tmp_path / "out", **{"prompt.init": "file", "prompt.init_file": tmp_path / "nan.safetensors",
                                                    "train.max_nonfinite_steps": 2, "train.save_every": 1})
    logged = [json.loads(line) for line in (tmp_path / "out" / "t" / "metrics.jsonl").read_text().splitlines()]
    assert [h["nonfinite_steps"] for h in logged if "nonfinite_steps" in h] == [1, 2, 3]
    assert not any("train_loss" in h for h in logged)  # no step was taken
    assert list_checkpoints(tmp_path / "out" / "t") == [] and not (tmp_path / "out" / "t" / "final").exists()


# 10. secrets stay out of everything a run writes


@pytest.mark.slow
def test_secrets_in_the_environment_are_written_nowhere(saved_model, task, tmp_path, monkeypatch):
    """A wandb key and a hub token in the environment (how users hold them) appear in no file the run writes:
    config, metrics, checkpoints, adapter, model card, the trackers' own files."""
    secrets = {"WANDB_API_KEY": "0f3a9c" * 8, "HF_TOKEN": "hf_" + "Q9zKx7" * 6}  # the shapes wandb and the hub check
    for name, value in secrets.items():
        monkeypatch.setenv(name, value)
    monkeypatch.setenv("WANDB_MODE", "offline")
    run(saved_model, task, tmp_path / "out", **{"train.trackers": "[wandb, tensorboard]", "train.max_steps": 3})
    files = [p for p in (tmp_path / "out").rglob("*") if p.is_file()]
    assert any(p.name == "softprompt.json" for p in files) and any(p.suffix == ".wandb" for p in files)
    leaked = [(str(p), name) for p in files for name, value in secrets.items() if value.encode() in p.read_bytes()]
    assert leaked == []


# 11. a checkpoint that cannot be written


@pytest.mark.slow
def test_a_checkpoint_write_that_fails_is_one_error_and_the_last_one_stays(saved_model, task, tmp_path):
    """The file size limit of the running process is lowered under it (prlimit, as a full disk would refuse the
    next write): the next checkpoint fails with one line naming the last complete one, leaves no temp dir, and
    --resume continues from that one."""
    out = tmp_path / "out"
    args = overrides(saved_model("llama"), task, out, **{"train.max_steps": 100000, "train.save_every": 2,
                                                          "train.eval_every": 100000, "data.test_split": "null",
                                                          "prompt.num_virtual_tokens": 100})
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "WANDB_MODE": "offline",
           "PYTHONPATH": str(Path(__file__).resolve().parents[1])}
    proc = subprocess.Popen([sys.executable, "-m", "softprompt", "train", *args], env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    run_dir = out / "t"
    deadline = time.time() + 120
    while time.time() < deadline and proc.poll() is None and not list_checkpoints(run_dir):
        time.sleep(0.01)
    assert proc.poll() is None, proc.communicate()
    # 8 KB: the metrics file stays under it for hundreds of steps; the prompt's 12.8 KB tensor file cannot
    subprocess.run(["prlimit", "--pid", str(proc.pid), "--fsize=8192:8192"], check=True)
    stdout, stderr = proc.communicate(timeout=120)
    assert proc.returncode == 2, stderr
    lines = stderr.strip().splitlines()
    assert len(lines) == 1 and "checkpoint: writing step_" in lines[0] and "is the last complete checkpoint" in lines[0], stderr
    named = Path(lines[0].split("; ")[1].split(" is the last")[0])
    assert named in list_checkpoints(run_dir) and not list(run_dir.glob(".step_*"))  # no half-written dir
    stopped_at = int(named.name.split("_")[1])
    resumed = run(saved_model, task, out, resume=True, **{"train.max_steps": stopped_at + 2, "train.save_every": 2,
                                                          "train.eval_every": 100000, "data.test_split": "null",
                                                          "prompt.num_virtual_tokens": 100})
    assert resumed.steps == stopped_at + 2


def test_a_final_adapter_that_cannot_be_written_is_one_error_naming_the_last_checkpoint(saved_model, task, tmp_path):
    """final/ is written into a temp dir beside it; a file where that dir must go makes the write fail (as a full
    disk would): one SoftPromptError naming the last complete checkpoint, no final/, and --resume writes it."""
    from softprompt.errors import SoftPromptError

    out = tmp_path / "out"
    (out / "t").mkdir(parents=True)
    (out / "t" / ".final.tmp").write_text("in the way")
    with pytest.raises(SoftPromptError, match=r"train: writing .*final failed .*step_000006 is the last complete checkpoint"):
        run(saved_model, task, out)
    assert not (out / "t" / "final").exists() and (out / "t" / "step_000006").is_dir()
    (out / "t" / ".final.tmp").unlink()
    resumed = run(saved_model, task, out, resume=True)
    assert resumed.steps == 6 and (out / "t" / "final" / "adapter_model.safetensors").is_file()
