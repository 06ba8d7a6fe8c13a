"""A SIGKILL at any point of a write: mid-checkpoint, mid-export of final/, mid-pruning of old checkpoints. Each row
kills the training process at one point of the real write path (after or before a given call, or with a file cut
in half, as a kill during the write leaves it); the last complete checkpoint must load, and --resume must end
with the uninterrupted run's adapter, bit for bit."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from helpers import overrides, write_task
from softprompt import load_config, train
from softprompt.checkpoint import list_checkpoints

# the process under test: wraps one function of the write path so that its NTH call kills the process
# (before it runs, after it returns, or after it wrote with the file then cut to half its size)
KILLER = """
import os, signal, sys
import torch
import softprompt.adapter, softprompt.checkpoint
where, name, nth, when = sys.argv[1], sys.argv[2], int(sys.argv[3]), sys.argv[4]
owner = {"checkpoint": softprompt.checkpoint, "adapter": softprompt.adapter, "torch": torch}[where]
real, calls = getattr(owner, name), [0]
def dying(*args, **kwargs):
    calls[0] += 1
    if calls[0] == nth and when == "before":
        os.kill(os.getpid(), signal.SIGKILL)
    result = real(*args, **kwargs)
    if calls[0] == nth and when == "half":
        with open(args[1], "r+b") as f:
            f.truncate(os.path.getsize(args[1]) // 2)
    if calls[0] == nth:
        os.kill(os.getpid(), signal.SIGKILL)
    return result
setattr(owner, name, dying)
from softprompt.cli import main
sys.exit(main(sys.argv[5:]))
"""

RUN = {"train.max_steps": 6, "train.save_every": 2, "train.eval_every": 3, "train.keep_checkpoints": 2}

# (what is cut short, function, its call that dies, when): checkpoints come at steps 2, 4, 6, then final/
KILLS = {
    "checkpoint: tensors written, trainer state not": ("checkpoint", "save_tensors", 2, "after"),
    "checkpoint: trainer state cut in half": ("torch", "save", 2, "half"),
    "checkpoint: complete, not yet renamed": ("checkpoint", "commit", 2, "before"),
    "checkpoint: last one renamed, the oldest not yet pruned": ("checkpoint", "commit", 3, "after"),
    "final/: PEFT tensors written, the rest not": ("adapter", "save_tensors", 1, "after"),
    "final/: complete, not yet renamed": ("adapter", "commit", 1, "before"),
}


@pytest.fixture(scope="module")
def uninterrupted(tmp_path_factory, saved_model):
    tmp = tmp_path_factory.mktemp("whole")
    task = write_task(tmp / "data")
    result = train(load_config(None, overrides(saved_model("llama"), task, tmp / "out", **RUN)))
    return task, load_file(str(result.adapter_dir / "adapter_model.safetensors"))


@pytest.mark.slow
@pytest.mark.parametrize("kill", list(KILLS))
def test_a_kill_mid_write_leaves_the_last_checkpoint_and_resume_ends_as_if_never_stopped(tmp_path, saved_model,
                                                                                        uninterrupted, kill, capsys):
    task, expected = uninterrupted
    args = overrides(saved_model("llama"), task, tmp_path / "out", **RUN)
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "PYTHONPATH": str(Path(__file__).resolve().parents[1])}
    proc = subprocess.run([sys.executable, "-c", KILLER, *map(str, KILLS[kill]), "train", *args], env=env,
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == -9, proc.stderr[-3000:]  # it died where the row says, not earlier or later
    run_dir = tmp_path / "out" / "t"
    assert not (run_dir / "final").exists() or KILLS[kill][0] == "checkpoint"
    latest = list_checkpoints(run_dir)[-1]  # complete: every file there, and it loads
    meta = json.loads((latest / "meta.json").read_text())
    assert meta["step"] == int(latest.name.split("_")[1])
    resumed = train(load_config(None, args), resume=True)
    assert resumed.history[-1]["step"] == 6 and f"resumed from {latest}" in capsys.readouterr().out
    final = load_file(str(run_dir / "final" / "adapter_model.safetensors"))
    assert final.keys() == expected.keys() and all(torch.equal(final[k], expected[k]) for k in expected)
    assert not [p.name for p in run_dir.iterdir() if p.name.startswith(".")]  # no temp dir left behind
