#!/usr/bin/env python
"""Where softprompt's training step spends its time beyond the floor (the same batch with no prompt).

    /work/venv/bin/python bench/profile_overhead.py                 # 100M, B 16, p 100, L 128, ~2 min
    /work/venv/bin/python bench/profile_overhead.py --config 10m

Profiled steps of each (after a warm-up; alternating, --steps rounds, per-step means), on the models and
batch of bench_peft.py; prints the operators whose self CPU time differs most between the two, so the
gap to the floor can be attributed (the prompt's own batch-1 pass, the tokens attending to p more keys,
the cache's concatenation). Profiles are noisy; read the large rows, and take timings from bench_peft.py.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import torch
from torch.profiler import ProfilerActivity, profile

sys.path.insert(0, str(Path(__file__).resolve().parent))
import bench_peft  # noqa: E402


def profile_rounds(steps: dict, rounds: int) -> dict[str, dict[str, float]]:
    """Per-step mean self CPU time (ms) of every operator, per method; methods alternate each round."""
    totals = {name: {} for name in steps}
    for step in steps.values():
        step()  # warm-up
    for _ in range(rounds):
        for name, step in steps.items():
            with profile(activities=[ProfilerActivity.CPU]) as prof:
                step()
            for e in prof.key_averages():
                totals[name][e.key] = totals[name].get(e.key, 0.0) + e.self_cpu_time_total / 1e3 / rounds
    return totals


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--config", default="100m", choices=sorted(bench_peft.CONFIGS))
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--rows", type=int, default=12)
    ap.add_argument("--steps", type=int, default=3, help="profiled rounds (each: one step of each)")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    h = bench_peft.HEADLINE
    base = bench_peft.build_base(args.config, torch.float32, "cpu")
    ids, mask, labels = bench_peft.make_batch(base.config.vocab_size, h["batch"], h["length"], "cpu")
    prompt = bench_peft.make_prompt(base, h["p"])
    steps = {m: bench_peft.build_step(m, base, prompt, ids, mask, labels)[0] for m in ("softprompt", "floor")}
    times = profile_rounds(steps, args.steps)
    sp, fl = times["softprompt"], times["floor"]
    total_sp, total_fl = sum(sp.values()), sum(fl.values())
    print(f"{args.config}, B {h['batch']}, p {h['p']}, L {h['length']}, {args.threads} threads, mean of {args.steps} "
          f"steps: softprompt {total_sp:,.0f} ms, floor {total_fl:,.0f} ms of self CPU time ({total_sp / total_fl:.2f}x)")
    print(f"{'operator':60s} {'softprompt ms':>14s} {'floor ms':>10s} {'extra ms':>10s}")
    rows = sorted(set(sp) | set(fl), key=lambda k: -abs(sp.get(k, 0) - fl.get(k, 0)))[:args.rows]
    for key in rows:
        print(f"{key[:60]:60s} {sp.get(key, 0):14,.1f} {fl.get(key, 0):10,.1f} {sp.get(key, 0) - fl.get(key, 0):10,.1f}")


if __name__ == "__main__":
    main()
