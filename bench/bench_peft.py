#!/usr/bin/env python
"""softprompt against PEFT's prompt tuning and PEFT's LoRA, and all against the floor: training step time,
throughput, peak memory, loss.

    python bench/bench_peft.py                    # CPU: 10M sweep + 100M, ~20 min on 2 cores
    python bench/bench_peft.py --configs 10m --steps 3   # a quicker look
    python bench/bench_peft.py --configs 100m,10m --headline-only --threads 1 --name peft_lora
    python bench/bench_peft.py --configs 1b                      # GPU (bf16), where one is available

Four ways to adapt the same frozen Llama-style model on the same batch (B rows of L real tokens, every
token after the first is a target); the first two train the same prompt (p x d):
- softprompt: `SoftPromptModel` with its defaults (shared-prefix execution: the prompt runs once per step,
  its keys/values broadcast to the batch; fused embedding kernel where Triton and CUDA are present);
- peft: `get_peft_model(base, PromptTuningConfig(CAUSAL_LM, num_virtual_tokens=p))`, the prompt copied in,
  so both start from the same tensor and take the same AdamW steps;
- peft_lora: `get_peft_model(base, LoraConfig(r=16, lora_alpha=32, lora_dropout=0, target_modules=the
  attention projections q/k/v/o, CAUSAL_LM))`, AdamW on the LoRA weights: the usual non-prompt
  adapter, as a second anchor. It sees only the L real tokens (no prompt); B is zero-initialised, so its
  first loss is the floor's;
- floor: the physical limit of any prompt method: the same batch through the frozen model with no prompt,
  forward + backward to the input embeddings (what a prompt of length 0 would cost).
The loss of the first step (same prompt) must agree between softprompt and PEFT; the table shows it.

Time: one process, steps alternate (softprompt, peft, peft_lora, floor, rotating the order every round)
so machine load hits all of them alike; median over `--steps` rounds after one warm-up step each. A step is
forward + backward + AdamW on the trainable tensors (the floor has no optimizer). Throughput = real tokens (B x L)
per second.

Memory, each (config, method) in a fresh subprocess (PyTorch's CPU allocator has no peak counter, and
an allocator that already served another method's step would hide part of this one's):
- peak growth: the RSS high-water mark (`VmHWM`, reset to the current RSS through
  `/proc/self/clear_refs` right before the steps) over two steps, minus the RSS right before them (model,
  optimizer and imports already resident): what a step adds at its peak (activations, logits, gradients,
  allocator slack). Not `ru_maxrss`: Linux carries a parent's RSS at fork into the child's ru_maxrss
  across exec. On CUDA: `torch.cuda.max_memory_allocated` over a step minus the bytes allocated before it.
- saved for backward: bytes of the distinct storages autograd keeps between forward and backward
  (saved-tensor hooks; the frozen weights excluded). Exact and repeatable: the activation part of the
  peak without allocator noise.
"""

from __future__ import annotations

import argparse
import copy
import json
import os
import platform
import statistics
import subprocess
import sys
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from softprompt.layers import PromptEmbedding  # noqa: E402
from softprompt.model import SoftPromptModel  # noqa: E402

METHODS = ("softprompt", "peft", "peft_lora", "floor")
LORA = dict(r=16, lora_alpha=32, lora_dropout=0.0, target_modules=["q_proj", "k_proj", "v_proj", "o_proj"])
CONFIGS = {  # Llama-style, random weights (research/env_probe.md §1 sizes)
    "10m": dict(vocab_size=8192, hidden_size=256, num_hidden_layers=6, intermediate_size=768, num_attention_heads=4),
    "100m": dict(vocab_size=8192, hidden_size=768, num_hidden_layers=12, intermediate_size=2048, num_attention_heads=12),
    "1b": dict(vocab_size=128256, hidden_size=2048, num_hidden_layers=16, intermediate_size=8192, num_attention_heads=32,
               num_key_value_heads=8),  # Llama-3.2-1B shapes
}
HEADLINE = dict(batch=16, p=100, length=128)
SWEEPS = {  # (batch, p) around the headline; L = 128 throughout
    "10m": [(16, 100), (4, 100), (32, 100), (16, 20), (16, 200)],
    "100m": [(16, 100), (4, 100)],
    "1b": [(16, 100), (4, 100), (16, 20)],
}
LR = 1e-3


# ---------------------------------------------------------------------------------------------------
# Building the steps


def build_base(config: str, dtype: torch.dtype, device: str):
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(0)
    cfg = LlamaConfig(max_position_embeddings=1024, pad_token_id=0, bos_token_id=1, eos_token_id=2,
                      attn_implementation="sdpa", **CONFIGS[config])
    base = LlamaForCausalLM(cfg).to(device=device, dtype=dtype).eval()  # eval: no dropout, as PEFT's default
    base.requires_grad_(False)
    return base


def make_batch(vocab: int, batch: int, length: int, device: str):
    g = torch.Generator().manual_seed(1)
    ids = torch.randint(3, vocab, (batch, length), generator=g).to(device)
    mask = torch.ones_like(ids)
    labels = ids.clone()
    labels[:, 0] = -100  # the first token is a target in neither: PEFT would score it from the prompt
    return ids, mask, labels


def make_prompt(base, p: int) -> torch.Tensor:
    g = torch.Generator().manual_seed(2)
    table = base.get_input_embeddings().weight
    rows = torch.randint(3, table.shape[0], (p,), generator=g).to(table.device)
    return table[rows].detach().float().clone()  # (p, d), sampled vocabulary rows


class FastPathOff(RuntimeError):
    """softprompt did not take its shared-prefix path: the comparison would not measure it."""


def build_step(method: str, base, prompt: torch.Tensor, ids, mask, labels):
    """A closure running one training step (returns the loss as a float), the execution path, and the
    number of trainable parameters."""
    if method == "softprompt":
        model = SoftPromptModel(base, PromptEmbedding(prompt.clone()))
        mode = model.execution_mode()
        if mode != "shared_prefix":
            raise FastPathOff(f"softprompt's execution_mode() is {mode!r}, not 'shared_prefix' (see the log for "
                              "the blocker); refusing to benchmark the concatenation path")
        opt = torch.optim.AdamW(list(model.prompt.parameters()), lr=LR)

        def step():
            out = model(ids, mask, labels=labels, right_padded=True)  # as the training loop calls it
            out.loss.backward()
            opt.step()
            opt.zero_grad(set_to_none=True)
            return out.loss.item()

        step.execution_mode = model.execution_mode  # asked again after the timed steps
        return step, mode, model.trainable_parameters()
    if method == "peft":
        from peft import PromptTuningConfig, TaskType, get_peft_model

        model = get_peft_model(base, PromptTuningConfig(task_type=TaskType.CAUSAL_LM, num_virtual_tokens=prompt.shape[0]))
        encoder = model.prompt_encoder["default"]
        with torch.no_grad():
            encoder.embedding.weight.copy_(prompt.to(encoder.embedding.weight.dtype))
        params = [p for p in encoder.parameters() if p.requires_grad]
        opt = torch.optim.AdamW(params, lr=LR)

        def step():
            out = model(input_ids=ids, attention_mask=mask, labels=labels)
            out.loss.backward()
            opt.step()
            opt.zero_grad(set_to_none=True)
            return out.loss.item()

        return step, "concat (PEFT)", sum(p.numel() for p in params)
    if method == "peft_lora":
        from peft import LoraConfig, TaskType, get_peft_model

        model = get_peft_model(base, LoraConfig(task_type=TaskType.CAUSAL_LM, **LORA))
        params = [p for p in model.parameters() if p.requires_grad]
        opt = torch.optim.AdamW(params, lr=LR)

        def step():  # L real tokens only: LoRA has no prompt
            out = model(input_ids=ids, attention_mask=mask, labels=labels)
            out.loss.backward()
            opt.step()
            opt.zero_grad(set_to_none=True)
            return out.loss.item()

        return step, f"LoRA r{LORA['r']} on {'/'.join(LORA['target_modules'])}", sum(p.numel() for p in params)
    table = base.get_input_embeddings()

    def step():  # the floor: no prompt at all, gradient to the inputs
        embeds = table(ids).detach().requires_grad_(True)
        out = base(inputs_embeds=embeds, attention_mask=mask, labels=labels, use_cache=False)
        out.loss.backward()
        return out.loss.item()

    return step, "no prompt", 0


def sync(device: str) -> None:
    if device == "cuda":
        torch.cuda.synchronize()


# ---------------------------------------------------------------------------------------------------
# Timing (one process, alternating) and memory (fresh subprocess per method)


def time_point(config, dtype, device, batch, p, length, steps):
    base = build_base(config, dtype, device)
    ids, mask, labels = make_batch(base.config.vocab_size, batch, length, device)
    prompt = make_prompt(base, p)
    runs = {}
    for method in METHODS:
        # own copy of the base: PEFT wraps (LoRA: rewrites) the module it is given
        own = copy.deepcopy(base) if method.startswith("peft") else base
        step, path, trainable = build_step(method, own, prompt, ids, mask, labels)
        runs[method] = {"step": step, "path": path, "trainable": trainable, "times": [], "losses": []}
    for method in METHODS:  # warm-up; this is also the first (same-prompt) loss
        runs[method]["losses"].append(runs[method]["step"]())
    for i in range(steps):
        order = METHODS[i % len(METHODS):] + METHODS[:i % len(METHODS)]
        for method in order:
            sync(device)
            start = time.perf_counter()
            loss = runs[method]["step"]()
            sync(device)
            runs[method]["times"].append(time.perf_counter() - start)
            runs[method]["losses"].append(loss)
    after = runs["softprompt"]["step"].execution_mode()
    if after != "shared_prefix":
        raise FastPathOff(f"softprompt's execution_mode() turned {after!r} during the timed steps")
    tokens = batch * length
    result = {}
    for method, r in runs.items():
        median = statistics.median(r["times"])
        result[method] = {"path": r["path"], "trainable_params": r["trainable"], "step_s": median,
                          "step_s_all": r["times"], "tokens_per_s": tokens / median,
                          "loss_first": r["losses"][0], "loss_last": r["losses"][-1]}
    return result


def measure_memory(config, dtype_name, device, batch, p, length, method) -> dict:
    """Run `--_memory` in a fresh interpreter and read its JSON line."""
    cmd = [sys.executable, str(Path(__file__).resolve()), "--_memory", method, "--configs", config, "--dtype", dtype_name,
           "--device", device, "--_point", f"{batch},{p},{length}", "--threads", str(torch.get_num_threads())]
    out = subprocess.run(cmd, capture_output=True, text=True, env={**os.environ, "TOKENIZERS_PARALLELISM": "false"})
    if out.returncode != 0:
        raise RuntimeError(f"memory child for {method} failed:\n{out.stderr[-4000:]}")
    return json.loads(out.stdout.strip().splitlines()[-1])


def rss_bytes() -> int:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


def peak_rss_bytes() -> int:
    """This process's RSS high-water mark (VmHWM). Not `ru_maxrss`: Linux carries the parent's RSS at
    fork into a child's ru_maxrss across exec, so a big benchmark parent would inflate every child."""
    with open("/proc/self/status") as f:
        line = next(ln for ln in f if ln.startswith("VmHWM:"))
    return int(line.split()[1]) * 1024  # kB


def reset_peak_rss() -> bool:
    """Reset VmHWM to the current RSS (Linux >= 4.0: write 5 to clear_refs); False where not allowed."""
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
        return True
    except OSError:
        return False


def memory_child_cpu(config, dtype, batch, p, length, method) -> dict:
    """CPU peak: the RSS high-water mark over two steps, reset right before them, minus the RSS then."""
    base = build_base(config, dtype, "cpu")
    ids, mask, labels = make_batch(base.config.vocab_size, batch, length, "cpu")
    step, path, _ = build_step(method, base, make_prompt(base, p), ids, mask, labels)
    reset = reset_peak_rss()
    before = rss_bytes()
    step()
    step()
    peak = peak_rss_bytes()
    return {"peak_bytes": peak - before, "rss_before_bytes": before, "saved_bytes": saved_bytes_of(step, base),
            "path": path, "kind": "VmHWM growth over the RSS before the first step" + ("" if reset else " (HWM not resettable: "
                                                                          "includes model loading)")}


def saved_bytes_of(step, base) -> int:
    # frozen weights only: LoRA's trainable matrices live inside `base` once PEFT has injected them
    frozen = {t.untyped_storage().data_ptr() for t in base.parameters() if not t.requires_grad}
    saved: dict[int, int] = {}

    def pack(t):
        storage = t.untyped_storage()
        if storage.data_ptr() not in frozen:
            saved[storage.data_ptr()] = storage.nbytes()
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        step()
    return sum(saved.values())


def memory_child_cuda(config, dtype, batch, p, length, method) -> dict:
    base = build_base(config, dtype, "cuda")
    ids, mask, labels = make_batch(base.config.vocab_size, batch, length, "cuda")
    step, path, _ = build_step(method, base, make_prompt(base, p), ids, mask, labels)
    step()  # optimizer state exists from here on
    torch.cuda.synchronize()
    torch.cuda.reset_peak_memory_stats()
    before = torch.cuda.memory_allocated()
    step()
    torch.cuda.synchronize()
    return {"peak_bytes": torch.cuda.max_memory_allocated() - before, "saved_bytes": saved_bytes_of(step, base),
            "path": path, "kind": "torch.cuda.max_memory_allocated growth over the allocated bytes before a step"}


# ---------------------------------------------------------------------------------------------------
# Report


def mib(n):
    return "-" if n is None else f"{n / 2**20:,.0f}"


def markdown(results: dict, command: str) -> str:
    if results["points"] and "peft_lora" in results["points"][0]["time"]:
        return markdown_lora(results, command)
    env = results["environment"]
    lines = [
        "# softprompt vs PEFT prompt tuning vs the floor",
        "",
        f"Command: `{command}`",
        "",
        f"{env['date']}; torch {env['torch']}, transformers {env['transformers']}, peft {env['peft']}; "
        f"{env['device']}, {env['threads']} torch thread(s); 1-minute load average {env['load_before']:.1f} before, "
        f"{env['load_after']:.1f} after (other jobs shared the machine; timings are medians of alternating steps).",
        "",
        "Step = forward + backward + AdamW on the prompt (floor: forward + backward to the input embeddings, no "
        "prompt). Throughput = real tokens (B x L) per second. Peak = memory one step adds at its peak "
        "(CPU: VmHWM growth in a fresh process; CUDA: max_memory_allocated growth). Saved = bytes autograd "
        "keeps for backward, frozen weights excluded. Loss = first step, same prompt in both.",
        "",
        "| config | dtype | B | p | L | softprompt s/step | PEFT s/step | floor s/step | tok/s softprompt | tok/s PEFT "
        "| speedup vs PEFT | ceiling: PEFT / floor | softprompt / floor | peak MiB sp / PEFT / floor "
        "| saved MiB sp / PEFT / floor | loss sp / PEFT |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for point in results["points"]:
        t = point["time"]
        sp, pf, fl = t["softprompt"], t["peft"], t["floor"]
        peak, saved = memory_cells(point, ("softprompt", "peft", "floor"))
        lines.append(
            f"| {point['config']} | {point['dtype']} | {point['batch']} | {point['p']} | {point['length']} "
            f"| {sp['step_s']:.3f} | {pf['step_s']:.3f} | {fl['step_s']:.3f} | {sp['tokens_per_s']:,.0f} "
            f"| {pf['tokens_per_s']:,.0f} | {pf['step_s'] / sp['step_s']:.2f}x | {pf['step_s'] / fl['step_s']:.2f}x "
            f"| {sp['step_s'] / fl['step_s']:.2f}x "
            f"| {peak} | {saved} | {sp['loss_first']:.6f} / {pf['loss_first']:.6f} |")
    lines += ["", "The ceiling column is the largest speedup over PEFT that any prompt method can reach on that point: "
              "the floor is a prompt of length 0. Work per step is B(p+L) token passes for PEFT, p + BL for "
              "softprompt (the prompt once, at batch 1) and BL for the floor; the tokens still attend to the p "
              "prompt keys, which the floor does not."]
    targets = results.get("targets")
    if targets:
        lines += ["", "Targets on the headline point of the 100M CPU config (B 16, p 100, L 128):", ""]
        for name, (value, goal, ok) in targets.items():
            lines.append(f"- {name}: {value} (target {goal}): {'met' if ok else 'NOT met'}")
    return "\n".join(lines) + "\n"


def memory_cells(point: dict, methods) -> tuple[str, str]:
    """The peak and saved-activation MiB of `methods` at one point, each as "a / b / ..."."""
    m = point.get("memory", {})
    return tuple(" / ".join(mib(m.get(k, {}).get(key)) for k in methods) for key in ("peak_bytes", "saved_bytes"))


def markdown_lora(results: dict, command: str) -> str:
    """The table with PEFT LoRA as the second anchor (results that have a peft_lora column)."""
    env = results["environment"]
    lora = results.get("lora", LORA)
    lines = [
        "# softprompt vs PEFT prompt tuning vs PEFT LoRA vs the floor",
        "",
        f"Command: `{command}`",
        "",
        f"{env['date']}; torch {env['torch']}, transformers {env['transformers']}, peft {env['peft']}, accelerate "
        f"{env.get('accelerate', '-')}, Python {env['python']}; {env['device']}, {env['threads']} torch thread(s); "
        f"1-minute load average {env['load_before']:.1f} before, {env['load_after']:.1f} after (other jobs shared the "
        "machine; timings are medians of alternating steps).",
        "",
        f"softprompt execution mode (`model.execution_mode()`): **{env.get('softprompt_execution_mode', '-')}** "
        "at every point, in the timing process and in each memory process.",
        "",
        f"PEFT LoRA: r {lora['r']}, alpha {lora['lora_alpha']}, dropout {lora['lora_dropout']}, on "
        f"{', '.join(lora['target_modules'])}; it sees the L real tokens only (no prompt). Step = forward + backward "
        "+ AdamW on the trainable tensors (floor: forward + backward to the input embeddings, no adapter, no "
        "optimizer). Throughput = real tokens (B x L) per second. Peak = memory one step adds at its peak (CPU: "
        "VmHWM growth in a fresh process; CUDA: max_memory_allocated growth). Saved = bytes autograd keeps for "
        "backward, frozen weights excluded. Loss = first step: softprompt and PEFT-PT start from the same prompt, "
        "LoRA (B = 0) from the bare model like the floor.",
        "",
        "| config | dtype | B | p | L | softprompt s/step | PEFT-PT s/step | PEFT LoRA s/step | floor s/step "
        "| tok/s sp / PEFT-PT / LoRA / floor | speedup sp vs PEFT-PT | sp vs LoRA (LoRA step / sp step) "
        "| PEFT-PT vs LoRA (PT step / LoRA step) | sp / floor | LoRA / floor | trainable params sp / LoRA "
        "| peak MiB sp / PEFT-PT / LoRA / floor | saved MiB sp / PEFT-PT / LoRA / floor "
        "| loss sp / PEFT-PT; LoRA / floor |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for point in results["points"]:
        t = point["time"]
        sp, pf, lo, fl = (t[k] for k in METHODS)
        tok = " / ".join(f"{t[k]['tokens_per_s']:,.0f}" for k in METHODS)
        peak, saved = memory_cells(point, METHODS)
        pt_lora = pf["step_s"] / lo["step_s"]
        lines.append(
            f"| {point['config']} | {point['dtype']} | {point['batch']} | {point['p']} | {point['length']} "
            f"| {sp['step_s']:.3f} | {pf['step_s']:.3f} | {lo['step_s']:.3f} | {fl['step_s']:.3f} | {tok} "
            f"| {pf['step_s'] / sp['step_s']:.2f}x | {lo['step_s'] / sp['step_s']:.2f} "
            f"| {pt_lora:.2f}x ({(pt_lora - 1) * 100:+.0f}% time) "
            f"| {sp['step_s'] / fl['step_s']:.2f}x | {lo['step_s'] / fl['step_s']:.2f}x "
            f"| {sp['trainable_params']:,} / {lo['trainable_params']:,} | {peak} | {saved} "
            f"| {sp['loss_first']:.6f} / {pf['loss_first']:.6f}; {lo['loss_first']:.6f} / {fl['loss_first']:.6f} |")
    lines += ["", "sp vs LoRA >= 1.00 means softprompt's step is at least as fast as LoRA's (same B x L real "
              "tokens, so the same throughput or better). PEFT-PT vs LoRA is the figure to set next to PEFT's own "
              "method-comparison benchmark (prompt tuning 38% slower than LoRA on Llama-3.2-3B, L40S, as quoted in "
              "the issue); here it is the ratio of median step times on this model and batch. Work per step is "
              "B(p+L) token passes for PEFT-PT, p + BL for softprompt (the prompt once, at batch 1), BL for LoRA "
              "and the floor; softprompt's tokens also attend to the p prompt keys, and LoRA adds its rank-r "
              "products on four projections per layer plus AdamW on its weights."]
    return "\n".join(lines) + "\n"


def check_targets(points) -> dict:
    head = next((pt for pt in points if pt["config"] == "100m" and (pt["batch"], pt["p"], pt["length"]) ==
                 (HEADLINE["batch"], HEADLINE["p"], HEADLINE["length"])), None)
    if head is None:
        return {}
    t, m = head["time"], head.get("memory", {})
    speedup = t["peft"]["step_s"] / t["softprompt"]["step_s"]
    floor = t["softprompt"]["step_s"] / t["floor"]["step_s"]
    out = {"throughput vs PEFT": (f"{speedup:.2f}x", ">= 2.4x", speedup >= 2.4),
           "step time vs floor": (f"{floor:.2f}x", "<= 1.10x", floor <= 1.10)}
    if m:
        sp, pf = m["softprompt"]["peak_bytes"], m["peft"]["peak_bytes"]
        out["peak memory vs PEFT"] = (f"{mib(sp)} vs {mib(pf)} MiB", "below PEFT's", sp < pf)
    return out


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--configs", default=None, help="comma list of 10m,100m,1b (default: 10m,100m on CPU, 1b on GPU)")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--dtype", default=None, help="float32 | bfloat16 (default: float32 on CPU, bfloat16 on GPU)")
    parser.add_argument("--steps", type=int, default=5, help="timed rounds per point (after one warm-up)")
    parser.add_argument("--threads", type=int, default=os.cpu_count() or 1,
                        help="torch CPU threads (1 keeps timings sane on a machine other jobs oversubscribe)")
    parser.add_argument("--headline-only", action="store_true", help="skip the batch / prompt-length sweep")
    parser.add_argument("--no-memory", action="store_true")
    parser.add_argument("--out", default=str(ROOT / "bench" / "results"))
    parser.add_argument("--name", default=None,
                        help="write <out>/<name>.md and <out>/<name>.json (default: peft.md and peft_<configs>.json)")
    parser.add_argument("--render", default=None, help="rewrite the table (peft.md or <name>.md) from a results JSON, "
                        "measuring nothing")
    parser.add_argument("--_memory", default=None, help=argparse.SUPPRESS)
    parser.add_argument("--_point", default=None, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    dtype_name = args.dtype or ("bfloat16" if args.device == "cuda" else "float32")
    dtype = {"float32": torch.float32, "bfloat16": torch.bfloat16}[dtype_name]
    configs = (args.configs or ("1b" if args.device == "cuda" else "10m,100m")).split(",")

    if args.render:  # the table again from a results file (no measurement)
        results = json.loads(Path(args.render).read_text())
        (Path(args.out) / f"{args.name or 'peft'}.md").write_text(markdown(results, results["command"]))
        return
    if args._memory:  # child: one memory measurement
        batch, p, length = map(int, args._point.split(","))
        child = memory_child_cuda if args.device == "cuda" else memory_child_cpu
        print(json.dumps(child(configs[0], dtype, batch, p, length, args._memory)))
        return

    import accelerate
    import peft
    import transformers

    command = "python bench/bench_peft.py " + " ".join(argv if argv is not None else sys.argv[1:])
    results = {"command": command.strip(), "environment": {
        "date": time.strftime("%Y-%m-%d %H:%M"), "torch": torch.__version__, "transformers": transformers.__version__,
        "peft": peft.__version__, "accelerate": accelerate.__version__, "python": platform.python_version(), "threads": torch.get_num_threads(),
        "device": torch.cuda.get_device_name() if args.device == "cuda" else f"CPU ({platform.processor() or platform.machine()}, {os.cpu_count()} cores)",
        "load_before": os.getloadavg()[0]}, "lora": LORA, "points": []}
    modes: set[str] = set()
    for config in configs:
        sweep = SWEEPS[config][:1] if args.headline_only else SWEEPS[config]
        for batch, p in sweep:
            length = HEADLINE["length"]
            print(f"[{config} {dtype_name} B={batch} p={p} L={length}] timing ...", flush=True)
            try:
                point = {"config": config, "dtype": dtype_name, "batch": batch, "p": p, "length": length,
                         "time": time_point(config, dtype, args.device, batch, p, length, args.steps)}
            except FastPathOff as err:
                raise SystemExit(f"stopped: {err}")
            modes.add(point["time"]["softprompt"]["path"])
            if not args.no_memory:
                print("  memory ...", flush=True)
                point["memory"] = {m: measure_memory(config, dtype_name, args.device, batch, p, length, m) for m in METHODS}
                modes.add(point["memory"]["softprompt"]["path"])
            t = point["time"]
            print(f"  s/step softprompt {t['softprompt']['step_s']:.3f} ({t['softprompt']['path']}), "
                  f"peft {t['peft']['step_s']:.3f}, peft_lora {t['peft_lora']['step_s']:.3f}, floor "
                  f"{t['floor']['step_s']:.3f}; loss {t['softprompt']['loss_first']:.6f} / {t['peft']['loss_first']:.6f}; "
                  f"{t['peft_lora']['loss_first']:.6f} / {t['floor']['loss_first']:.6f}", flush=True)
            results["points"].append(point)
    results["environment"]["load_after"] = os.getloadavg()[0]
    results["environment"]["softprompt_execution_mode"] = "/".join(sorted(modes))
    results["targets"] = check_targets(results["points"])
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    tag = "_".join(configs) + ("_" + args.device if args.device != "cpu" else "")
    (out / (f"{args.name}.json" if args.name else f"peft_{tag}.json")).write_text(json.dumps(results, indent=1) + "\n")
    (out / f"{args.name or 'peft'}.md").write_text(markdown(results, results["command"]))
    print(markdown(results, results["command"]))


if __name__ == "__main__":
    main()
