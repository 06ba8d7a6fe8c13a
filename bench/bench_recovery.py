#!/usr/bin/env python
"""Compress-then-Prompt on the project's own pretrained model (issue 13): compress the larger demo model to
4-bit + 50% sparse, recover it with a soft prompt (LM loss, distillation, mixed), and report perplexity
dense / compressed / compressed + prompt on held-out text, the transfer matrix, fact-recall accuracy, and
the prompt's training cost against LoRA on the same compressed model, side by side.

    python scripts/build_demo_large.py                      # once: ~/.cache/softprompt/demo-large
    SOFTPROMPT_COMPRESS_PYTHON=.venv-compress/bin/python python bench/bench_recovery.py --out recovery_demo_large

Stages (each cached under --work, so a rerun skips what exists):
1. compress `demo-large` (softprompt.compress): `8x` = SparseGPT 50% + GPTQ 4-bit per row (llmcompressor, the
   paper's joint setting); for the transfer matrix also `8x-24` (the same with 2:4 sparsity), `gptq4` (GPTQ
   only) and `magnitude50-nf4` (torch magnitude pruning 50%, then NF4 by bitsandbytes at load: the same 8x
   through other libraries).
2. train prompts on `8x` with `softprompt.train` (method recovery): `lm` (LM loss), `kd` (KL to the dense
   model only), `mixed` (half each); and `lm@nf4` on `magnitude50-nf4` (a prompt learned on another
   compression, for the transfer matrix). Same seed, steps, lr, batch, prompt length for all.
3. `softprompt.recovery_report.run` over bases x prompts x texts (held-out text; the pretraining text) and
   the fact-recall task: perplexity.md/.csv/.png and transfer.png into bench/results/recovery/.
4. cost, prompt vs LoRA (PEFT, r=8 on q_proj/v_proj, the usual recovery LoRA) on the `8x` base: trainable
   parameters, optimizer state, activation memory saved for backward (bytes the autograd graph holds, via
   saved-tensor hooks: exact, unlike CPU RSS), and step time measured by alternating one step of each for
   --cost-steps rounds (median; this machine is noisy, so only the ratio is reported as a claim); then LoRA
   trained for the same number of steps and lr as the prompts, for its held-out perplexity.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time
import warnings
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
RESULTS = ROOT / "bench" / "results"


def compress_all(work: Path, calibration_samples: int, seq_len: int, args) -> dict[str, str]:
    from softprompt.compress import CompressConfig, compress

    calib = {"calibration": str(work / "calibration.jsonl"), "num_samples": calibration_samples, "seq_len": seq_len}
    if not (work / "calibration.jsonl").exists():  # the pretraining text (the paper calibrates on C4 train)
        from softprompt.data.loading import local_path

        lines = (local_path(args.text) / "train.jsonl").read_text().splitlines()
        (work / "calibration.jsonl").write_text("\n".join(lines[:400]) + "\n")
    plan = {
        "8x": CompressConfig(method="sparsegpt+gptq", sparsity=0.5, bits=4, group_size=None, **calib),
        "8x-24": CompressConfig(method="sparsegpt+gptq", sparsity=0.5, structure="2:4", bits=4, group_size=None, **calib),
        "gptq4": CompressConfig(method="gptq", bits=4, group_size=None, **calib),
        "magnitude50": CompressConfig(method="magnitude", sparsity=0.5),
    }
    out = {}
    for name, cfg in plan.items():
        path = work / name
        if not path.exists():
            t = time.time()
            compress(args.model, path, cfg)
            print(f"compressed {name} in {time.time() - t:.0f}s", flush=True)
        out[name] = str(path)
    out["magnitude50-nf4"] = out.pop("magnitude50") + "@bnb-4bit"  # the checkpoint is the NF4 base's input only
    return out


def train_prompt(work: Path, name: str, base: str, args, **objective) -> Path:
    from softprompt import load_config, train

    run = work / "runs" / name
    if (run / "final").is_dir():
        return run / "final"
    path, _, quantization = base.partition("@")
    values = {
        "method": "recovery", "model.name_or_path": path, "model.quantization": quantization or "none",
        "data.path": args.text, "data.test_split": "null", "data.max_eval_samples": args.eval_rows or "null",
        "objective.block_size": args.block_size, "prompt.num_virtual_tokens": args.prompt_length,
        "optim.lr": args.lr, "optim.scheduler": "linear", "optim.warmup_steps": args.steps // 10,
        "train.max_steps": args.steps, "train.batch_size": args.batch_size, "train.eval_every": max(args.steps // 6, 1),
        "train.save_every": args.steps, "train.output_dir": str(work / "runs"), "train.run_name": name,
        "train.progress_bar": "false", "train.seed": args.seed,
        **{f"objective.{k}": v for k, v in objective.items()},
    }
    t = time.time()
    result = train(load_config(None, [f"{k}={v}" for k, v in values.items()]), overwrite=True)
    print(f"trained {name} in {time.time() - t:.0f}s: eval_ppl {result.before['eval_ppl']:.3f} -> "
          f"{result.best['eval_ppl']:.3f}", flush=True)
    return result.adapter_dir


def saved_bytes(step) -> int:
    """Bytes of the tensors autograd keeps for backward during `step()`'s forward (each storage counted once)."""
    seen, total = set(), [0]

    def pack(t):
        key = (t.untyped_storage().data_ptr(), t.untyped_storage().nbytes())
        if key not in seen:
            seen.add(key)
            total[0] += t.untyped_storage().nbytes()
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        step()
    return total[0]


def cost(base_path: str, args, work: Path) -> dict:
    """Prompt vs LoRA on the same compressed base and the same blocks: parameters, memory, step time, quality."""
    from peft import LoraConfig, get_peft_model

    from softprompt.build import build_model
    from softprompt.config import load_config
    from softprompt.data.loading import load_split
    from softprompt.loading import load_base
    from softprompt.objectives.recover import Recover, RecoverConfig, collate_blocks, perplexity, split_blocks

    cfg = load_config(None, ["method=recovery", f"model.name_or_path={base_path}",
                             f"prompt.num_virtual_tokens={args.prompt_length}", f"objective.block_size={args.block_size}"])
    base_p, tok, kind = load_base(cfg.model)
    torch.manual_seed(args.seed)
    prompt_model = build_model(cfg, base_p, tok, kind).train()
    base_l, _, _ = load_base(cfg.model)
    # peft 0.21 reads transformers' deprecated is_gradient_checkpointing (a FutureWarning per model): not ours
    warnings.filterwarnings("ignore", message=".*is_gradient_checkpointing", category=FutureWarning)
    lora = get_peft_model(base_l, LoraConfig(r=8, lora_alpha=16, target_modules=["q_proj", "v_proj"], lora_dropout=0.0))
    lora.train()
    train_blocks = split_blocks(load_split(args.text, "train"), "text", tok, args.block_size, "train")
    # the report's held-out cells: the test split's first eval_blocks blocks
    eval_blocks = split_blocks(load_split(args.text, "test"), "text", tok, args.block_size, "test")[:args.eval_blocks]
    objective = Recover(RecoverConfig(block_size=args.block_size))
    opts = {
        "prompt": torch.optim.AdamW([p for p in prompt_model.parameters() if p.requires_grad], lr=args.lr),
        "lora": torch.optim.AdamW([p for p in lora.parameters() if p.requires_grad], lr=args.lora_lr),
    }
    models = {"prompt": prompt_model, "lora": lora}
    g = torch.Generator().manual_seed(args.seed)

    def batch():
        idx = torch.randint(len(train_blocks), (args.batch_size,), generator=g).tolist()
        return collate_blocks([train_blocks[i] for i in idx])

    def step(name, b):
        if name == "prompt":
            loss = objective.loss(prompt_model, b) / objective.weight(b, "causal")
        else:
            loss = lora(input_ids=b["input_ids"], attention_mask=b["attention_mask"], labels=b["labels"]).loss
        loss.backward()
        torch.nn.utils.clip_grad_norm_([p for p in models[name].parameters() if p.requires_grad], 1.0)
        opts[name].step()
        opts[name].zero_grad(set_to_none=True)

    def forward_only(name, b):
        if name == "prompt":
            return objective.loss(prompt_model, b)
        return lora(input_ids=b["input_ids"], attention_mask=b["attention_mask"], labels=b["labels"]).loss

    out = {}
    probe = batch()
    for name, model in models.items():
        trainable = [p for p in model.parameters() if p.requires_grad]
        out[name] = {"trainable_parameters": sum(p.numel() for p in trainable),
                     "optimizer_state_bytes": 2 * sum(p.numel() * 4 for p in trainable),  # AdamW: two fp32 moments
                     "saved_activation_bytes": saved_bytes(lambda: forward_only(name, probe).backward())}
        models[name].zero_grad(set_to_none=True)
    times = {"prompt": [], "lora": []}
    for i in range(args.cost_steps):  # alternate, order rotating, so load hits both alike
        for name in (("prompt", "lora") if i % 2 == 0 else ("lora", "prompt")):
            b = batch()
            t = time.perf_counter()
            step(name, b)
            times[name].append(time.perf_counter() - t)
    for name in models:
        out[name]["step_s_median"] = statistics.median(times[name][1:])
    # quality after the prompts' number of steps (the cost rounds count toward it)
    for _ in range(max(args.steps - args.cost_steps, 0)):
        step("lora", batch())
    with torch.no_grad():
        lora.eval()
        out["lora"]["eval_ppl"] = perplexity(lambda ids, m: lora(input_ids=ids, attention_mask=m).logits, eval_blocks,
                                             8, "cpu")["ppl"]
    out["lora"]["steps"] = args.steps
    out["ratio_step_time_lora_over_prompt"] = out["lora"]["step_s_median"] / out["prompt"]["step_s_median"]
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--work", type=Path, default=Path("/tmp/bench_recovery"))
    ap.add_argument("--model", default="demo-large", help="the dense model (demo for a quick smoke run)")
    ap.add_argument("--text", default="demo-large-text", help="generic text: train/validation/test splits")
    ap.add_argument("--task", default="demo-large-task", help="source/target rows for task accuracy")
    ap.add_argument("--results", default="recovery", help="bench/results/<this>/ gets the report files")
    ap.add_argument("--out", default="recovery_demo_large", help="bench/results/<out>.json and .md")
    ap.add_argument("--steps", type=int, default=300)
    ap.add_argument("--lr", type=float, default=0.01)
    ap.add_argument("--lora-lr", type=float, default=1e-3)
    ap.add_argument("--batch-size", type=int, default=8)
    ap.add_argument("--block-size", type=int, default=128)
    ap.add_argument("--prompt-length", type=int, default=20)
    ap.add_argument("--eval-rows", type=int, default=0,
                    help="validation documents for training's eval (0: all; the committed results used all, since "
                         "recovery ignored the limit until efa5fa6)")
    ap.add_argument("--eval-blocks", type=int, default=200, help="blocks per text in the report")
    ap.add_argument("--task-rows", type=int, default=300)
    ap.add_argument("--calibration-samples", type=int, default=64)
    ap.add_argument("--cost-steps", type=int, default=20)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--skip-nf4-prompt", action="store_true", help="train no prompt on the magnitude+NF4 base")
    ap.add_argument("--skip-mixed", action="store_true", help="train no mixed LM + KD prompt")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    args.work.mkdir(parents=True, exist_ok=True)
    started = time.time()

    from softprompt import recovery_report as report

    bases = compress_all(args.work, args.calibration_samples, args.block_size, args)
    prompts = {
        "lm": train_prompt(args.work, "lm", bases["8x"], args),
        "kd": train_prompt(args.work, "kd", bases["8x"], args, kd_weight=1.0, teacher=args.model),
    }
    if not args.skip_mixed:
        prompts["mixed"] = train_prompt(args.work, "mixed", bases["8x"], args, kd_weight=0.5, teacher=args.model)
    if not args.skip_nf4_prompt:  # a prompt learned on another compression, for the transfer matrix
        prompts["lm@nf4"] = train_prompt(args.work, "lm-nf4", bases["magnitude50-nf4"], args)
    report_bases = {"dense": args.model, **bases}
    t = time.time()
    cells = report.run(report_bases, {k: str(v) for k, v in prompts.items()}, {"held-out": args.text}, split="test",
                       block_size=args.block_size, max_blocks=args.eval_blocks, task=args.task,
                       max_task_rows=args.task_rows, reference="dense")
    # "pretraining" reads the train split: the text the dense model was pretrained on and the prompts trained on
    train_cells = report.run(report_bases, {k: str(v) for k, v in prompts.items()}, {"pretraining": args.text},
                             split="train", block_size=args.block_size, max_blocks=args.eval_blocks, reference="dense")
    cells += train_cells
    report_s = time.time() - t
    protocol = (f"Protocol: each text's blocks of {args.block_size} tokens (first {args.eval_blocks}); tokens 2..{args.block_size} "
                "of every block scored, the prompt prepended per block, identical tokens in every cell. held-out: "
                "demo-large-text test split (generated fresh, never trained on); pretraining: its train split (the "
                "text the dense model and the prompts trained on). Task: fact recall with markers (demo-large-task "
                f"test, first {args.task_rows} rows), exact match of greedy continuations.")
    report.write(cells, RESULTS / args.results, protocol)
    costs = cost(bases["8x"], args, args.work)
    result = {"args": {k: str(v) for k, v in vars(args).items()}, "cells": [c.__dict__ for c in cells],
              "cost": costs, "report_seconds": report_s, "total_seconds": time.time() - started,
              "training": {k: json.loads((Path(v) / "softprompt.json").read_text()).get("metrics") for k, v in prompts.items()},
              "compression": {k: json.loads((Path(v.partition("@")[0]) / "compression.json").read_text())["measured"]
                              for k, v in bases.items()}}
    (RESULTS / f"{args.out}.json").write_text(json.dumps(result, indent=1, default=str))
    (RESULTS / f"{args.out}.md").write_text(render(result, protocol))
    print(render(result, protocol))


def render(result: dict, protocol: str) -> str:
    from softprompt.recovery_report import Cell, markdown

    cells = [Cell(**c) for c in result["cells"]]
    c = result["cost"]
    lines = [markdown(cells, protocol), "", "## Compression (measured on the saved checkpoints)", "",
             "| base | sparsity | max values per group | layers |", "|---|---:|---:|---:|"]
    for name, m in result["compression"].items():
        lines.append(f"| {name} | {m['sparsity']:.3f} | {m['max_levels_per_group']} | {m['layers']} |")
    lines += ["", "## Training cost on the 8x base: prompt vs LoRA (same blocks, batch, steps)", "",
              "| | trainable params | optimizer state | activations saved for backward | step time (median) | held-out ppl |",
              "|---|---:|---:|---:|---:|---:|"]
    prompt_ppl = next(x.ppl for x in cells if x.text == "held-out" and x.base == "8x" and x.prompt == "lm")
    for name in ("prompt", "lora"):
        m = c[name]
        ppl = prompt_ppl if name == "prompt" else m["eval_ppl"]
        lines.append(f"| {name} | {m['trainable_parameters']:,} | {m['optimizer_state_bytes'] / 2**20:.2f} MiB | "
                     f"{m['saved_activation_bytes'] / 2**20:.1f} MiB | {m['step_s_median'] * 1000:.0f} ms | {ppl:.3f} |")
    lines += ["", f"LoRA / prompt step time: {c['ratio_step_time_lora_over_prompt']:.2f}x (alternating steps, one process). "
              "Held-out perplexity: the same test blocks for both (the prompt's is the `lm` cell on `8x` above).",
              "", f"Total wall time: {result['total_seconds'] / 60:.1f} min."]
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    main()
