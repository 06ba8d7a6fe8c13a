"""Real multi-process training: `accelerate launch -m softprompt train` with 2 CPU processes (gloo DDP)."""

import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from helpers import overrides, write_task
from softprompt import load_config, train


# each test starts process pairs, each pair on a free port of its own (`free_port`): they run beside the other
# tests on pytest-xdist's workers, whose single-threaded tests fill the cores these pairs leave idle
pytestmark = pytest.mark.multiprocess


def free_port() -> str:
    """A TCP port no process listens on now, for one launch's rendezvous (accelerate's default 29500 would make
    two concurrent launches join each other)."""
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return str(s.getsockname()[1])


BANK = {"method": "null", "prompt.type": "bank", "prompt.num_prompts": 2, "objective.type": "lm", "selector.type": "key"}
DEPT = {"method": "dept", "prompt.rank": 2, "prompt.max_length": 256, "prompt.offset_lr": 0.05}
PTEC = {"method": "ptec", "data.source_template": "{text}", "objective.labels": "[red, green, blue]", "head.num_outputs": 3,
        "head.lr": 0.05, "objective.max_new_tokens": None}


RECIPES = Path(__file__).resolve().parents[1] / "recipes" / "accelerate"
# how each launcher is asked for 2 CPU processes: DDP by flags, FSDP and DeepSpeed by the recipes users run (their
# bf16 is overridden: the comparison is with an fp32 process)
LAUNCHERS = {"ddp": ["--multi_gpu", "--num_processes", "2", "--num_machines", "1"],
             "fsdp": ["--config_file", str(RECIPES / "fsdp.yaml")],
             "zero2": ["--config_file", str(RECIPES / "deepspeed-zero2.yaml")],
             "zero3": ["--config_file", str(RECIPES / "deepspeed-zero3.yaml")]}
ENGINE_LINE = {"fsdp": "FSDP: the frozen base sharded over 2 processes", "zero2": "DeepSpeed ZeRO-2 over 2 processes",
               "zero3": "DeepSpeed ZeRO-3 over 2 processes"}
SHARDED = {"train.fsdp_prompt": "shard"}
# (launcher, method, whether a resume from the step-2 checkpoint is checked too: DDP's is the kill tests' below;
# FSDP's where the optimizer state is gathered and split again, with a sharded prompt)
CASES = {"ddp-prompt_tuning": ("ddp", {}, False), "ddp-bank-key": ("ddp", BANK, False), "ddp-dept": ("ddp", DEPT, False),
         "ddp-ptec": ("ddp", PTEC, False), "fsdp-prompt_tuning": ("fsdp", {}, False),
         "fsdp-dept-sharded": ("fsdp", {**DEPT, **SHARDED}, True), "fsdp-ptec": ("fsdp", PTEC, False),
         "zero2-prompt_tuning": ("zero2", {}, False), "zero3-dept": ("zero3", DEPT, False)}


def learned(m) -> dict:
    """Everything a run trains: the prompt source's state, a bank's keys, the head."""
    return {**m.prompt.state_dict(), **m.learned_buffers(),
            **({f"head.{k}": v for k, v in m.head.state_dict().items()} if m.head is not None else {})}


@pytest.fixture(scope="module")
def one_process(tmp_path_factory, saved_model):
    """The 1-process runs a 2-process run is compared with, per method (DDP and FSDP share them): on the global
    batch (6), and on one process's half (3), which a synchronised pair must not match."""
    runs = {}

    def run(method: dict, task: Path, batch: int):
        key = (json.dumps({k: v for k, v in method.items() if k not in SHARDED}, sort_keys=True), str(task), batch)
        if key not in runs:
            out = tmp_path_factory.mktemp("one")
            runs[key] = train(load_config(None, overrides(saved_model("llama"), task, out, **COMMON, **method,
                                                          **{"train.batch_size": batch})))
        return runs[key]
    return run


COMMON = {"train.max_steps": 4, "train.eval_every": 4, "train.save_every": 2}


@pytest.fixture(scope="module")
def tasks(tmp_path_factory):
    from test_classify import write_multilabel

    root = tmp_path_factory.mktemp("tasks")
    return {"text": write_task(root / "text"), "labels": write_multilabel(root / "labels")}


@pytest.mark.slow
@pytest.mark.parametrize("case", list(CASES))
def test_two_processes_equal_one_process_on_the_global_batch(tmp_path, saved_model, one_process, tasks, case):
    """DDP and FSDP (the base sharded; the prompt whole on every process, or sharded with train.fsdp_prompt=shard):
    the adapter, and every eval on the way (sharded across the 2 processes, then gathered), equal 1 process's.
    Under FSDP a resume from the step-2 checkpoint then ends where the uninterrupted run did, bit for bit (the
    optimizer state of a sharded prompt is gathered into the checkpoint and split again on resume)."""
    from softprompt import SoftPromptModel

    launcher_kind, method, resume = CASES[case]
    if launcher_kind.startswith("zero"):  # the deepspeed extra (CI's newest-versions job installs it)
        pytest.importorskip("deepspeed")
    task = tasks["labels"] if method.get("method") == "ptec" else tasks["text"]
    args = overrides(saved_model("llama"), task, tmp_path / "two", **COMMON, **method, **{"train.batch_size": 3})
    proc = launch_run(tmp_path, LAUNCHERS[launcher_kind], [*args, "--json"])
    assert proc.returncode == 0, proc.stderr[-3000:]
    summary = json.loads(proc.stdout[proc.stdout.index("{"):proc.stdout.rindex("}") + 1])
    assert summary["steps"] == 4
    if launcher_kind != "ddp":  # the engine the launcher asked for ran (on CPU accelerate would have dropped it)
        assert ENGINE_LINE[launcher_kind] in proc.stdout, proc.stdout[-3000:]
    if launcher_kind == "fsdp":  # the frozen base really was split: this process held part of it
        held = re.search(r"FSDP: the frozen base sharded over 2 processes \(([\d,]+) of its parameters", proc.stdout)
        total = sum(p.numel() for p in SoftPromptModel.from_adapter(tmp_path / "two" / "t" / "final").base.parameters())
        assert held and int(held.group(1).replace(",", "")) < 0.75 * total, proc.stdout[-3000:]
    single = one_process(method, task, 6)
    two = SoftPromptModel.from_adapter(tmp_path / "two" / "t" / "final")
    torch.testing.assert_close(learned(two), learned(single.model), atol=1e-5, rtol=1e-4)
    # evaluation: each process scored half the rows; the gathered metrics are the single process's
    logged = [json.loads(line) for line in (tmp_path / "two" / "t" / "metrics.jsonl").read_text().splitlines()]
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
        two_prompt = load_file(str(tmp_path / "two" / "t" / "final" / "adapter_model.safetensors"))["prompt_embeddings"]
        torch.testing.assert_close(two_prompt, single.model.prompt.prompt.detach(), atol=1e-5, rtol=1e-4)
    # and it really was two synchronised processes, not two independent runs
    half = one_process(method, task, 3).model
    assert not all(torch.equal(v, learned(half)[k]) for k, v in learned(two).items())
    if launcher_kind == "zero2":  # DeepSpeed's split optimizer state is not in the checkpoint: any resume refuses it
        from softprompt.errors import SoftPromptError

        with pytest.raises(SoftPromptError, match="was written under DeepSpeed.*softprompt export"):
            train(load_config(None, args), resume=True)
    if resume:  # as if stopped after the step-2 checkpoint: the resume ends bit-equal
        run = tmp_path / "two" / "t"
        expected = learned(two)
        for later in (run / "final", run / "step_000004"):
            shutil.rmtree(later)
        again = launch_run(tmp_path, LAUNCHERS[launcher_kind], [*args, "--resume"])
        assert again.returncode == 0 and "resumed from" in again.stdout, again.stderr[-3000:]
        resumed = learned(SoftPromptModel.from_adapter(run / "final"))
        assert resumed.keys() == expected.keys() and all(torch.equal(resumed[k], expected[k]) for k in expected)


def launch_run(cwd: Path, launcher_args: list[str], args: list[str]) -> subprocess.CompletedProcess:
    """`accelerate launch LAUNCHER_ARGS -m softprompt train ARGS` on 2 CPU processes, to its end."""
    launcher = shutil.which("accelerate", path=str(Path(sys.executable).parent)) or shutil.which("accelerate")
    return subprocess.run([launcher, "launch", *launcher_args, "--main_process_port", free_port(),
                           "--mixed_precision", "no", "--dynamo_backend", "no",
                           "-m", "softprompt", "train", *args], capture_output=True,
                          text=True, timeout=600, env={**os.environ, "OMP_NUM_THREADS": "1"}, cwd=cwd)


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
    popen = {"stdout": subprocess.PIPE, "stderr": subprocess.STDOUT, **popen}
    return subprocess.Popen([launcher, "launch", "--multi_gpu", "--num_processes", "2", "--num_machines", "1",
                             "--main_process_port", free_port(),
                             "--mixed_precision", "no", "--dynamo_backend", "no", "-m", "softprompt", "train", *args],
                            text=True, env=env, cwd=tmp_path, start_new_session=True, **popen)


def final_state(run: Path) -> dict:
    return load_file(str(run / "final" / "adapter_model.safetensors"))


STOPPABLE = {"train.batch_size": 3, "train.save_every": 4, "train.eval_every": 1000, "train.keep_best": "false",
             "optim.scheduler": "constant", "optim.warmup_steps": 0, "data.test_split": "null",
             "objective.generate_eval": "false", "train.max_steps": 100}


@pytest.fixture(scope="module")
def uninterrupted(tmp_path_factory, saved_model):
    """A 2-process GPT-2 run of STOPPABLE's steps, start to end: (its task dir, its final adapter's tensors)."""
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
    assert steps and max(steps) < STOPPABLE["train.max_steps"] and not (run_dir / "final").exists(), output[-3000:]
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
                      "import sys\ntry:\n    check_world(Accelerator())\nexcept SoftPromptError as e:\n"
                      "    sys.stdout.write(f'refused: {e}\\n')\n")  # one write: the two processes share the pipe
    torchrun = shutil.which("torchrun", path=str(Path(sys.executable).parent)) or shutil.which("torchrun")
    proc = subprocess.run([torchrun, "--nproc_per_node", "2", "--master_port", free_port(), str(script)],
                          capture_output=True, text=True, timeout=300, env={**os.environ, "OMP_NUM_THREADS": "1"},
                          cwd=tmp_path)
    assert proc.stdout.count("refused: launcher started 2 processes but accelerate sees 1") == 2, proc.stdout + proc.stderr


@pytest.mark.slow
@pytest.mark.parametrize("write", ["checkpoint", "metrics"])
def test_a_write_only_the_main_process_fails_stops_both_processes_with_one_line(tmp_path, saved_model, write):
    """Only the main process writes; its file size limit is lowered under it (as a full disk would refuse the next
    write). Both processes stop together: one error line (the main process's, naming the last complete
    checkpoint), no traceback from the other (under gloo it died on the closed connection; under NCCL it waited
    forever), no half-written checkpoint."""
    import time

    import psutil

    from softprompt.checkpoint import list_checkpoints

    task = write_task(tmp_path / "data")
    run_dir = tmp_path / "out" / "t"
    args = overrides(saved_model("llama"), task, tmp_path / "out", **{
        "train.max_steps": 100000, "train.save_every": 2, "train.eval_every": 100000, "data.test_split": "null",
        "prompt.num_virtual_tokens": 100, "train.batch_size": 3})
    cut = launch(tmp_path, args, stderr=subprocess.PIPE)
    deadline = time.time() + 300
    while time.time() < deadline and cut.poll() is None and not list_checkpoints(run_dir):
        time.sleep(0.01)
    assert cut.poll() is None, cut.communicate()
    main_worker = next(p for p in psutil.Process(cut.pid).children(recursive=True) if p.environ().get("RANK") == "0")
    # checkpoint: 8 KB, under which the metrics file stays for hundreds of steps while the prompt's 12.8 KB tensor
    # file cannot; metrics: the metrics file's size now, so its next line is refused first
    limit = 8192 if write == "checkpoint" else (run_dir / "metrics.jsonl").stat().st_size
    subprocess.run(["prlimit", "--pid", str(main_worker.pid), f"--fsize={limit}:{limit}"], check=True)
    stdout, stderr = cut.communicate(timeout=120)
    assert cut.returncode != 0
    errors = [line for line in (stdout + stderr).splitlines() if "softprompt: error:" in line]
    expected = "checkpoint: writing step_" if write == "checkpoint" else "train: appending to "
    assert len(errors) == 1 and expected in errors[0] and "is the last complete checkpoint" in errors[0], stdout + stderr
    assert "[rank1]" not in stdout + stderr, stderr[-3000:]  # the other process stopped without a traceback
    named = Path(errors[0].split("; ")[1].split(" is the last")[0])
    assert named in list_checkpoints(run_dir) and not list(run_dir.glob(".step_*"))
