#!/usr/bin/env python
"""Dynamic prompt selection (IDP, issue 14) on a compressed model of the recovery benchmark: a bank of K
prompts of n tokens with per-input selection, against one prompt of K·n tokens and single n-token prompts,
on held-out perplexity and a downstream probe, over several seeds; the selection overhead in the same run.

    python scripts/build_demo_large.py                      # once
    SOFTPROMPT_COMPRESS_PYTHON=.venv-compress/bin/python python bench/bench_recovery.py --work /tmp/bench_rec2
    python bench/bench_idp.py --work /tmp/bench_rec2         # reuses its compressed models

Arms, each trained by `softprompt.train` with the same blocks, steps, lr, batch and seed:
- `idp`: bank K x n, attention selector (IDP's rule), hard selection in the loop (selector.train_with: self);
- `idp-key`: the same bank with the key selector (online k-means keys, no extra pass);
- `single-Kn`: one plain prompt of K·n tokens (the same number of prompt parameters as the bank);
- `single-n`: one plain prompt of n tokens (what each input runs with under IDP);
plus, evaluated on the trained `idp` bank: `idp best member` (its best prompt, fixed for every input:
what selection adds over that) and `idp oracle` (the lowest-loss prompt per block: an upper bound that
reads the scored tokens, for analysis only).

Protocol: held-out test blocks of `--block-size` tokens; selection reads the first `--context` tokens of a
block (selector.context_tokens), and perplexity scores tokens context+1..L only, identical in every cell, so
no choice has seen the tokens it is scored on. The probe is the fact-recall task (greedy exact match),
where selection reads the question only. Overhead: prefill tokens per input, and wall time of the eval
forward alternated across arms (medians over rounds; ratios are the claim on this noisy machine).
"""

from __future__ import annotations

import argparse
import json
import math
import statistics
import sys
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "bench"))
RESULTS = ROOT / "bench" / "results"


def train_arm(args, name: str, seed: int, values: dict) -> Path:
    from softprompt import load_config, train

    run = args.runs / f"{name}-s{seed}"
    if (run / "final").is_dir():
        return run / "final"
    path, _, quantization = args.base_path.partition("@")
    common = {
        "model.name_or_path": path, "model.quantization": quantization or "none",
        "data.path": args.text, "data.test_split": "null", "data.max_eval_samples": args.eval_docs,
        "objective.block_size": args.block_size, "optim.lr": args.lr, "optim.scheduler": "linear",
        "optim.warmup_steps": args.steps // 10, "train.max_steps": args.steps, "train.batch_size": args.batch_size,
        "train.eval_every": max(args.steps // 4, 1), "train.save_every": args.steps,
        "train.output_dir": str(args.runs), "train.run_name": run.name, "train.progress_bar": "false",
        "train.seed": seed, "train.log_every": args.steps,
    }
    t = time.time()
    result = train(load_config(None, [f"{k}={v}" for k, v in {**common, **values}.items()]), overwrite=True)
    print(f"trained {run.name} in {time.time() - t:.0f}s: eval_ppl {result.before['eval_ppl']:.3f} -> "
          f"{result.best['eval_ppl']:.3f}", flush=True)
    return result.adapter_dir


def arms(args) -> dict[str, dict]:
    bank = {"method": "idp", "prompt.num_prompts": args.k, "prompt.num_virtual_tokens": args.n,
            "selector.context_tokens": args.context}
    return {
        "idp": bank,
        "idp-key": {**bank, "method": "null", "prompt.type": "bank", "objective.type": "recover", "selector.type": "key"},
        "single-Kn": {"method": "recovery", "prompt.num_virtual_tokens": args.k * args.n},
        "single-n": {"method": "recovery", "prompt.num_virtual_tokens": args.n},
    }


def tail_nll(model, blocks: list[dict], skip: int, batch_size: int, prompt_index=None) -> tuple[float, int]:
    """Summed NLL and count of the tokens after the first `skip` of each block (the recover objective's
    protocol for a selector reading `skip` tokens). `prompt_index`: a callable giving each batch's indices."""
    from softprompt.objectives.recover import perplexity

    def logits(ids, mask):
        extra = {} if prompt_index is None else {"prompt_index": prompt_index(ids, mask)}
        return model(ids, mask, right_padded=True, **extra).logits

    result = perplexity(logits, blocks, batch_size, "cpu", read=skip)
    return result["nll"] * result["tokens"], result["tokens"]


class NoPrompt(torch.nn.Module):
    """The base alone, behind the SoftPromptModel call signature (logits aligned with the input)."""

    def __init__(self, base):
        super().__init__()
        self.base = base

    def forward(self, ids, mask, right_padded=True, **_):
        return self.base(input_ids=ids, attention_mask=mask)


def timed_rounds(fns: dict, rounds: int) -> dict[str, float]:
    """Median seconds per call of each fn, alternated round by round (order rotating)."""
    names, times = list(fns), {n: [] for n in fns}
    for r in range(rounds):
        for name in names[r % len(names):] + names[:r % len(names)]:
            t = time.perf_counter()
            fns[name]()
            times[name].append(time.perf_counter() - t)
    return {n: statistics.median(v) for n, v in times.items()}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--work", type=Path, default=Path("/tmp/bench_rec2"), help="bench_recovery.py's --work")
    ap.add_argument("--base", default="magnitude50-nf4", choices=["magnitude50-nf4", "8x", "gptq4"])
    ap.add_argument("--model", default="demo-large", help="the dense model (reference perplexity)")
    ap.add_argument("--text", default="demo-large-text")
    ap.add_argument("--task", default="demo-large-task")
    ap.add_argument("--k", type=int, default=4, help="prompts in the bank")
    ap.add_argument("--n", type=int, default=5, help="tokens per prompt")
    ap.add_argument("--context", type=int, default=32, help="tokens of a block selection reads (not scored)")
    ap.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    ap.add_argument("--steps", type=int, default=200)
    ap.add_argument("--lr", type=float, default=0.01)
    ap.add_argument("--batch-size", type=int, default=8)
    ap.add_argument("--block-size", type=int, default=128)
    ap.add_argument("--eval-docs", type=int, default=200, help="validation documents for best-step selection")
    ap.add_argument("--eval-blocks", type=int, default=200)
    ap.add_argument("--task-rows", type=int, default=300)
    ap.add_argument("--timing-rounds", type=int, default=5)
    ap.add_argument("--out", default="idp_demo_large")
    args = ap.parse_args()
    torch.set_num_threads(2)
    started = time.time()

    from softprompt.data.loading import load_split
    from softprompt.loading import ModelConfig, load_base
    from softprompt.model import SoftPromptModel
    from softprompt.objectives.recover import split_blocks
    from softprompt.recovery_report import load_task, task_accuracy
    from softprompt.selectors import context_mask
    from softprompt.selectors.oracle import row_losses

    paths = {"magnitude50-nf4": str(args.work / "magnitude50") + "@bnb-4bit", "8x": str(args.work / "8x"),
             "gptq4": str(args.work / "gptq4")}
    args.base_path = paths[args.base]
    args.runs = args.work / f"idp_runs_{args.base}_{args.steps}"  # a smoke run's few steps never stand in for the real ones
    if not Path(args.base_path.partition("@")[0]).is_dir():
        sys.exit(f"bench_idp: {args.base_path.partition('@')[0]} is missing; run bench/bench_recovery.py --work {args.work} "
                 "first (it compresses demo-large)")
    path, _, quantization = args.base_path.partition("@")
    base, tok, _ = load_base(ModelConfig(name_or_path=path, quantization=quantization or "none", kind="causal"))
    dense, _, _ = load_base(ModelConfig(name_or_path=args.model, kind="causal"))
    blocks = split_blocks(load_split(args.text, "test"), "text", tok, args.block_size, "test")[:args.eval_blocks]
    task = load_task(args.task, "test", args.task_rows)
    skip, bs = args.context, 16

    def ppl(model, **kw) -> float:
        total, count = tail_nll(model, blocks, skip, bs, **kw)
        return total / count

    refs = {"dense": ppl(NoPrompt(dense.eval())), "compressed": ppl(NoPrompt(base.eval()))}
    refs_acc = {"dense": task_accuracy(None, dense, tok, task, 32), "compressed": task_accuracy(None, base, tok, task, 32)}
    print(f"references: nll {refs}, accuracy {refs_acc}", flush=True)
    scored_tokens = len(blocks) * (args.block_size - skip)

    rows: dict[str, list[dict]] = {}
    selection: dict[str, list] = {}
    for seed in args.seeds:
        for name, values in arms(args).items():
            adapter = train_arm(args, name, seed, values)
            model = SoftPromptModel.from_adapter(adapter, base=base, tokenizer=tok).eval()
            rows.setdefault(name, []).append({"nll": ppl(model), "acc": task_accuracy(model, base, tok, task, 32)})
            if name != "idp":
                continue
            # the same trained bank: each member fixed for every input, the oracle's choice, agreement
            member = [ppl(model, prompt_index=lambda ids, m, j=j: torch.full((ids.shape[0],), j)) for j in range(args.k)]
            best = min(range(args.k), key=lambda j: member[j])
            best_acc = task_accuracy(_fixed(model, best), base, tok, task, 32)
            rows.setdefault("idp best member", []).append({"nll": member[best], "acc": best_acc})
            chosen, oracle = [], []
            for start in range(0, len(blocks), bs):
                ids = torch.tensor([b["input_ids"] for b in blocks[start:start + bs]])
                mask = torch.ones_like(ids)
                chosen.append(model.select(ids, mask))
                targets = ids.masked_fill(torch.arange(ids.shape[1]) < skip, -100)  # the scored tokens only
                oracle.append(row_losses(model, ids, mask, targets).argmin(1))
            chosen, oracle = torch.cat(chosen), torch.cat(oracle)
            oracle_iter = iter(oracle.split(bs))
            rows.setdefault("idp oracle", []).append({"nll": ppl(model, prompt_index=lambda ids, m: next(oracle_iter)),
                                                      "acc": float("nan")})
            selection.setdefault("idp", []).append({
                "counts": torch.bincount(chosen, minlength=args.k).tolist(),
                "oracle_counts": torch.bincount(oracle, minlength=args.k).tolist(),
                "agreement_with_oracle": float((chosen == oracle).float().mean()),
                "member_nll": member})

    # overhead, on the last seed's trained models: the same blocks, alternated
    last = args.seeds[-1]
    idp = SoftPromptModel.from_adapter(args.runs / f"idp-s{last}" / "final", base=base, tokenizer=tok).eval()
    key = SoftPromptModel.from_adapter(args.runs / f"idp-key-s{last}" / "final", base=base, tokenizer=tok).eval()
    single = SoftPromptModel.from_adapter(args.runs / f"single-Kn-s{last}" / "final", base=base,
                                          tokenizer=tok).eval()
    ids = torch.tensor([b["input_ids"] for b in blocks[:bs]])
    mask = torch.ones_like(ids)
    given = idp.select(ids, mask)
    with torch.no_grad():
        timing = timed_rounds({
            "single-Kn": lambda: single(ids, mask, right_padded=True),
            "idp (selection + run)": lambda: idp(ids, mask, right_padded=True),
            "idp (run, index given)": lambda: idp(ids, mask, right_padded=True, prompt_index=given),
            "idp selection alone": lambda: idp.select(ids, mask),
            "idp-key (selection + run)": lambda: key(ids, mask, right_padded=True),
        }, args.timing_rounds)
    context_used = int(context_mask(mask, None, "causal", args.context).sum(1)[0])
    kn, n, L = args.k * args.n, args.n, args.block_size
    tokens = {"single-Kn": {"prefill rows": kn + L, "extra key columns for scoring": 0},
              "single-n": {"prefill rows": n + L, "extra key columns for scoring": 0},
              "idp": {"prefill rows": n + L, "scoring rows": context_used, "extra key columns for scoring": kn,
                      "prompt pass (once, cached)": kn},
              "idp-key": {"prefill rows": n + L, "extra key columns for scoring": 0}}
    dim = base.get_input_embeddings().weight.shape[1]
    params = {"idp bank": args.k * args.n * dim, "single-Kn": kn * dim, "single-n": n * dim,
              "idp-key keys (buffers, not trained by gradient)": args.k * dim}
    result = {"args": {k: str(v) for k, v in vars(args).items()}, "references": {"nll": refs, "acc": refs_acc},
              "scored_tokens": scored_tokens, "arms": rows, "selection": selection, "timing_s": timing,
              "tokens_per_input": tokens, "parameters": params, "wall_min": (time.time() - started) / 60}
    RESULTS.mkdir(parents=True, exist_ok=True)
    (RESULTS / f"{args.out}.json").write_text(json.dumps(result, indent=2))
    (RESULTS / f"{args.out}.md").write_text(markdown(result, args))
    print(markdown(result, args))


def _fixed(model, j: int):
    """`model` with every input taking prompt j (its selector bypassed), for generate-based probes."""
    from softprompt.layers import PromptEmbedding
    from softprompt.model import SoftPromptModel

    prompt = PromptEmbedding(model.prompt.prompt_table(torch.float32)[j].detach())
    return SoftPromptModel(model.base, prompt, model.tokenizer, "causal").eval()


def spread(values: list[float]) -> str:
    values = [v for v in values if not math.isnan(v)]
    if not values:
        return "n/a"
    mean = statistics.mean(values)
    sd = statistics.stdev(values) if len(values) > 1 else 0.0
    return f"{mean:.4f} ± {sd:.4f}"


def markdown(r: dict, args) -> str:
    dense, comp = r["references"]["nll"]["dense"], r["references"]["nll"]["compressed"]
    gap = comp - dense
    lines = [f"# IDP on `{args.base}` (demo-large): a bank of {args.k} x {args.n} prompts with per-input selection", "",
             f"Held-out test: {len(args.seeds)} seeds "
             f"({', '.join(map(str, args.seeds))}), {r['scored_tokens']:,} scored tokens per cell (tokens "
             f"{args.context + 1}..{args.block_size} of each {args.block_size}-token block; selection reads tokens "
             f"1..{args.context}). Training: {args.steps} steps, lr {args.lr}, batch {args.batch_size}, linear schedule.",
             "", f"References: dense perplexity {math.exp(dense):.4f}, compressed {math.exp(comp):.4f}; task accuracy "
             f"dense {r['references']['acc']['dense']:.3f}, compressed {r['references']['acc']['compressed']:.3f}.", "",
             "| arm | prompt tokens per input | perplexity (mean ± sd over seeds) | gap closed | task accuracy |",
             "|---|---:|---:|---:|---:|"]
    per_input = {"idp": args.n, "idp-key": args.n, "single-Kn": args.k * args.n, "single-n": args.n,
                 "idp best member": args.n, "idp oracle": args.n}
    for name, runs in r["arms"].items():
        ppls = [math.exp(x["nll"]) for x in runs]
        closed = [(comp - x["nll"]) / gap if gap > 0 else float("nan") for x in runs]
        lines.append(f"| {name} | {per_input[name]} | {spread(ppls)} | {spread([100 * c for c in closed])} % | "
                     f"{spread([x['acc'] for x in runs])} |")
    lines += ["", "`idp oracle` reads the scored tokens to choose: an upper bound for selection, not a servable arm.", "",
              "## Selection (the `idp` bank)", "", "| seed | attention's choices per prompt | oracle's | agreement |",
              "|---|---|---|---:|"]
    for seed, s in zip(args.seeds, r["selection"].get("idp", [])):
        lines.append(f"| {seed} | {s['counts']} | {s['oracle_counts']} | {s['agreement_with_oracle']:.2f} |")
    t = r["timing_s"]
    lines += ["", "## Overhead (eval forward of 16 blocks, medians of alternated rounds; last seed's models)", "",
              "| call | ms | vs single-Kn |", "|---|---:|---:|"]
    for name, sec in t.items():
        lines.append(f"| {name} | {1000 * sec:.1f} | {sec / t['single-Kn']:.2f}x |")
    lines += ["", "Tokens per input: " + "; ".join(f"{k}: " + ", ".join(f"{a} {b}" for a, b in v.items())
                                               for k, v in r["tokens_per_input"].items()), "",
              "Parameters: " + ", ".join(f"{k} {v:,}" for k, v in r["parameters"].items()), "",
              f"Total wall time: {r['wall_min']:.1f} min."]
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    main()
