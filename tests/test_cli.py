"""The CLI: bad input gives one clear line and exit code 2, nothing half-written; real runs work."""

import json
import subprocess
import sys

import pytest

from helpers import overrides, write_task
from softprompt.cli import main


@pytest.fixture()
def task(tmp_path):
    return write_task(tmp_path / "data")


def cli(args, capsys):
    capsys.readouterr()  # drop what fixtures printed
    code = main(args)
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def bad_cases(tmp_path, task, model_dir):
    empty = tmp_path / "empty"
    empty.mkdir()
    for split in ("train", "validation", "test"):
        (empty / f"{split}.jsonl").write_text("" if split == "train" else (task / f"{split}.jsonl").read_text())
    return {
        "missing column": (["data.source_template={question}"], "refers to column 'question', which the dataset lacks"),
        "empty dataset": ([f"data.path={empty}"], "split is empty"),
        "unknown model": ([f"model.name_or_path={tmp_path / 'nope'}"], "model.name_or_path: cannot load"),
        "bad value": (["optim.scheduler=sometimes"], "optim.scheduler: 'sometimes' is not valid"),
        "target too long": (["data.max_target_length=1"], "over data.max_target_length=1"),
        "source too long": (["data.truncation=error", "data.max_length=4", "data.max_target_length=3"],
                            "raise data.max_length or set data.truncation"),
    }


@pytest.mark.parametrize("case", ["missing column", "empty dataset", "unknown model", "bad value", "target too long",
                                  "source too long"])
def test_bad_input_exit_2_one_line_nothing_written(case, tmp_path, task, saved_model, capsys):
    extra, message = bad_cases(tmp_path, task, saved_model("llama"))[case]
    out_dir = tmp_path / "out"
    code, _, err = cli(["train", *overrides(saved_model("llama"), task, out_dir), *extra], capsys)
    assert code == 2
    assert message in err and err.count("\n") == 1 and "Traceback" not in err
    assert not out_dir.exists()


def test_adapter_from_other_base_on_cli(tmp_path, task, saved_model, capsys):
    code, out, _ = cli(["train", *overrides(saved_model("llama"), task, tmp_path / "out"), "--json"], capsys)
    assert code == 0
    adapter = json.loads(out[out.index("{"):])["adapter"]
    sidecar = tmp_path / "out" / "t" / "final" / "softprompt.json"
    meta = json.loads(sidecar.read_text())
    meta["base_model"] = saved_model("gpt2")  # same hidden size, another architecture
    sidecar.write_text(json.dumps(meta))
    code, _, err = cli(["generate", adapter, "apple ="], capsys)
    assert code == 2 and "was trained on a llama base" in err and "this base is a gpt2" in err


def test_export_from_checkpoint_matches_training_state(tmp_path, task, saved_model, capsys):
    from safetensors.torch import load_file

    assert cli(["train", *overrides(saved_model("llama"), task, tmp_path / "out"), "train.keep_best=false"], capsys)[0] == 0
    code, out, _ = cli(["export", str(tmp_path / "out" / "t" / "step_000006"), str(tmp_path / "exported")], capsys)
    assert code == 0
    a = load_file(str(tmp_path / "exported" / "adapter_model.safetensors"))["prompt_embeddings"]
    b = load_file(str(tmp_path / "out" / "t" / "final" / "adapter_model.safetensors"))["prompt_embeddings"]
    assert (a == b).all()


@pytest.mark.slow
def test_python_m_real_process_error_has_no_traceback(tmp_path):
    proc = subprocess.run([sys.executable, "-m", "softprompt", "train", "train.max_stepz=3"],
                          capture_output=True, text=True, cwd=tmp_path, timeout=120)
    assert proc.returncode == 2
    assert "unknown key(s) ['max_stepz']" in proc.stderr and "Traceback" not in proc.stderr


@pytest.mark.slow
def test_python_m_train_and_generate(tmp_path, task, saved_model):
    proc = subprocess.run([sys.executable, "-m", "softprompt", "train", *overrides(saved_model("llama"), task, tmp_path / "out"),
                           "--json"], capture_output=True, text=True, cwd=tmp_path, timeout=300)
    assert proc.returncode == 0, proc.stderr[-2000:]
    adapter = json.loads(proc.stdout[proc.stdout.index("{"):])["adapter"]
    gen = subprocess.run([sys.executable, "-m", "softprompt", "generate", adapter, "apple =", "--max-new-tokens", "3"],
                         capture_output=True, text=True, timeout=120)
    assert gen.returncode == 0 and gen.stdout.startswith("apple =")


def test_held_warnings_are_shown_when_the_command_succeeds(caplog, monkeypatch):
    """Warnings and log lines are held while a command runs: dropped before a bad-input error (see
    test_bad_input.py), printed once it succeeds."""
    import logging
    import warnings

    import softprompt.methods.dept as dept

    original = dept.format_budget

    def noisy(*args):
        warnings.warn("a library warning", UserWarning)
        logging.getLogger("softprompt.methods.dept").warning("our own warning")
        return original(*args)

    monkeypatch.setattr(dept, "format_budget", noisy)
    with warnings.catch_warnings(record=True) as shown:
        warnings.simplefilter("always")
        assert main(["budget", "--d", "32", "--s", "8", "--l", "4"]) == 0
    assert [str(w.message) for w in shown] == ["a library warning"]
    assert "our own warning" in caplog.text
    assert logging.Logger.callHandlers.__name__ == "callHandlers"  # restored


def test_help_still_exits_zero(capsys):
    with pytest.raises(SystemExit) as exit_:
        main(["budget", "--help"])
    assert exit_.value.code == 0 and "--step" in capsys.readouterr().out


def test_train_prints_held_warnings_once_its_input_is_accepted(saved_model, tmp_path, caplog, monkeypatch):
    """Warnings are held back while input may still be refused (so an error line stands alone), and come
    out as soon as train accepts its input: before the run dir is written, not after training."""
    import importlib
    import logging

    train_module = importlib.import_module("softprompt.train")  # the module (the package exports the function)

    load, start = train_module.load_base, train_module.start_fresh
    seen = {}

    def warn_then_load(*args, **kwargs):  # a warning while the input is still being checked
        logging.getLogger("softprompt.model").warning("held until accepted")
        return load(*args, **kwargs)

    def note_then_start(run_dir, cfg):  # the first write of the run: the warning must be out by now
        seen["logged"] = [r.getMessage() for r in caplog.records]  # what reached the handlers so far
        return start(run_dir, cfg)

    monkeypatch.setattr(train_module, "load_base", warn_then_load)
    monkeypatch.setattr(train_module, "start_fresh", note_then_start)
    argv = ["train", *overrides(saved_model(), write_task(tmp_path / "data"), tmp_path / "out", **{"train.max_steps": 1})]
    assert main(argv) == 0
    assert "held until accepted" in seen["logged"]
