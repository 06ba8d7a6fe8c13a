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
    code, out, _ = cli(["train", *overrides(saved_model("llama"), task, tmp_path / "out")], capsys)
    assert code == 0
    adapter = json.loads(out[out.index("{"):])["adapter"]
    sidecar = tmp_path / "out" / "t" / "final" / "softprompt.json"
    meta = json.loads(sidecar.read_text())
    meta["base_model"] = saved_model("gpt2")  # same hidden size, other weights
    sidecar.write_text(json.dumps(meta))
    code, _, err = cli(["generate", adapter, "apple ="], capsys)
    assert code == 2 and "was trained on base model" in err


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
    proc = subprocess.run([sys.executable, "-m", "softprompt", "train", *overrides(saved_model("llama"), task, tmp_path / "out")],
                          capture_output=True, text=True, cwd=tmp_path, timeout=300)
    assert proc.returncode == 0, proc.stderr[-2000:]
    adapter = json.loads(proc.stdout[proc.stdout.index("{"):])["adapter"]
    gen = subprocess.run([sys.executable, "-m", "softprompt", "generate", adapter, "apple =", "--max-new-tokens", "3"],
                         capture_output=True, text=True, timeout=120)
    assert gen.returncode == 0 and gen.stdout.startswith("apple =")
