#!/usr/bin/env python
"""PTEC inference against text-to-text generation with the label trie (issue 12): examples per second on the
HateSpeech test texts, one decoder-only model, side by side in one process.

    python bench/bench_ptec_throughput.py --smoke                             # ~2 min: 64 + 4 texts, 1 repeat
    python bench/bench_ptec_throughput.py --threads 1 --out ptec_throughput   # ~22 min on one free core
    python bench/bench_ptec_throughput.py --render ptec_throughput            # the .md again from the .json

The model: a Llama-style decoder built from a config with random weights (no pretrained decoder can be
fetched on this machine), sized like a small real one: vocab 32,000 (Llama-2's), d=512, 8 layers, MLP 1,376,
8 heads, untied LM head: 58.4M parameters, 25.2M of them in the body. Its tokenizer is a byte-level BPE
trained here on the HateSpeech train texts and the label names (the `tokenizers` library, seconds); its
ids fill the first rows of the 32,000-row tables, so texts and labels have realistic token counts and every
generated token pays for a Llama-2-sized LM head. The bundled demo model (d=128, 4 layers, 1M params,
vocab 1,024, 256 positions) was not used: at that size a forward costs less than the Python around it,
so the ratio would measure interpreter overhead, and its 256 positions do not hold the longer texts.

Both methods share the base and the same 20-token soft prompt; both use SoftPromptModel's default execution
(the shared prefix: the prompt's keys/values computed once and reused by every row and call):
- ptec: `classify_texts` (softprompt/predict.py), one forward of the body per batch and a
  linear head on the last real token (22 outputs), probabilities > 0.5 -> labels. Timed from the texts
  to the label lists (tokenization included).
- t2t: `SoftPromptModel.generate` on left-padded batches, greedy, constrained by `TrieLogitsProcessor`
  over the 22 labels (separator " ; ": PTEC's "; " would merge with the ")" of "Specific nation(s)" under
  byte-level BPE), max_new_tokens 75 (PTEC's HateSpeech setting; the trie's own maximum is printed), then
  `parse_labels`. Timed from the texts to the label lists. The random weights decide how long each output
  is (under the trie: when to stop after a label), which a trained model would decide differently, so the
  bench also runs
- t2t_gold_length: the same generate call with a second processor that forces each row's gold label list
  (labels in train-frequency order, PTEC's target order, joined by the separator, then EOS): the decoding
  work of a T2T model that emits exactly the right labels. The trie still runs at every step.
- t2t_all_labels: the same call with EOS held back (min_new_tokens) until all 22 labels are out: the
  longest output the trie allows, an upper bound on T2T's decoding work.

Time: the methods run in turn over the same texts, `--repeats` rounds, the order rotating every round so
machine load hits all alike, after one warm-up batch each; the median pass is reported. Examples per second
= texts / seconds of the pass. `--points BATCH:ORDER:ROWS`: the headline is batch 32 over all 556 test texts
sorted by token count (how a batch server groups requests; both methods get the same batches), then batch
32 in the file's order (more padding) and batch 1 (latency), on the first ROWS texts.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shlex
import statistics
import sys
import time
from pathlib import Path

import torch
import yaml

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from softprompt.heads import LinearHead  # noqa: E402
from softprompt.layers import PromptEmbedding  # noqa: E402
from softprompt.model import SoftPromptModel  # noqa: E402
from softprompt.objectives.classify import ClassifyConfig  # noqa: E402
from softprompt.predict import classify_texts  # noqa: E402
from softprompt.objectives.label_trie import LabelTrie, TrieLogitsProcessor, labels_from_tokenizer, parse_labels  # noqa: E402

RECIPE = ROOT / "recipes" / "ptec" / "demo_hatespeech.yaml"
DATA = ROOT.parent / "shared" / "data" / "hatespeech"
MODEL = dict(vocab_size=32000, hidden_size=512, num_hidden_layers=8, intermediate_size=1376, num_attention_heads=8,
             max_position_embeddings=1024, tie_word_embeddings=False)  # ~58M: Llama-2's vocab, a small body
P = 20  # prompt length (the HateSpeech bench's PTEC prompt)
# PTEC's T2T target joins labels with "; " (research/methods.md §3.3); a byte-level BPE merges the ")" that ends
# "Specific nation(s)" with a following ";" into one token, so the label would have two spellings: " ; " keeps it whole
SEPARATOR = " ; "
MAX_NEW_TOKENS = 75  # PTEC's HateSpeech generation limit
METHODS = ("ptec", "t2t", "t2t_gold_length", "t2t_all_labels")


def read_split(split: str) -> list[dict]:
    return [json.loads(line) for line in (DATA / f"{split}.json").read_text().splitlines() if line.strip()]


def train_tokenizer(texts: list[str], labels: list[str]):
    """A byte-level BPE over the train texts and label names (GPT-2's scheme), as a transformers tokenizer."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=MODEL["vocab_size"], special_tokens=["<pad>", "<s>", "</s>"],
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=False)
    tok.train_from_iterator(texts + [" " + label for label in labels] * 20, trainer)
    return PreTrainedTokenizerFast(tokenizer_object=tok, pad_token="<pad>", bos_token="<s>", eos_token="</s>",
                                   padding_side="left", clean_up_tokenization_spaces=False)


def build_models(tokenizer, labels: list[str]):
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(0)
    cfg = LlamaConfig(pad_token_id=tokenizer.pad_token_id, bos_token_id=tokenizer.bos_token_id,
                      eos_token_id=tokenizer.eos_token_id, **MODEL)
    base = LlamaForCausalLM(cfg).eval()
    base.requires_grad_(False)
    g = torch.Generator().manual_seed(1)
    table = base.get_input_embeddings().weight
    rows = torch.randint(3, len(tokenizer), (P,), generator=g)
    prompt = PromptEmbedding(table[rows].detach().clone())  # (p, d): vocabulary rows, as prompt.init vocab
    head = LinearHead(cfg.hidden_size, len(labels), "last", generator=torch.Generator().manual_seed(2))
    ptec = SoftPromptModel(base, prompt, tokenizer, "causal", head=head).eval()
    t2t = SoftPromptModel(base, prompt, tokenizer, "causal").eval()
    return base, ptec, t2t


class ForceTokens:
    """A logits processor that makes row i emit targets[i] (then EOS/pad): a 'model' whose outputs are the gold
    label lists. Steps count from the first call's width, as TrieLogitsProcessor's do; one per generate call."""

    def __init__(self, targets: list[list[int]], eos_id: int):
        self.targets, self.eos_id, self.start = targets, eos_id, None

    def __call__(self, input_ids: torch.Tensor, scores: torch.Tensor) -> torch.Tensor:
        if self.start is None:
            self.start = input_ids.shape[1]
        step = input_ids.shape[1] - self.start
        chosen = torch.tensor([t[step] if step < len(t) else self.eos_id for t in self.targets])
        out = torch.full_like(scores, -float("inf"))
        out[torch.arange(len(chosen)), chosen] = 0.0
        return out


def gold_targets(rows: list[dict], labels: list[str], order: list[int], label_ids, separator_ids, eos_id: int):
    """Each row's gold label list in train-frequency order, as tokens: label ; label ... EOS."""
    out = []
    for row in rows:
        ids = []
        for j in order:
            if row[labels[j]]:
                ids += (separator_ids if ids else []) + label_ids[j]
        out.append(ids + [eos_id])
    return out


def run_ptec(model, texts: list[str], cfg: ClassifyConfig, batch: int, **_) -> dict:
    predictions = classify_texts(model, texts, cfg, template="{text}", batch_size=batch)
    return {"labels": sum(len(p.labels) for p in predictions) / len(texts)}


def run_t2t(model, texts: list[str], cfg: ClassifyConfig, batch: int, trie: LabelTrie, targets=None,
            all_labels: bool = False, **_) -> dict:
    tok = model.tokenizer
    generated, steps, n_labels, unknown = [], [], 0, 0
    for start in range(0, len(texts), batch):
        chunk = texts[start:start + batch]
        enc = tok(chunk, return_tensors="pt", padding=True)  # left padding (tokenizer.padding_side)
        processors = [TrieLogitsProcessor(trie)]
        if targets is not None:
            processors.append(ForceTokens(targets[start:start + batch], tok.eos_token_id))
        # all_labels: EOS is held back until every label is out, so each row lists all 22 (the trie lets a row
        # end only then, or allows nothing but EOS): the longest output the trie allows, an upper bound
        extra = {"min_new_tokens": trie.max_length} if all_labels else {}
        out = model.generate(enc["input_ids"], attention_mask=enc["attention_mask"], logits_processor=processors,
                             max_new_tokens=MAX_NEW_TOKENS, do_sample=False, **extra)  # (B, T_new)
        steps.append(out.shape[1])
        for row in out.tolist():  # tokens up to and including EOS (then padding)
            generated.append(row.index(tok.eos_token_id) + 1 if tok.eos_token_id in row else len(row))
        for text in tok.batch_decode(out, skip_special_tokens=True):
            parsed = parse_labels(text, cfg.labels, SEPARATOR)
            n_labels += len(parsed.labels)
            unknown += len(parsed.unknown)
    assert unknown == 0, f"the trie let {unknown} unknown pieces through"
    return {"labels": n_labels / len(texts), "generated_tokens": statistics.mean(generated),
            "max_generated": max(generated), "hit_max_new_tokens": sum(g >= MAX_NEW_TOKENS for g in generated),
            "decode_steps_per_batch": statistics.mean(steps)}


RUNNERS = {"ptec": run_ptec, "t2t": run_t2t, "t2t_gold_length": run_t2t, "t2t_all_labels": run_t2t}


def measure(models: dict, texts: list[str], cfg, batch: int, trie, targets, repeats: int, order_name: str) -> dict:
    extra = {"ptec": {}, "t2t": {"trie": trie}, "t2t_gold_length": {"trie": trie, "targets": targets},
             "t2t_all_labels": {"trie": trie, "all_labels": True}}
    for method in METHODS:  # warm-up: one batch each
        RUNNERS[method](models[method], texts[:batch], cfg, batch, **{**extra[method], **(
            {"targets": targets[:batch]} if method == "t2t_gold_length" else {})})
    times = {m: [] for m in METHODS}
    info = {}
    for r in range(repeats):
        order = METHODS[r % len(METHODS):] + METHODS[:r % len(METHODS)]
        for method in order:
            start = time.perf_counter()
            info[method] = RUNNERS[method](models[method], texts, cfg, batch, **extra[method])
            times[method].append(time.perf_counter() - start)
            print(f"  batch {batch} repeat {r} {method}: {times[method][-1]:.2f} s  {info[method]}", flush=True)
    out = {}
    for method in METHODS:
        median = statistics.median(times[method])
        out[method] = {"seconds": times[method], "median_s": median, "examples_per_s": len(texts) / median, **info[method]}
    for method in METHODS[1:]:
        out[method]["ptec_speedup"] = out["ptec"]["examples_per_s"] / out[method]["examples_per_s"]
        # what one decode step costs, in PTEC batches: (T2T time - PTEC time) / decode steps, per batch
        batches = -(-len(texts) // batch)
        per_step = (out[method]["median_s"] - out["ptec"]["median_s"]) / (out[method]["decode_steps_per_batch"] * batches)
        out[method]["step_over_ptec_batch"] = per_step / (out["ptec"]["median_s"] / batches)
    return {"batch": batch, "rows": len(texts), "order": order_name, "methods": out}


def per_repeat(point: dict, method: str) -> str:
    """T2T time / PTEC time within each round (the two ran minutes apart at most): robust to load that
    changes between rounds, which the ratio of medians is not."""
    pairs = zip(point["methods"][method]["seconds"], point["methods"]["ptec"]["seconds"])
    return ", ".join(f"{t / p:.2f}" for t, p in pairs)


def markdown(results: dict) -> str:
    env = results["environment"]
    lines = [f"# PTEC inference vs text-to-text generation with the label trie ({results['name']})", "",
             f"Command: `{results['command']}`", "",
             f"{env['date']}; torch {env['torch']}, transformers {env['transformers']}; CPU ({env['cpu']}, {env['cores']} "
             f"cores), {env['threads']} torch thread(s); 1-minute load average {env['load_before']:.1f} before, "
             f"{env['load_after']:.1f} after (other jobs shared the machine: the methods alternate, so load hits all alike).", "",
             f"Model: Llama-style decoder from a config, random weights, {results['model']['parameters'] / 1e6:.1f}M parameters "
             f"({results['model']['body_parameters'] / 1e6:.1f}M in the body; vocab {MODEL['vocab_size']:,}, d {MODEL['hidden_size']}, "
             f"{MODEL['num_hidden_layers']} layers); byte-level BPE trained on the train texts ({results['model']['tokenizer_vocab']:,} "
             f"tokens). Prompt p = {P}; execution {results['model']['execution']}. HateSpeech test texts: "
             f"{results['texts']['rows']}, {results['texts']['mean_tokens']:.1f} tokens on average (+ {P} prompt). "
             f"Trie over the 22 labels: {results['trie']['mean_label_tokens']:.1f} tokens per label, separator "
             f"{results['trie']['separator_tokens']} token(s), longest valid output {results['trie']['max_length']} tokens; "
             f"max_new_tokens {MAX_NEW_TOKENS}. Gold label lists: {results['trie']['gold_mean_tokens']:.1f} tokens with EOS on average.", "",
             "| batch | rows (order) | method | examples/s | median pass (s) | PTEC speedup | speedup per repeat | generated tokens / example (mean, max) | decode steps / batch | one decode step / one PTEC batch | labels / example |",
             "|---|---|---|---|---|---|---|---|---|---|---|"]
    for point in results["points"]:
        rows = f"{point['rows']} ({point['order']})"
        for method in METHODS:
            m = point["methods"][method]
            if method == "ptec":
                lines.append(f"| {point['batch']} | {rows} | ptec | {m['examples_per_s']:.2f} | {m['median_s']:.2f} | 1.00x | – | "
                             f"– (one forward) | – | – | {m['labels']:.2f} |")
                continue
            lines.append(f"| {point['batch']} | {rows} | {method} | {m['examples_per_s']:.2f} | {m['median_s']:.2f} | "
                         f"{m['ptec_speedup']:.2f}x | {per_repeat(point, method)} | {m['generated_tokens']:.1f}, {m['max_generated']} | "
                         f"{m['decode_steps_per_batch']:.1f} | {m['step_over_ptec_batch']:.3f} | {m['labels']:.2f} |")
    head = results["points"][0]["methods"]
    lines += ["", "t2t: greedy under the trie, lengths as the random weights decide; t2t_gold_length: forced to the gold "
              "label list (the length a perfect T2T model would emit); t2t_all_labels: EOS held back until all 22 labels "
              "are out (the longest output the trie allows: an upper bound on T2T's decoding work).", "",
              f"Target: PTEC >= 10x the T2T+trie throughput. Measured at batch {results['points'][0]['batch']} "
              f"({results['points'][0]['order']}): {head['t2t']['ptec_speedup']:.2f}x (random-weight outputs), "
              f"{head['t2t_gold_length']['ptec_speedup']:.2f}x (gold-length outputs), "
              f"{head['t2t_all_labels']['ptec_speedup']:.2f}x (all labels): "
              f"{'met' if head['t2t_gold_length']['ptec_speedup'] >= 10 else 'NOT met'}."]
    return "\n".join(lines) + "\n"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--points", nargs="+", default=["32:length:556", "32:file:64", "1:file:16"],
                    help="BATCH:ORDER:ROWS each; ORDER length (texts sorted by token count, as a server groups them) "
                         "or file (the test file's order); ROWS: the first ROWS texts of the test file")
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--smoke", action="store_true", help="points 32:length:64 and 1:file:4, 1 repeat")
    ap.add_argument("--out", default=None, help="write bench/results/OUT.{json,md}")
    ap.add_argument("--render", default=None, metavar="NAME", help="rewrite bench/results/NAME.md from its .json; runs nothing")
    args = ap.parse_args()
    if args.render:
        path = ROOT / "bench" / "results" / f"{args.render}.md"
        path.write_text(markdown(json.loads(path.with_suffix(".json").read_text())))
        print(path.read_text())
        return
    torch.set_num_threads(args.threads)
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    import transformers

    command = "python bench/bench_ptec_throughput.py " + " ".join(shlex.quote(a) for a in sys.argv[1:])
    labels = list(yaml.safe_load(RECIPE.read_text())["objective"]["labels"])
    train_rows, test_rows = read_split("train_preprocessed"), read_split("test_preprocessed")
    if args.smoke:
        args.points, args.repeats = ["32:length:64", "1:file:4"], 1
    tokenizer = train_tokenizer([r["prompt"] for r in train_rows], labels)
    base, ptec, t2t = build_models(tokenizer, labels)
    label_ids, separator_ids = labels_from_tokenizer(tokenizer, labels, SEPARATOR, prefix=" ")
    trie = LabelTrie(label_ids, separator_ids, tokenizer.eos_token_id, tokenizer.pad_token_id)
    frequency = [sum(r[label] for r in train_rows) for label in labels]
    order = sorted(range(len(labels)), key=lambda j: -frequency[j])  # PTEC's target order
    targets = gold_targets(test_rows, labels, order, label_ids, separator_ids, tokenizer.eos_token_id)
    assert max(map(len, targets)) <= MAX_NEW_TOKENS
    texts = [r["prompt"] for r in test_rows]
    cfg = ClassifyConfig(labels=tuple(labels))
    models = {"ptec": ptec, "t2t": t2t, "t2t_gold_length": t2t, "t2t_all_labels": t2t}
    results = {
        "name": args.out or "unsaved", "command": command,
        "environment": {"date": time.strftime("%Y-%m-%d %H:%M"), "torch": torch.__version__,
                        "transformers": transformers.__version__, "python": platform.python_version(),
                        "cpu": platform.processor() or platform.machine(), "cores": os.cpu_count(),
                        "threads": torch.get_num_threads(), "load_before": os.getloadavg()[0]},
        "model": {**MODEL, "parameters": sum(p.numel() for p in base.parameters()),
                  "body_parameters": sum(p.numel() for p in base.model.parameters()) - base.model.embed_tokens.weight.numel(),
                  "tokenizer_vocab": len(tokenizer), "prompt_tokens": P, "execution": ptec.execution_mode()},
        "trie": {"separator": SEPARATOR, "separator_tokens": len(separator_ids), "max_length": trie.max_length,
                 "mean_label_tokens": statistics.mean(map(len, label_ids)),
                 "gold_mean_tokens": statistics.mean(map(len, targets)), "max_new_tokens": MAX_NEW_TOKENS},
        "texts": {"rows": len(texts), "mean_tokens": statistics.mean(len(tokenizer(t)["input_ids"]) for t in texts)},
        "points": []}
    print(json.dumps({k: results[k] for k in ("model", "trie", "texts")}), flush=True)
    lengths = [len(tokenizer(t)["input_ids"]) for t in texts]
    for point in args.points:
        batch, order_name, rows = point.split(":")
        chosen = list(range(min(int(rows), len(texts))))
        if order_name == "length":
            chosen.sort(key=lambda i: lengths[i])
        elif order_name != "file":
            raise SystemExit(f"--points: order {order_name!r} is not length or file")
        print(f"== batch {batch}, {len(chosen)} texts in {order_name} order", flush=True)
        results["points"].append(measure(models, [texts[i] for i in chosen], cfg, int(batch), trie,
                                         [targets[i] for i in chosen], args.repeats, order_name))
    results["environment"]["load_after"] = os.getloadavg()[0]
    text = markdown(results)
    print(text)
    if args.out:
        out = ROOT / "bench" / "results"
        (out / f"{args.out}.json").write_text(json.dumps(results, indent=1) + "\n")
        (out / f"{args.out}.md").write_text(text)
        print(f"wrote bench/results/{args.out}.json and .md")


if __name__ == "__main__":
    main()
