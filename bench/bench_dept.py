#!/usr/bin/env python
"""DePT vs vanilla prompt tuning at equal parameter count: training step time and peak memory.

    /work/venv/bin/python bench/bench_dept.py                 # ~10-15 min on 2 CPU cores
    /work/venv/bin/python bench/bench_dept.py --quick         # smoke run (small shapes)

The DePT paper (Shi & Lipani, ICLR 2024, https://arxiv.org/abs/2309.05173) claims >20% time and memory
savings against vanilla prompt tuning (PT). Here: PT with p = 100 against DePT with m = 60, r = 30,
s = 256 (both 76,800 parameters at d = 768; `softprompt budget --d 768 --s 256 --l 100`), every input
padded to s = 256 real tokens as in the paper's fixed-length setup, on
- a T5-base-shaped seq2seq model (d 768, 12+12 layers, 12 heads, d_ff 3072, vocab 32128; random weights,
  prompt on the encoder, 4 target tokens), and
- a decoder-only model of the same width (Llama-style, d 768, 12 layers, 12 heads, 3072, vocab 32000;
  the last 4 of the 256 tokens are targets), through both causal execution paths of SoftPromptModel
  (concatenation, and shared-prefix where the prompt runs once per step).

Time: median over alternating steps (PT, DePT, PT, DePT, ...) in one process, so machine load hits both
alike; a step is forward + backward + AdamW on the trainable tensors. Both wall time and process CPU time
(summed over threads; far less sensitive to other jobs on a shared machine) are reported. Memory and compute, each configuration
in a fresh subprocess: (a) bytes autograd saves for backward (activations; frozen weights excluded),
exact and deterministic; (b) peak RSS growth during two steps over the RSS after loading (allocator-level,
noisier); (c) matmul/attention FLOPs of one step (torch.utils.flop_counter), the noise-free cost. The paper's batch is 32; a 2-core CPU takes ~5-10 s per T5-base step at batch 4, so the
default is batch 4 (`--batch`), which leaves the per-token ratios unchanged.
"""

from __future__ import annotations

import argparse
import json
import platform
import resource
import statistics
import subprocess
import sys
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from softprompt.layers import DeptOffset, PromptEmbedding  # noqa: E402
from softprompt.model import SoftPromptModel  # noqa: E402

METHODS = {"pt": {"m": 100, "r": 0}, "dept": {"m": 60, "r": 30}}
TARGET = 4


def make_base(family: str, quick: bool):
    from transformers import LlamaConfig, LlamaForCausalLM, T5Config, T5ForConditionalGeneration

    torch.manual_seed(0)
    if family == "t5":
        size = dict(d_model=128, d_ff=256, num_layers=2, num_heads=4) if quick else \
            dict(d_model=768, d_ff=3072, num_layers=12, num_heads=12)
        cfg = T5Config(vocab_size=32128, d_kv=64 if not quick else 32, decoder_start_token_id=0, pad_token_id=0, **size)
        return T5ForConditionalGeneration(cfg), "seq2seq"
    size = dict(hidden_size=128, intermediate_size=256, num_hidden_layers=2, num_attention_heads=4) if quick else \
        dict(hidden_size=768, intermediate_size=3072, num_hidden_layers=12, num_attention_heads=12)
    cfg = LlamaConfig(vocab_size=32000, max_position_embeddings=512, pad_token_id=0, **size)
    return LlamaForCausalLM(cfg), "causal"


def make_model(base, kind: str, method: str, s: int, execution: str):
    d = base.get_input_embeddings().weight.shape[1]
    m, r = METHODS[method]["m"], METHODS[method]["r"]
    g = torch.Generator().manual_seed(0)
    prompt = torch.randn(m, d, generator=g) * 0.5  # (m, d)
    offset = DeptOffset(s, r, d, generator=g) if r else None
    if offset is not None:
        with torch.no_grad():
            offset.B.normal_(0, 0.01, generator=g)  # a trained-looking offset; the cost is the same at 0
    model = SoftPromptModel(base, PromptEmbedding(prompt, offset=offset), None, kind, execution=execution)
    groups = model.prompt.param_groups(0.3, 0.0, offset_lr=1e-4)  # the prompt, and A/B at their own rate
    opt = torch.optim.AdamW([{k: v for k, v in g.items() if k != "name"} for g in groups], eps=1e-6, weight_decay=0.0)
    return model.train(), opt


def make_batch(kind: str, batch: int, s: int, vocab: int):
    g = torch.Generator().manual_seed(1)
    ids = torch.randint(3, vocab, (batch, s), generator=g)  # (B, s): every row s real tokens
    mask = torch.ones_like(ids)
    if kind == "seq2seq":
        labels = torch.randint(3, vocab, (batch, TARGET), generator=g)  # (B, 4) decoder targets
    else:
        labels = torch.full_like(ids, -100)
        labels[:, -TARGET:] = ids[:, -TARGET:]  # the last 4 tokens are the target
    return {"input_ids": ids, "attention_mask": mask, "labels": labels}


def step(model, opt, batch) -> tuple[float, float]:
    """(wall seconds, process CPU seconds over all threads) of one training step."""
    wall, cpu = time.perf_counter(), time.process_time()
    out = model(**batch)
    out.loss.backward()
    opt.step()
    opt.zero_grad(set_to_none=True)
    return time.perf_counter() - wall, time.process_time() - cpu


def trainable(model) -> int:
    return model.trainable_parameters()


def time_pair(family: str, execution: str, args) -> dict:
    """Alternating PT / DePT steps on one base; median seconds per step of each."""
    base, kind = make_base(family, args.quick)
    batch = make_batch(kind, args.batch, args.s, base.config.vocab_size)
    models = {name: make_model(base, kind, name, args.s, execution) for name in METHODS}
    times = {name: [] for name in METHODS}
    for i in range(args.warmup + args.steps):
        order = list(METHODS) if i % 2 == 0 else list(reversed(METHODS))
        for name in order:
            t = step(*models[name], batch)
            if i >= args.warmup:
                times[name].append(t)
    return {name: {"median_s": statistics.median(w for w, _ in ts), "median_cpu_s": statistics.median(c for _, c in ts),
                   "steps_s": [round(w, 3) for w, _ in ts], "steps_cpu_s": [round(c, 3) for _, c in ts],
                   "trainable": trainable(models[name][0]), "mode": models[name][0].execution_mode()
                   if kind == "causal" else "encoder-concat"} for name, ts in times.items()}


def rss_bytes() -> int:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * resource.getpagesize()


def memory_one(family: str, method: str, execution: str, args) -> dict:
    """Runs in a fresh process: saved-activation bytes of one step and peak RSS growth over two steps."""
    base, kind = make_base(family, args.quick)
    batch = make_batch(kind, args.batch, args.s, base.config.vocab_size)
    model, opt = make_model(base, kind, method, args.s, execution)
    weights = {p.untyped_storage().data_ptr() for p in model.parameters()}
    seen: dict[int, int] = {}

    def pack(t):
        ptr = t.untyped_storage().data_ptr()
        if ptr not in weights:
            seen[ptr] = t.untyped_storage().nbytes()
        return t

    before = rss_bytes()
    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        out = model(**batch)
    out.loss.backward()
    opt.step()
    opt.zero_grad(set_to_none=True)
    step(model, opt, batch)
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024  # KiB on Linux
    from torch.utils.flop_counter import FlopCounterMode

    flops = FlopCounterMode(display=False)
    with flops:  # matmul / attention FLOPs of one step, forward + backward: the noise-free cost
        step(model, opt, batch)
    return {"saved_activation_bytes": sum(seen.values()), "peak_rss_growth_bytes": max(0, peak - before),
            "step_flops": flops.get_total_flops()}


def pct(a: float, b: float) -> float:
    return round(100.0 * (1 - b / a), 1)  # saving of b relative to a, in %


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--batch", type=int, default=4)
    ap.add_argument("--s", type=int, default=256)
    ap.add_argument("--steps", type=int, default=5)
    ap.add_argument("--warmup", type=int, default=1)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--out", type=Path, default=ROOT / "bench" / "results")
    ap.add_argument("--memory-one", nargs=3, metavar=("FAMILY", "METHOD", "EXECUTION"), help=argparse.SUPPRESS)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    if args.memory_one:
        print(json.dumps(memory_one(*args.memory_one, args)))
        return

    cases = [("t5", "concat"), ("llama", "concat"), ("llama", "shared_prefix")]
    results = []
    for family, execution in cases:
        print(f"timing {family} ({execution}) ...", flush=True)
        timing = time_pair(family, execution, args)
        memory = {}
        for method in METHODS:
            cmd = [sys.executable, __file__, "--memory-one", family, method, execution, "--batch", str(args.batch),
                   "--s", str(args.s), "--threads", str(args.threads)] + (["--quick"] if args.quick else [])
            memory[method] = json.loads(subprocess.run(cmd, check=True, capture_output=True, text=True).stdout.strip().splitlines()[-1])
        label = {"t5": "T5-base-shaped seq2seq", "llama": "Llama-style decoder, d=768, 12 layers"}[family]
        row = {"model": f"tiny {family} (--quick)" if args.quick else label,
               "execution": timing["pt"]["mode"], "pt": {**timing["pt"], **memory["pt"]},
               "dept": {**timing["dept"], **memory["dept"]}}
        row["time_saving_pct"] = pct(row["pt"]["median_s"], row["dept"]["median_s"])
        row["cpu_time_saving_pct"] = pct(row["pt"]["median_cpu_s"], row["dept"]["median_cpu_s"])
        row["flop_saving_pct"] = pct(row["pt"]["step_flops"], row["dept"]["step_flops"])
        row["activation_saving_pct"] = pct(row["pt"]["saved_activation_bytes"], row["dept"]["saved_activation_bytes"])
        row["peak_rss_saving_pct"] = pct(max(row["pt"]["peak_rss_growth_bytes"], 1), row["dept"]["peak_rss_growth_bytes"])
        results.append(row)
        print(json.dumps(row, indent=1), flush=True)

    command = "/work/venv/bin/python bench/bench_dept.py " + " ".join(sys.argv[1:])
    meta = {"command": command.strip(), "batch": args.batch, "s": args.s, "steps": args.steps, "warmup": args.warmup,
            "threads": args.threads, "quick": args.quick, "torch": torch.__version__, "cpu": platform.processor() or platform.machine(),
            "pt": "p=100", "dept": "m=60, r=30, s=256 (alpha 8)"}
    args.out.mkdir(parents=True, exist_ok=True)
    name = "dept-quick" if args.quick else "dept"
    (args.out / f"{name}.json").write_text(json.dumps({"meta": meta, "results": results}, indent=2))
    lines = [f"# DePT vs prompt tuning at 76,800 parameters (`{meta['command']}`)", "",
             f"CPU, {args.threads} threads, torch {torch.__version__}; batch {args.batch}, every row {args.s} real tokens; "
             f"median of {args.steps} alternating steps after {args.warmup} warmup. Saving = 1 - DePT / PT. "
             "Wall time suffers from other load on the machine; process CPU time (all threads) much less.", "",
             "| model | execution | PT step wall / CPU (s) | DePT step wall / CPU (s) | wall saving | CPU-time saving "
             "| PT / DePT TFLOP per step | FLOP saving "
             "| PT saved act. (MiB) | DePT saved act. (MiB) | act. saving | PT peak RSS growth (MiB) "
             "| DePT peak RSS growth (MiB) | RSS saving |",
             "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|"]
    mib = 2 ** 20
    for r in results:
        lines.append(f"| {r['model']} | {r['execution']} | {r['pt']['median_s']:.2f} / {r['pt']['median_cpu_s']:.2f} | "
                     f"{r['dept']['median_s']:.2f} / {r['dept']['median_cpu_s']:.2f} | "
                     f"{r['time_saving_pct']}% | {r['cpu_time_saving_pct']}% | "
                     f"{r['pt']['step_flops'] / 1e12:.3f} / {r['dept']['step_flops'] / 1e12:.3f} | {r['flop_saving_pct']}% | "
                     f"{r['pt']['saved_activation_bytes'] / mib:.0f} | "
                     f"{r['dept']['saved_activation_bytes'] / mib:.0f} | {r['activation_saving_pct']}% | "
                     f"{r['pt']['peak_rss_growth_bytes'] / mib:.0f} | {r['dept']['peak_rss_growth_bytes'] / mib:.0f} | "
                     f"{r['peak_rss_saving_pct']}% |")
    (args.out / f"{name}.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
