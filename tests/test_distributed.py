"""Real multi-process training: `accelerate launch -m softprompt train` with 2 CPU processes (gloo DDP)."""

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from helpers import overrides, write_task
from softprompt import load_config, train


BANK = {"method": "null", "prompt.type": "bank", "prompt.num_prompts": 2, "objective.type": "lm", "selector.type": "key"}


@pytest.mark.slow
@pytest.mark.parametrize("method", [{}, BANK], ids=["prompt_tuning", "bank-key"])
def test_two_process_ddp_equals_one_process_on_the_global_batch(tmp_path, saved_model, method):
    from softprompt import SoftPromptModel

    task = write_task(tmp_path / "data")
    launcher = shutil.which("accelerate", path=str(Path(sys.executable).parent)) or shutil.which("accelerate")
    common = {"train.max_steps": 4, "train.eval_every": 4, "train.save_every": 4, **method}
    args = overrides(saved_model("llama"), task, tmp_path / "ddp", **common, **{"train.batch_size": 3})
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    proc = subprocess.run([launcher, "launch", "--multi_gpu", "--num_processes", "2", "--num_machines", "1",
                           "--mixed_precision", "no", "--dynamo_backend", "no", "-m", "softprompt", "train", *args, "--json"],
                          capture_output=True, text=True, timeout=600, env=env, cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr[-3000:]
    summary = json.loads(proc.stdout[proc.stdout.index("{"):proc.stdout.rindex("}") + 1])
    assert summary["steps"] == 4
    single = train(load_config(None, overrides(saved_model("llama"), task, tmp_path / "one", **common,
                                               **{"train.batch_size": 6})))
    ddp = SoftPromptModel.from_adapter(tmp_path / "ddp" / "t" / "final")
    learned = lambda m: {**m.prompt.state_dict(), **m.learned_buffers()}  # noqa: E731  (a bank: its keys too)
    torch.testing.assert_close(learned(ddp), learned(single.model), atol=1e-5, rtol=1e-4)
    if not method:  # the PEFT file holds the same prompt
        ddp_prompt = load_file(str(tmp_path / "ddp" / "t" / "final" / "adapter_model.safetensors"))["prompt_embeddings"]
        torch.testing.assert_close(ddp_prompt, single.model.prompt.prompt.detach(), atol=1e-5, rtol=1e-4)
    # and it really was two synchronised processes, not two independent runs
    half = train(load_config(None, overrides(saved_model("llama"), task, tmp_path / "half", **common,
                                             **{"train.batch_size": 3}))).model
    assert not all(torch.equal(v, learned(half)[k]) for k, v in learned(ddp).items())
