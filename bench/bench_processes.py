#!/usr/bin/env python
"""1 process against 2 (DDP over gloo) on this machine: training examples per second at one global batch.

    python bench/bench_processes.py                      # ~15 min on 2 cores
    python bench/bench_processes.py --out processes      # also bench/results/processes.{md,json}

Each setting runs `softprompt train` on the bundled demo (recipes/debug/demo-short.yaml, global batch 16) as a
real process, twice: to --short and to --long steps. Everything but the steps in between is the same in both
runs (start-up, model load, the evals before training and at the end), so per-step seconds = (wall time of
the long run - the short run's) / (long - short), and examples per second = 16 / per-step seconds. Settings:
- 1 process, 2 torch threads (both cores);
- 1 process, 1 thread;
- 2 processes (`accelerate launch --multi_gpu --num_processes 2`, CPU gloo DDP), 1 thread and batch 8 each;
- the same 2 processes under FSDP2 (recipes/accelerate/fsdp.yaml: the base sharded, the prompt whole), DeepSpeed
  ZeRO-2 and ZeRO-3 (recipes/accelerate/deepspeed-zero{2,3}.yaml), each with `--mixed_precision no`.
Rounds alternate the settings' order, and the median round is reported with every round's numbers. On 2 cores
the second process can only split the same compute, and adds the gradient all-reduce and the per-step
agreement (loss normaliser, non-finite check): the point is the cost of the machinery, not a speed-up.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
RECIPE = ROOT / "recipes" / "debug" / "demo-short.yaml"
GLOBAL_BATCH = 16
ACCELERATE = ROOT / "recipes" / "accelerate"
DDP = ["--multi_gpu", "--num_processes", "2", "--num_machines", "1"]
SETTINGS = {  # name: (processes, threads per process, launcher arguments)
    "1 process, 2 threads": (1, 2, []),
    "1 process, 1 thread": (1, 1, []),
    "2 processes (DDP), 1 thread each": (2, 1, DDP),
    "2 processes (FSDP2), 1 thread each": (2, 1, ["--config_file", str(ACCELERATE / "fsdp.yaml")]),
    "2 processes (ZeRO-2), 1 thread each": (2, 1, ["--config_file", str(ACCELERATE / "deepspeed-zero2.yaml")]),
    "2 processes (ZeRO-3), 1 thread each": (2, 1, ["--config_file", str(ACCELERATE / "deepspeed-zero3.yaml")]),
}


def command(processes: int, launch: list[str], out: Path, steps: int) -> list[str]:
    overrides = [f"train.max_steps={steps}", f"train.batch_size={GLOBAL_BATCH // processes}", f"train.output_dir={out}",
                 "train.run_name=b", "train.eval_every=100000", "train.save_every=100000", "train.log_every=100000",
                 "data.max_eval_samples=8", "data.test_split=null", "objective.generate_eval=false",
                 "train.progress_bar=false"]
    if processes == 1:
        return [sys.executable, "-m", "softprompt", "train", str(RECIPE), *overrides]
    launcher = shutil.which("accelerate", path=str(Path(sys.executable).parent)) or "accelerate"
    return [launcher, "launch", *launch, "--mixed_precision", "no", "--dynamo_backend", "no", "-m", "softprompt",
            "train", str(RECIPE), *overrides]


def wall(processes: int, threads: int, launch: list[str], steps: int) -> float:
    with tempfile.TemporaryDirectory() as tmp:
        env = {**os.environ, "OMP_NUM_THREADS": str(threads), "HF_HUB_OFFLINE": "1", "WANDB_MODE": "offline"}
        start = time.perf_counter()
        done = subprocess.run(command(processes, launch, Path(tmp), steps), env=env, capture_output=True, text=True, cwd=tmp)
        seconds = time.perf_counter() - start
    if done.returncode != 0:
        raise SystemExit(f"{processes} process(es) failed:\n{done.stdout[-2000:]}\n{done.stderr[-3000:]}")
    return seconds


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[1])
    ap.add_argument("--short", type=int, default=10)
    ap.add_argument("--long", type=int, default=610)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--out", help="write bench/results/OUT.md and OUT.json")
    args = ap.parse_args()
    rounds = {name: [] for name in SETTINGS}
    names = list(SETTINGS)
    for r in range(args.rounds):
        for name in names[r % len(names):] + names[:r % len(names)]:  # a rotating order
            processes, threads, launch = SETTINGS[name]
            short, long = wall(processes, threads, launch, args.short), wall(processes, threads, launch, args.long)
            step = (long - short) / (args.long - args.short)
            rounds[name].append({"short_s": short, "long_s": long, "step_s": step, "examples_per_s": GLOBAL_BATCH / step})
            print(f"round {r + 1} {name}: {GLOBAL_BATCH / step:.1f} examples/s ({step * 1000:.1f} ms/step)", flush=True)
    rate = {name: statistics.median(x["examples_per_s"] for x in rs) for name, rs in rounds.items()}
    base = rate["1 process, 2 threads"]
    lines = [f"# 1 vs 2 processes: training examples/s, demo model, global batch {GLOBAL_BATCH}", "",
             f"Steps {args.short} vs {args.long} (start-up and evals cancel out), {args.rounds} rounds, median.", "",
             "| setting | examples/s | ms/step | vs 1 process, 2 threads |", "|---|---:|---:|---:|"]
    for name in SETTINGS:
        lines.append(f"| {name} | {rate[name]:.1f} | {1000 * GLOBAL_BATCH / rate[name]:.1f} | {rate[name] / base:.2f}x |")
    report = "\n".join(lines) + "\n"
    print(report)
    if args.out:
        results = ROOT / "bench" / "results"
        (results / f"{args.out}.md").write_text(report)
        (results / f"{args.out}.json").write_text(json.dumps({"args": vars(args), "rounds": rounds, "median": rate},
                                                             indent=2))


if __name__ == "__main__":
    main()
