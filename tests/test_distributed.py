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


# each test starts process pairs on accelerate's default port: scripts/test.sh runs them alone, not beside xdist workers
pytestmark = pytest.mark.serial

BANK = {"method": "null", "prompt.type": "bank", "prompt.num_prompts": 2, "objective.type": "lm", "selector.type": "key"}
DEPT = {"method": "dept", "prompt.rank": 2, "prompt.max_length": 256, "prompt.offset_lr": 0.05}
PTEC = {"method": "ptec", "data.source_template": "{text}", "objective.labels": "[red, green, blue]", "head.num_outputs": 3,
        "head.lr": 0.05, "objective.max_new_tokens": None}


@pytest.mark.slow
@pytest.mark.parametrize("method", [{}, BANK, DEPT, PTEC], ids=["prompt_tuning", "bank-key", "dept", "ptec"])
def test_two_process_ddp_equals_one_process_on_the_global_batch(tmp_path, saved_model, method):
    """The adapter, and every eval on the way (sharded across the 2 processes, then gathered), equal 1 process's."""
    from softprompt import SoftPromptModel
    from test_classify import write_multilabel

    task = write_multilabel(tmp_path / "data") if method is PTEC else write_task(tmp_path / "data")
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
    learned = lambda m: {**m.prompt.state_dict(), **m.learned_buffers(),  # noqa: E731  (a bank: its keys too)
                         **({f"head.{k}": v for k, v in m.head.state_dict().items()} if m.head is not None else {})}
    torch.testing.assert_close(learned(ddp), learned(single.model), atol=1e-5, rtol=1e-4)
    # evaluation: each process scored half the rows; the gathered metrics are the single process's
    logged = [json.loads(line) for line in (tmp_path / "ddp" / "t" / "metrics.jsonl").read_text().splitlines()]
    evals = lambda history: [{k: v for k, v in h.items() if k.startswith(("eval_", "test_"))}  # noqa: E731
                             for h in history if any(k.startswith(("eval_", "test_")) for k in h)]
    assert len(evals(logged)) == len(evals(single.history)) >= 3  # before training, step 4, test
    # ranking metrics (average precision) turn on the order of tied scores: the toy data repeats texts, whose
    # scores tie exactly in one batch and differ in the last bit across batch compositions; they are left out
    ties = ("_ap",)
    for mine, theirs in zip(evals(logged), evals(single.history)):
        assert mine.keys() == theirs.keys()
        for key in (k for k in mine if not k.endswith(ties)):
            assert mine[key] == pytest.approx(theirs[key], rel=1e-4, abs=1e-5), key
    if not method:  # the PEFT file holds the same prompt
        ddp_prompt = load_file(str(tmp_path / "ddp" / "t" / "final" / "adapter_model.safetensors"))["prompt_embeddings"]
        torch.testing.assert_close(ddp_prompt, single.model.prompt.prompt.detach(), atol=1e-5, rtol=1e-4)
    # and it really was two synchronised processes, not two independent runs
    half = train(load_config(None, overrides(saved_model("llama"), task, tmp_path / "half", **common,
                                             **{"train.batch_size": 3}))).model
    assert not all(torch.equal(v, learned(half)[k]) for k, v in learned(ddp).items())


def test_shards_partition_the_rows_in_order():
    from softprompt.sharded_eval import EvalParts, shard

    for n in range(0, 12):
        for world in (1, 2, 3, 5):
            pieces = [list(range(n))[shard(n, r, world)] for r in range(world)]
            assert sum(pieces, []) == list(range(n)) and max(map(len, pieces)) - min(map(len, pieces)) <= 1
    joined = EvalParts({"loss": 1.5, "tokens": 3}, {"p": ["a"]}) + EvalParts({"loss": 2.0, "tokens": 1}, {"p": ["b", "c"]})
    assert joined.sums == {"loss": 3.5, "tokens": 4} and joined.rows == {"p": ["a", "b", "c"]}


def launch(tmp_path, args: list[str], **popen) -> subprocess.Popen:
    """`accelerate launch` of `softprompt train ARGS` on 2 CPU processes (gloo), in its own process group."""
    launcher = shutil.which("accelerate", path=str(Path(sys.executable).parent)) or shutil.which("accelerate")
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    return subprocess.Popen([launcher, "launch", "--multi_gpu", "--num_processes", "2", "--num_machines", "1",
                             "--mixed_precision", "no", "--dynamo_backend", "no", "-m", "softprompt", "train", *args],
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env, cwd=tmp_path,
                            start_new_session=True, **popen)


def final_state(run: Path) -> dict:
    return load_file(str(run / "final" / "adapter_model.safetensors"))


STOPPABLE = {"train.batch_size": 3, "train.save_every": 4, "train.eval_every": 1000, "train.keep_best": "false",
             "optim.scheduler": "constant", "optim.warmup_steps": 0, "data.test_split": "null",
             "objective.generate_eval": "false", "train.max_steps": 200}


@pytest.fixture(scope="module")
def uninterrupted(tmp_path_factory, saved_model):
    """A 2-process GPT-2 run of 200 steps, start to end: (its task dir, its final adapter's tensors)."""
    tmp = tmp_path_factory.mktemp("whole")
    task = write_task(tmp / "data")
    whole = launch(tmp, overrides(saved_model("gpt2"), task, tmp / "out", **STOPPABLE))
    assert whole.wait(timeout=600) == 0, whole.stdout.read()[-3000:]
    return task, final_state(tmp / "out" / "t")


@pytest.mark.slow
@pytest.mark.parametrize("how", ["SIGKILL", "SIGTERM"])
def test_two_process_run_stopped_and_resumed_equals_the_uninterrupted_run(tmp_path, saved_model, uninterrupted, how):
    """GPT-2 keeps its dropout in training, so each process draws its own masks: the resume is bitwise only if
    both processes' random streams come back (and the data position, the optimizer moments). SIGKILL lands at any
    point after the first checkpoint (mid-step or mid-checkpoint); SIGTERM checkpoints and exits cleanly."""
    import signal
    import time

    task, expected = uninterrupted
    args = overrides(saved_model("gpt2"), task, tmp_path / "cut", **STOPPABLE)
    cut = launch(tmp_path, args)
    run_dir = tmp_path / "cut" / "t"
    deadline = time.time() + 300
    checkpoints = lambda: run_dir.is_dir() and any(p.name.startswith("step_") for p in run_dir.iterdir())  # noqa: E731
    while time.time() < deadline and cut.poll() is None and not checkpoints():
        time.sleep(0.01)
    assert cut.poll() is None, cut.stdout.read()[-3000:]
    if how == "SIGKILL":  # the launcher and every worker at once (torchrun starts its workers in their own sessions)
        import psutil

        launcher = psutil.Process(cut.pid)
        for proc in [*launcher.children(recursive=True), launcher]:
            proc.kill()
    else:  # a scheduler's preemption signal to the launcher, which passes it on to its workers
        os.killpg(cut.pid, signal.SIGTERM)
    output = cut.communicate(timeout=120)[0]
    steps = [int(p.name.split("_")[1]) for p in run_dir.iterdir() if p.name.startswith("step_")]
    assert steps and max(steps) < 200 and not (run_dir / "final").exists(), output[-3000:]
    if how == "SIGTERM":  # every process stopped after the same step and said so once
        assert output.count("SIGTERM: saved checkpoint") == 1, output[-3000:]

    again = launch(tmp_path, [*args, "--resume"])
    assert again.wait(timeout=600) == 0, again.stdout.read()[-3000:]
    resumed = final_state(run_dir)
    assert all(torch.equal(resumed[k], expected[k]) for k in expected), f"stopped after step {max(steps)}"


@pytest.mark.slow
def test_the_launcher_guard_fires_when_processes_would_train_alone(tmp_path):
    """CPU processes whose Accelerator is built without cpu=True do not join one group (research/env_probe.md §4):
    each sees 1 process while the launcher started 2. check_world stops them, under a real torchrun."""
    script = tmp_path / "alone.py"
    script.write_text("import os\nos.environ.pop('ACCELERATE_USE_CPU', None)\nfrom accelerate import Accelerator\n"
                      "from softprompt.errors import SoftPromptError\nfrom softprompt.train import check_world\n"
                      "try:\n    check_world(Accelerator())\nexcept SoftPromptError as e:\n    print('refused:', e)\n")
    torchrun = shutil.which("torchrun", path=str(Path(sys.executable).parent)) or shutil.which("torchrun")
    proc = subprocess.run([torchrun, "--nproc_per_node", "2", str(script)], capture_output=True, text=True, timeout=300,
                          env={**os.environ, "OMP_NUM_THREADS": "1"}, cwd=tmp_path)
    assert proc.stdout.count("refused: launcher started 2 processes but accelerate sees 1") == 2, proc.stdout + proc.stderr
