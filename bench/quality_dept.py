#!/usr/bin/env python
"""Small-scale quality check of DePT on the embedded demo task (softprompt/data/demo).

    /work/venv/bin/python bench/quality_dept.py                                    # ~2 min on 2 CPU cores
    /work/venv/bin/python bench/quality_dept.py --seeds 0 1 2 3 4 --steps 50 --tag 50steps  # short budget

Question (research/methods.md §2.7): at a matched parameter budget, does DePT (a short m-token prompt
plus a rank-r offset) reach at least the accuracy of prompt tuning with the same short prompt m? The
budget is the default demo prompt, l = 20 tokens x d = 128 = 2,560 parameters; DePT uses m = 10,
r = 8, s = 16 (2,432 parameters; `softprompt budget --d 128 --s 16 --l 20`). Runs:
- PT(m=10): prompt tuning with the short prompt alone (1,280 parameters);
- DePT(m=10, r=8) at each A/B learning rate in --offset-lrs (the paper sweeps this LR);
- PT(l=20): the full budget as a prompt (the paper's comparison at equal parameters).
Everything else is the demo default (AdamW, prompt LR 3e-2, constant schedule, batch 16, vocab init),
the same for every run and seed; the adapter kept is the best by validation exact-match accuracy, and
the number reported is its test accuracy (150 held-out nouns, greedy generation).
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from softprompt import load_config, train  # noqa: E402


def run(name: str, extra: dict, seed: int, steps: int, out: Path) -> dict:
    values = {"train.output_dir": str(out), "train.run_name": f"{name}-s{seed}", "train.seed": seed,
              "train.max_steps": steps, "train.eval_every": max(steps // 4, 1), "train.save_every": steps,
              "train.metric": "eval_accuracy", "train.greater_is_better": "true", "train.trackers": "[]",
              "train.progress_bar": "false", "data.max_length": 16, "data.max_target_length": 8, **extra}
    start = time.perf_counter()
    result = train(load_config(None, [f"{k}={v}" for k, v in values.items()]))
    return {"name": name, "seed": seed, "trainable": result.trainable_parameters,
            "before": result.before.get("eval_accuracy"), "eval_accuracy": result.best.get("eval_accuracy"),
            "test_accuracy": result.test.get("test_accuracy"), "seconds": round(time.perf_counter() - start, 1)}


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    ap.add_argument("--steps", type=int, default=200)
    ap.add_argument("--m", type=int, default=10)
    ap.add_argument("--l", type=int, default=20)
    ap.add_argument("--rank", type=int, default=8)
    ap.add_argument("--s", type=int, default=16)
    ap.add_argument("--offset-lrs", type=float, nargs="+", default=[1e-3, 3e-3, 1e-2])
    ap.add_argument("--out", type=Path, default=ROOT / "bench" / "results")
    ap.add_argument("--tag", default="", help="suffix of the result files: dept_quality_<tag>.{json,md}")
    args = ap.parse_args()

    configs = {f"PT(m={args.m})": {"prompt.num_virtual_tokens": args.m}}
    for lr in args.offset_lrs:
        configs[f"DePT(m={args.m}, r={args.rank}, A/B lr {lr:g})"] = {
            "prompt.num_virtual_tokens": args.m, "method.name": "dept", "method.rank": args.rank,
            "method.max_length": args.s, "method.offset_lr": lr}
    configs[f"PT(l={args.l})"] = {"prompt.num_virtual_tokens": args.l}

    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for seed in args.seeds:
            for name, extra in configs.items():
                rows.append(run(name, extra, seed, args.steps, Path(tmp)))
                print(json.dumps(rows[-1]), flush=True)

    summary = []
    for name in configs:
        mine = [r for r in rows if r["name"] == name]
        tests = [r["test_accuracy"] for r in mine]
        summary.append({"name": name, "trainable": mine[0]["trainable"], "test_mean": statistics.mean(tests),
                        "test_min": min(tests), "test_max": max(tests), "tests": tests,
                        "eval_mean": statistics.mean(r["eval_accuracy"] for r in mine)})
    command = "/work/venv/bin/python bench/quality_dept.py " + " ".join(sys.argv[1:])
    args.out.mkdir(parents=True, exist_ok=True)
    stem = f"dept_quality_{args.tag}" if args.tag else "dept_quality"
    (args.out / f"{stem}.json").write_text(json.dumps(
        {"command": command.strip(), "steps": args.steps, "seeds": args.seeds, "summary": summary, "runs": rows}, indent=2))
    lines = [f"# DePT vs prompt tuning on the embedded demo task (`{command.strip()}`)", "",
             f"Demo causal LM (d=128), {args.steps} steps, seeds {args.seeds}; test exact-match accuracy of the adapter "
             "with the best validation accuracy. Budget l*d = "
             f"{args.l * 128:,}; DePT m={args.m}, r={args.rank}, s={args.s}.", "",
             "| run | trainable params | test acc. mean | min..max | per seed | val acc. mean |", "|---|---|---|---|---|---|"]
    for s in summary:
        lines.append(f"| {s['name']} | {s['trainable']:,} | {s['test_mean']:.1%} | {s['test_min']:.1%}..{s['test_max']:.1%} | "
                     f"{', '.join(f'{t:.1%}' for t in s['tests'])} | {s['eval_mean']:.1%} |")
    (args.out / f"{stem}.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
