"""The first hour with the CLI: a run says what it did (eval lines, a short table), a run dir is never silently
replaced or restarted, `eval` scores an adapter on its own run's data and says which, options go anywhere.

The key behaviours run the real CLI (`python -m softprompt`) in a subprocess, on one tiny run trained once per
module; tests that change a run work on a copy of it.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import yaml
from safetensors.torch import load_file

from helpers import overrides, write_task
from softprompt import __version__, load_config, train
from softprompt.cli import _resume_takes_no_override, main, parser
from softprompt.errors import SoftPromptError
from softprompt.train import curves_title, sig4

SRC = str(Path(__file__).resolve().parents[1])
EVAL_LINE = re.compile(r"^step (\d+)/6  eval_loss (\S+)  eval_ppl (\S+)  eval_accuracy (\S+)(  \(best\))?$", re.M)
LONG_FLOAT = re.compile(r"\d\.\d{5,}")  # a float printed with more than 4 significant digits


def softprompt(*argv, cwd: Path) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": SRC, "HF_HUB_OFFLINE": "1", "WANDB_MODE": "offline"}
    return subprocess.run([sys.executable, "-m", "softprompt", *map(str, argv)], capture_output=True, text=True,
                          cwd=cwd, timeout=300, env=env)


def run_args(model: str, data: Path, out: Path, **extra) -> list[str]:
    """Overrides for the module's run: eval at 3 and 6, checkpoints at 3 and 6 (both kept)."""
    return overrides(model, data, out, **{"train.keep_checkpoints": 5, **extra})


@pytest.fixture(scope="module")
def trained(saved_model, tmp_path_factory):
    """One real `softprompt train RECIPE key=value ...` process with the progress bar on: (root, process)."""
    root = tmp_path_factory.mktemp("first-hour")
    data = write_task(root / "data")
    recipe = root / "recipe.yaml"
    recipe.write_text(yaml.safe_dump({"model": {"name_or_path": saved_model("llama")}, "data": {"path": str(data)}}))
    args = run_args(saved_model("llama"), data, root / "out", **{"train.progress_bar": "true"})
    proc = softprompt("train", recipe, *args, cwd=root)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return root, proc


@pytest.fixture()
def run_copy(trained, tmp_path):
    """A copy of the trained run dir, tmp_path/out/t, for a test that changes it."""
    root, _ = trained
    shutil.copytree(root / "out", tmp_path / "out")
    return tmp_path / "out" / "t"


def snapshot(root: Path) -> dict:
    return {str(p.relative_to(root)): p.stat().st_mtime_ns for p in sorted(root.rglob("*"))}


def sidecar(run_dir: Path) -> dict:
    return json.loads((run_dir / "final" / "softprompt.json").read_text())


# --- what a run prints ---------------------------------------------------------------------------------------


def test_version():
    proc = softprompt("--version", cwd=Path(SRC))
    assert proc.returncode == 0 and proc.stdout == f"softprompt {__version__}\n", proc.stderr


def test_train_prints_rounded_eval_lines_and_a_table(trained):
    root, proc = trained
    out = proc.stdout
    evals = EVAL_LINE.findall(out)  # whole lines on stdout: the bar (stderr) runs beside them, not through them
    assert [int(e[0]) for e in evals] == [3, 6], out
    assert all(len(re.sub(r"\D", "", v).lstrip("0")) <= 4 for e in evals for v in e[1:4]), evals
    assert "train:" in proc.stderr  # the bar was on
    assert not LONG_FLOAT.search(out) and "{" not in out, out  # no JSON dump, no 16-digit floats
    table = out[out.index("metric"):]
    assert table.splitlines()[0].split() == ["metric", "eval", "before", "eval", "final", "test", "before", "test", "final"]
    loss = next(line for line in table.splitlines() if line.startswith("loss")).split()
    meta = sidecar(root / "out" / "t")
    assert loss[2] == sig4(meta["metrics"]["eval_loss"]) and loss[4] == sig4(meta["metrics"]["test_loss"])
    assert f"final/ holds step {meta['source_step']}: best eval_loss" in out and "steps: 6" in out
    assert "trainable parameters: 128" in out and f"adapter: {root / 'out' / 't' / 'final'}" in out
    # the first eval is the best so far; the second is marked when it improved, i.e. when final/ holds step 6
    assert [bool(e[4]) for e in evals] == [True, meta["source_step"] == 6]


def test_eval_lines_do_not_cut_through_the_progress_bar(saved_model, tmp_path):
    """Bar (stderr) and eval lines (stdout) share one terminal: each eval line must show whole, on its own line,
    as a terminal shows it (what follows the last carriage return). A plain print lands behind the bar."""
    import contextlib
    import io

    screen = io.StringIO()
    cfg = load_config(None, overrides(saved_model("llama"), write_task(tmp_path / "data"), tmp_path / "out",
                                      **{"train.progress_bar": "true", "data.test_split": "null"}))
    with contextlib.redirect_stdout(screen), contextlib.redirect_stderr(screen):
        train(cfg)
    shown = "\n".join(line.rsplit("\r", 1)[-1] for line in screen.getvalue().split("\n"))
    assert "train:" in screen.getvalue()  # the bar was drawn
    assert [int(e[0]) for e in EVAL_LINE.findall(shown)] == [3, 6], shown


def test_json_keeps_the_machine_readable_summary(saved_model, tmp_path, capsys):
    data = write_task(tmp_path / "data")
    assert main(["train", "--json", *overrides(saved_model("llama"), data, tmp_path / "out", **{"train.max_steps": 2,
                                                                                               "train.eval_every": 2})]) == 0
    out = capsys.readouterr().out
    summary = json.loads(out[out.index("{"):])
    assert summary["steps"] == 2 and summary["source_step"] == 2 and "eval_loss" in summary["best_eval"]
    assert summary["adapter"] == str(tmp_path / "out" / "t" / "final") and "test_loss" in summary["test"]


def test_sidecar_records_the_config_steps_and_source_step(trained):
    root, _ = trained
    run_dir = root / "out" / "t"
    meta = sidecar(run_dir)
    assert meta["config"] == yaml.safe_load((run_dir / "config.yaml").read_text())
    assert meta["config"]["prompt"]["num_virtual_tokens"] == 4 and meta["config"]["data"]["path"] == str(root / "data")
    assert meta["steps"] == 6 and meta["chosen_by"] == "best eval_loss"
    evals = {h["step"]: h["eval_loss"] for h in map(json.loads, (run_dir / "metrics.jsonl").read_text().splitlines())
             if "eval_loss" in h and h["step"] > 0}
    assert meta["source_step"] == min(evals, key=evals.get)  # the step of the best eval, which may be < steps
    assert meta["metrics"]["eval_loss"] == pytest.approx(evals[meta["source_step"]])


def test_curves_title_names_the_run(trained):
    root, _ = trained
    cfg = load_config(None, ["train.run_name=t", "prompt.num_virtual_tokens=4", "optim.lr=0.1"])
    assert curves_title(cfg, 6) == "t: prompt_tuning, p=4, lr=0.1, 6 steps"
    assert (root / "out" / "t" / "curves.png").stat().st_size > 0


def test_help_names_adapter_texts_and_default_split(capsys):
    for command, expected in [("eval", ["a run's final/", "softprompt export", "data.test_split, else data.eval_split",
                                        "eval ADAPTER [RECIPE] [key=value ...] [--split S] [--json]"]),
                              ("generate", ["a run's final/", "TEXTS", "input texts to continue"]),
                              ("train", ["--resume [PATH]", "step_NNNNNN", "--overwrite", "--json"])]:
        with pytest.raises(SystemExit) as exit_:
            main([command, "--help"])
        text = " ".join(capsys.readouterr().out.split())
        assert exit_.value.code == 0 and all(e in text for e in expected), (command, text)


# --- eval: the run's own data, and it says so -------------------------------------------------------------------


def test_eval_without_recipe_uses_the_runs_config(trained):
    root, _ = trained
    adapter = root / "out" / "t" / "final"
    proc = softprompt("eval", "--split", "validation", adapter, cwd=root)  # an option before the positionals
    assert proc.returncode == 0, proc.stderr[-3000:]
    lines = proc.stdout.splitlines()
    assert lines[0] == f"data: {root / 'data'}  split: validation  rows: 12  (config: {adapter / 'softprompt.json'})"
    assert lines[1].split() == ["metric", "validation"]
    rows = {line.split()[0]: line.split()[1] for line in lines[2:]}
    assert set(rows) == {"loss", "ppl", "accuracy"}
    assert rows["loss"] == sig4(sidecar(root / "out" / "t")["metrics"]["eval_loss"])  # the data final/ was picked on


def test_eval_overrides_and_json(trained, capsys):
    root, _ = trained
    adapter = root / "out" / "t" / "final"
    capsys.readouterr()
    assert main(["eval", str(adapter), "data.max_eval_samples=5", "--json"]) == 0
    result = json.loads(capsys.readouterr().out)
    assert (result["data"], result["split"], result["rows"]) == (str(root / "data"), "test", 5)  # default: test split
    assert {"eval_loss", "eval_ppl", "eval_accuracy"} <= set(result)


def test_eval_falls_back_to_the_run_dirs_config_yaml(run_copy, capsys):
    meta = sidecar(run_copy)
    del meta["config"]  # an adapter written before sidecars recorded the config
    (run_copy / "final" / "softprompt.json").write_text(json.dumps(meta))
    capsys.readouterr()
    assert main(["eval", str(run_copy / "final"), "data.max_eval_samples=3"]) == 0
    first = capsys.readouterr().out.splitlines()[0]
    assert "split: test  rows: 3" in first and first.endswith(f"(config: {run_copy / 'config.yaml'})")


def test_eval_with_a_recipe_reads_the_recipes_data(trained, tmp_path, capsys):
    root, _ = trained
    other = write_task(tmp_path / "other", n_train=4, n_eval=7)
    recipe = tmp_path / "r.yaml"
    recipe.write_text(yaml.safe_dump({"data": {"path": str(other)}}))
    capsys.readouterr()
    assert main(["eval", str(root / "out" / "t" / "final"), "--split", "validation", str(recipe)]) == 0  # option between
    assert capsys.readouterr().out.startswith(f"data: {other}  split: validation  rows: 7  (config: {recipe})")


# --- run dirs: never silently replaced, never silently restarted ------------------------------------------------


def test_new_run_into_a_run_dir_is_refused_then_overwrite_replaces(saved_model, trained, run_copy):
    root, _ = trained
    args = run_args(saved_model("llama"), root / "data", run_copy.parent, **{"train.max_steps": 2, "train.eval_every": 2})
    before = snapshot(run_copy)
    proc = softprompt("train", *args, cwd=run_copy.parent)
    assert proc.returncode == 2 and proc.stdout == "", proc.stdout[-2000:]
    assert proc.stderr.startswith("softprompt: error: ") and proc.stderr.count("\n") == 1, proc.stderr[-3000:]
    assert "already holds a run (step_000003/, step_000006/, final/, metrics.jsonl)" in proc.stderr
    assert "--resume" in proc.stderr and "--overwrite" in proc.stderr
    assert snapshot(run_copy) == before
    assert main(["train", *args, "--overwrite"]) == 0
    assert sorted(p.name for p in run_copy.iterdir() if p.name.startswith("step_")) == ["step_000002"]
    assert sidecar(run_copy)["steps"] == 2


def test_library_train_refuses_a_run_dir_that_holds_a_run(saved_model, trained, run_copy):
    root, _ = trained
    cfg = load_config(None, run_args(saved_model("llama"), root / "data", run_copy.parent))
    before = snapshot(run_copy)
    with pytest.raises(SoftPromptError, match="already holds a run"):
        train(cfg)
    empty = load_config(None, run_args(saved_model("llama"), root / "data", run_copy.parent, **{"train.run_name": "new"}))
    with pytest.raises(SoftPromptError, match=r"holds no checkpoint .* train without --resume to start it"):
        train(empty, resume=True)
    assert snapshot(run_copy) == before and not (run_copy.parent / "new").exists()


def test_resume_with_options_anywhere_runs_on_and_config_shows_what_ran(trained, run_copy):
    root, _ = trained
    args = run_args("unused", root / "data", run_copy.parent)[2:]  # the recipe names the model and the data
    # `--resume` right after the recipe, overrides after it: the flag takes no override as its PATH
    proc = softprompt("train", root / "recipe.yaml", "--resume", *args, "train.max_steps=8", "train.eval_every=4",
                      cwd=run_copy.parent)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert f"resumed from {run_copy / 'step_000006'} at step 6" in proc.stdout
    assert re.search(r"^step 8/8  eval_loss", proc.stdout, re.M) and "steps: 8" in proc.stdout
    written = yaml.safe_load((run_copy / "config.yaml").read_text())
    assert written["train"]["max_steps"] == 8 and written["train"]["eval_every"] == 4  # what ran, not the first run's
    assert sidecar(run_copy)["config"] == written and sidecar(run_copy)["steps"] == 8


def test_resume_a_run_dir_without_recipe_uses_its_own_config(run_copy, capsys):
    capsys.readouterr()
    assert main(["train", "--resume", str(run_copy), "train.max_steps=7", "train.progress_bar=false"]) == 0
    out = capsys.readouterr().out
    assert f"resumed from {run_copy / 'step_000006'} at step 6" in out and "steps: 7" in out
    assert yaml.safe_load((run_copy / "config.yaml").read_text())["train"]["max_steps"] == 7


def test_resume_an_earlier_checkpoint_takes_overwrite_and_is_exact(trained, run_copy, capsys):
    root, _ = trained
    original = load_file(str(root / "out" / "t" / "final" / "adapter_model.safetensors"))["prompt_embeddings"]
    before = snapshot(run_copy)
    capsys.readouterr()
    assert main(["train", "--resume", str(run_copy / "step_000003")]) == 2
    err = capsys.readouterr().err
    assert "step_000003 is not the run's latest checkpoint (step_000006 came later)" in err and "--overwrite" in err
    assert snapshot(run_copy) == before
    assert main(["train", "--resume", str(run_copy / "step_000003"), "--overwrite"]) == 0
    assert "resumed from" in capsys.readouterr().out
    again = load_file(str(run_copy / "final" / "adapter_model.safetensors"))["prompt_embeddings"]
    assert torch.equal(again, original)  # steps 4-6 ran again, bit for bit as the first time


def test_resume_argument_is_a_path_only_when_it_is_no_override_or_recipe(tmp_path):
    (tmp_path / "r.yaml").write_text("{}\n")
    (tmp_path / "run").mkdir()
    r, run = str(tmp_path / "r.yaml"), str(tmp_path / "run")
    cases = {
        (r, "--resume", "a.b=1"): (True, [r, "a.b=1"]),
        ("--resume", r, "a.b=1"): (True, [r, "a.b=1"]),
        (r, "--resume", run, "a.b=1"): (run, [r, "a.b=1"]),
        (r, "a.b=1", "--resume"): (True, [r, "a.b=1"]),
        (r, "--resume", "--json"): (True, [r]),
        (r, "--resume", "ckpts/t/step_000002"): ("ckpts/t/step_000002", [r]),  # not there yet: a PATH, checked later
        (r, "a.b=1"): (False, [r, "a.b=1"]),
    }
    for argv, (resume, items) in cases.items():
        args = parser().parse_args(_resume_takes_no_override(["train", *argv]))
        assert (args.resume, args.items) == (resume, items), argv
