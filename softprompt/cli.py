"""Command line: `softprompt train|demo|eval|generate|classify|export|compress|perplexity|budget`.

    softprompt demo                                   # the embedded default, offline, ~15 s of training on a CPU
    softprompt demo --task classify                   # PTEC on bundled multi-label data, offline, ~1 min on a CPU
    softprompt train recipes/debug/tiny-causal.yaml train.max_steps=20 --resume
    softprompt train --resume checkpoints/RUN         # continue a run with its own config
    softprompt eval checkpoints/demo/final --split validation   # the run's own config and data
    softprompt generate checkpoints/demo/final "fulusheel ="
    softprompt budget --d 768 --s 256 --l 100        # DePT (m, r) pairs at a vanilla prompt's budget
    accelerate launch -m softprompt train RECIPE.yaml

Bad input exits with code 2 and one line saying what is wrong and how to fix it; no traceback, no warning
lines around it (warnings and log lines are held while a command runs, and printed only if it does not end
on bad input), nothing written. Ctrl-C prints `softprompt: interrupted` and exits with 130.
"""

from __future__ import annotations

import argparse
import json
import logging
import re
import sys
import warnings
from pathlib import Path

from softprompt import __version__
from softprompt.errors import ConfigError, SoftPromptError

DOTTED_KEY = re.compile(r"[A-Za-z_]\w*(\.[A-Za-z_]\w*)+")


def _recipe_and_overrides(items: list[str]) -> tuple[str | None, list[str]]:
    """The first item is the recipe unless it holds '='. A dotted key with no '=' that is no file
    (`model.kind`) is a forgotten value, not a missing recipe."""
    if items and "=" not in items[0]:
        first = items[0]
        if not Path(first).exists() and DOTTED_KEY.fullmatch(first) and Path(first).suffix not in (".yaml", ".yml"):
            raise ConfigError(f"{first!r} is neither a recipe file nor an override: give an override a value "
                              f"({first}=VALUE), or the path of an existing .yaml recipe")
        return first, items[1:]
    return None, items


def checkpoint_config(resume: str, overrides: list[str]):
    """`train --resume PATH` with no recipe continues the run with the config its checkpoint recorded, in the
    run dir the checkpoint lies in (the run may have moved since)."""
    from softprompt.checkpoint import read_meta
    from softprompt.config import config_with
    from softprompt.run_dir import find_checkpoint

    ckpt = find_checkpoint(Path(resume))
    config = read_meta(ckpt).get("config")
    if not isinstance(config, dict):
        raise SoftPromptError(f"--resume {resume}: {ckpt / 'meta.json'} records no config; give the run's recipe: "
                              f"softprompt train RECIPE.yaml --resume {resume}")
    recorded = config.get("train", {})
    run_dir = ckpt.resolve().parent
    here = [] if Path(recorded.get("output_dir", ""), recorded.get("run_name", "")).resolve() == run_dir else [
        f"train.output_dir={run_dir.parent}", f"train.run_name={run_dir.name}"]
    return config_with(config, [*here, *overrides])


def cmd_train(args) -> int:
    from softprompt.config import load_config
    from softprompt.train import train

    recipe, overrides = _recipe_and_overrides(args.items)
    if recipe is None and isinstance(args.resume, str):
        cfg = checkpoint_config(args.resume, overrides)
    else:
        cfg = load_config(recipe, overrides)
    result = train(cfg, resume=args.resume, overwrite=args.overwrite, on_accepted=args.release_output)
    if not _main_process():
        return 0
    print_result(result, args.json)
    return 0


def print_result(result, as_json: bool) -> None:
    """The end of a run: a short table (metrics at 4 significant digits) or, with --json, the JSON for scripts."""
    if as_json:
        print(json.dumps({
            "adapter": str(result.adapter_dir), "steps": result.steps, "source_step": result.source_step,
            "trainable_parameters": result.trainable_parameters, "before": result.before, "best_eval": result.best,
            "test": result.test,
        }, indent=2))
        return
    print()
    print(result_table(result))
    why = f": {result.chosen_by}" if result.chosen_by else ""
    print(f"steps: {result.steps} (final/ holds step {result.source_step}{why})  "
          f"trainable parameters: {result.trainable_parameters:,}")
    print(f"adapter: {result.adapter_dir}  curves: {result.run_dir / 'curves.png'}")


def result_table(result) -> str:
    """Rows per metric (loss, ppl, accuracy, ...); columns eval and test, before training and for final/'s
    adapter (the best eval's, or the last step's). A column no split filled is left out."""
    columns = {"eval before": (result.before, "eval_"), "eval final": (result.best, "eval_"),
               "test before": (result.before, "test_"), "test final": (result.test, "test_")}
    columns = {name: (d, prefix) for name, (d, prefix) in columns.items() if any(k.startswith(prefix) for k in d)}
    names = list(dict.fromkeys(k.split("_", 1)[1] for d, prefix in columns.values() for k in d if k.startswith(prefix)))
    rows = [[name] + [_cell(d.get(prefix + name)) for d, prefix in columns.values()] for name in names]
    return table(["metric", *columns], rows)


def _cell(value) -> str:
    from softprompt.train import sig4

    return "-" if value is None else sig4(value)


def table(header: list[str], rows: list[list[str]]) -> str:
    """Plain text columns: the first left-aligned, the numbers right-aligned."""
    widths = [max(len(r[i]) for r in [header, *rows]) for i in range(len(header))]
    lines = [[c.ljust(w) if i == 0 else c.rjust(w) for i, (c, w) in enumerate(zip(r, widths))] for r in [header, *rows]]
    return "\n".join("  ".join(line).rstrip() for line in lines)


def cmd_demo(args) -> int:
    """Prompt tuning on the bundled model and task: held-out accuracy before and after."""
    from softprompt.config import load_config
    from softprompt.train import train

    if args.task == "classify":
        return demo_classify(args)
    # AdamW at 0.1 with a short warmup and linear decay: the demo's 1M-parameter model has small
    # embeddings, and 0.003 reaches only ~55% in 300 steps (softprompt/data/demo/README.md).
    demo = ["train.run_name=demo", "optim.lr=0.1", "optim.scheduler=linear", "optim.warmup_steps=10"]
    cfg = load_config(None, [*demo, *args.overrides])
    print("softprompt demo: tuning a soft prompt on the bundled causal LM (softprompt/data/demo)")
    # the demo is a canned run: running it again replaces its own run dir rather than asking for --overwrite
    result = train(cfg, resume=False, overwrite=True, on_accepted=args.release_output)
    if not _main_process():
        return 0
    print_result(result, args.json)
    if args.json:
        return 0
    before = result.before.get("test_accuracy", result.before.get("eval_accuracy"))
    after = result.test.get("test_accuracy", result.best.get("eval_accuracy"))
    print(f"\nthe prompt: {cfg.prompt.num_virtual_tokens} x {result.trainable_parameters // cfg.prompt.num_virtual_tokens}"
          " trainable parameters; the base model stays frozen")
    print(f"held-out accuracy before prompt tuning: {before:.1%}")
    print(f"held-out accuracy after prompt tuning:  {after:.1%}  (test split, {result.steps} steps)")
    return 0


DEMO_CLASSIFY = Path(__file__).parent / "data" / "demo" / "classify"
# the sectors of the bundled classify data, in the head's output order (scripts/build_demo_classify.py)
DEMO_SECTORS = ("agriculture", "livestock", "fishing", "hardware", "jewelry", "toys", "shipping", "retail", "mining",
                "food")
DEMO_CLASSIFY_ROWS = ("loss", "micro_f1", "macro_f1")  # the summary's rows; --json gives every metric


def demo_classify(args) -> int:
    """PTEC on the bundled model and companies (softprompt/data/demo/classify): held-out macro-F1 before and after."""
    from dataclasses import replace

    import torch

    from softprompt.config import load_config
    from softprompt.train import train

    # Settings (seed 0, validation / test macro-F1 after training; the data's README has more): a 10-vector
    # prompt at AdamW 0.1 (the LM demo's rate) with linear decay, the head at 0.1, batch 16 x 600 steps (~18
    # epochs of the 546 rows), last-token pooling (PTEC's; a row ends in `COMPANY =`, where the model recalls
    # the company's facts): 0.81 / 0.78. Within noise of it: head lr 0.03 (0.81 / 0.76), prompt lr 0.03
    # (0.80 / 0.76), 1,000 steps (0.84 / 0.75). Worse: 20 vectors (0.77 / 0.74), batch 32 x 300 steps
    # (0.78 / 0.74), the head alone on a frozen prompt (0.67 / 0.66). Seeds 0-2: test 0.77-0.78.
    demo = ["method=ptec", "train.run_name=demo-classify", f"data.path={DEMO_CLASSIFY}", "data.source_template={text}",
            f"objective.labels=[{','.join(DEMO_SECTORS)}]", "objective.label_format=list",
            "objective.label_column=labels", "head.pooling=last",
            "head.lr=0.1", "prompt.num_virtual_tokens=10", "optim.lr=0.1", "optim.scheduler=linear",
            "optim.warmup_steps=10", "train.max_steps=600", "train.batch_size=16", "train.eval_every=200",
            "train.save_every=200"]
    cfg = load_config(None, [*demo, *args.overrides])
    print("softprompt demo --task classify: PTEC on the bundled causal LM, companies into sectors "
          "(softprompt/data/demo/classify)")
    # One intra-op thread: the model is 128 wide, so a second thread buys little, and on a machine whose cores
    # are busy (CI, other jobs) two threads waiting on each other took 5m46s where one took 26 s (600 steps,
    # 2 cores at load 4). Restored after, for a caller that runs main() in-process.
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:  # a canned run, as the LM demo: running it again replaces its own run dir
        result = train(cfg, resume=False, overwrite=True, on_accepted=args.release_output)
    finally:
        torch.set_num_threads(threads)
    if not _main_process():
        return 0
    if args.json:
        print_result(result, True)
        return 0

    def rows(metrics: dict) -> dict:
        return {k: v for k, v in metrics.items() if k.split("_", 1)[1] in DEMO_CLASSIFY_ROWS}

    print_result(replace(result, before=rows(result.before), best=rows(result.best), test=rows(result.test)), False)

    split, after = ("test", result.test) if "test_macro_f1" in result.test else ("eval", result.best)

    def f1(metrics: dict) -> str:
        return f"macro-F1 {metrics[split + '_macro_f1']:.3f}  micro-F1 {metrics[split + '_micro_f1']:.3f}"

    print(f"\nthe prompt ({cfg.prompt.num_virtual_tokens} vectors) and a linear head over {len(cfg.objective.labels)} "
          f"sectors: {result.trainable_parameters:,} trainable parameters; the base model stays frozen")
    print(f"held-out companies before training: {f1(result.before)}")
    print(f"held-out companies after training:  {f1(after)}  ({split} split, {result.steps} steps)")
    if f"{split}_tuned_macro_f1" in after:  # the per-label thresholds the run fitted on validation (saved in final/)
        print(f"  with per-label thresholds fitted on validation: macro-F1 {after[split + '_tuned_macro_f1']:.3f}  "
              f"micro-F1 {after[split + '_tuned_micro_f1']:.3f}")
    print(f"try it: softprompt classify {result.adapter_dir} \"the farmer sold a tasku =\"")
    return 0


def run_config(adapter: str) -> tuple[dict, str] | tuple[None, None]:
    """The config the adapter was trained with, and where it was read: the sidecar's (train writes it into
    final/), else the run dir's config.yaml (final/ of a run trained before sidecars recorded it)."""
    import yaml

    from softprompt.adapter import SIDECAR, read_json

    sidecar, run_file = Path(adapter) / SIDECAR, Path(adapter).parent / "config.yaml"
    if sidecar.is_file():
        config = read_json(sidecar, "re-export the adapter").get("config")
        if isinstance(config, dict):
            return config, str(sidecar)
    if run_file.is_file():
        try:
            config = yaml.safe_load(run_file.read_text())
        except (OSError, UnicodeDecodeError, yaml.YAMLError) as e:
            raise SoftPromptError(f"eval: {run_file} is not a readable config ({str(e).splitlines()[0]}); give the "
                                  "run's recipe: softprompt eval ADAPTER RECIPE.yaml") from None
        if isinstance(config, dict):
            return config, str(run_file)
    return None, None


def eval_config(adapter: str, items: list[str]):
    """The config eval runs with: the recipe given, else the adapter's run's own (never the demo defaults,
    which would score the adapter on the wrong data without a word); overrides apply on top."""
    from softprompt.config import config_with, load_config

    recipe, overrides = _recipe_and_overrides(items)
    if recipe is not None:
        return load_config(recipe, overrides), recipe
    config, where = run_config(adapter)
    if config is None:
        raise SoftPromptError(f"eval: {adapter} records no run config (no 'config' in its softprompt.json, no "
                              "config.yaml beside it), so the data to evaluate on is unknown; give the recipe it was "
                              f"trained with: softprompt eval {adapter} RECIPE.yaml [key=value ...]")
    return config_with(config, overrides), where


def cmd_eval(args) -> int:
    from softprompt.build import build_objective, complete_config
    from softprompt.data import load_eval_split
    from softprompt.export import load_adapter

    cfg, where = eval_config(args.adapter, args.items)
    cfg = complete_config(cfg)  # label names a recipe leaves to the data, read as train read them
    objective = build_objective(cfg)
    split, rows = load_eval_split(cfg.data, args.split)  # the test split, else the eval split (carved or not)
    model = load_adapter(args.adapter)
    if hasattr(objective, "use_decision"):  # e.g. the per-label thresholds the run fitted: eval adds tuned_* metrics
        objective.use_decision(model.decision)
    items = objective.encode(rows, model.tokenizer, cfg.data, model.kind, split)
    data = cfg.data.path + (f" ({cfg.data.name})" if cfg.data.name else "")
    if not args.json:  # before the metrics, which take a while: what is being scored
        print(f"data: {data}  split: {split}  rows: {len(items)}  (config: {where})", flush=True)
    metrics = objective.evaluate(model, items, cfg.train.eval_batch_size)
    if args.json:
        print(json.dumps({"data": data, "split": split, "rows": len(items), "config": where, **metrics}, indent=2))
        return 0
    print(table(["metric", split], [[k.split("_", 1)[1], _cell(v)] for k, v in metrics.items()]))
    return 0


def cmd_generate(args) -> int:
    from softprompt.export import load_adapter

    model = load_adapter(args.adapter)
    for text, out in zip(args.texts, model.generate(list(args.texts), max_new_tokens=args.max_new_tokens)):
        print(f"{text}{out}" if model.kind == "causal" else out)
    return 0


def cmd_serve_payload(args) -> int:
    """The request an engine takes for TEXT with the adapter's prompt (softprompt.serving), as JSON on stdout."""
    from softprompt import serving
    from softprompt.export import load_adapter

    model = load_adapter(args.adapter)
    sampling = {"max_tokens": args.max_tokens} if args.engine == "vllm" else {"max_new_tokens": args.max_tokens}
    body = serving.payload(model, args.text, engine=args.engine, dtype=args.dtype, model_name=args.model_name,
                           prompt_index=args.prompt_index, **sampling)
    print(serving.to_json(body))
    return 0


def cmd_classify(args) -> int:
    """Per-label probabilities and decisions from a classify run's adapter: one forward per batch."""
    from softprompt.config import config_with
    from softprompt.export import load_adapter
    from softprompt.predict import classify_texts

    texts = list(args.texts)
    if args.file:
        from softprompt.textfile import read_utf8

        texts += [line for line in read_utf8(Path(args.file), "--file").splitlines() if line.strip()]
    if not texts:
        raise SoftPromptError("classify: no texts; give TEXTS on the command line or --file with one text per line")
    threshold = _threshold(args.threshold)  # checked before the model loads
    config, _ = run_config(args.adapter)
    if config is None:
        raise SoftPromptError(f"classify: {args.adapter} records no run config (softprompt.json or config.yaml beside "
                              "it), so its labels are unknown; point at a classify run's final/")
    cfg = config_with(config, [])
    if cfg.objective.type != "classify":
        raise SoftPromptError(f"classify: {args.adapter} was trained with objective {cfg.objective.type!r}, not "
                              "classify; use softprompt generate for text-to-text adapters")
    if args.threshold is not None and not cfg.objective.multi_label:
        raise SoftPromptError("classify: --threshold decides multi-label runs; this one is multi-class and decides "
                              "by the most probable label, so drop --threshold")
    model = load_adapter(args.adapter)
    for p in classify_texts(model, texts, cfg.objective, cfg.data.source_template, cfg.train.eval_batch_size,
                            threshold=threshold):
        if args.json:
            print(json.dumps({"text": p.text, "labels": p.labels, "probabilities": p.probabilities}))
        else:
            top = ", ".join(f"{k} {v:.3f}" for k, v in sorted(p.probabilities.items(), key=lambda kv: -kv[1])[:3])
            print(f"{'; '.join(p.labels) or '(none)'}\t{p.text}\t(top: {top})")
    return 0


def _threshold(value: str | None) -> float | str | None:
    """--threshold as classify_texts takes it: None, 'tuned', or a probability."""
    if value is None or value == "tuned":
        return value
    try:
        number = float(value)
    except ValueError:
        number = float("nan")
    if not 0 <= number <= 1:
        raise SoftPromptError(f"classify: --threshold must be a probability in [0, 1] or 'tuned', got {value!r}")
    return number


def cmd_export(args) -> int:
    """Turn a checkpoint (step_NNNNNN/) into an adapter dir. Everything is checked before anything is written."""
    from softprompt.export import check_hub_push, export_checkpoint, push_to_hub

    if args.push_to_hub:
        check_hub_push(args.push_to_hub)  # offline or unreachable: refused before anything is written
    out = export_checkpoint(args.checkpoint, args.out)
    print(out)
    if args.push_to_hub:
        print(f"pushed to {push_to_hub(out, args.push_to_hub, private=args.private)}")
    return 0


def cmd_compress(args) -> int:
    """Compress a causal LM (prune and/or quantize) into a checkpoint transformers reloads, with its record."""
    from softprompt.compress import CompressConfig, compress, read_record

    cfg = CompressConfig(method=args.method, sparsity=args.sparsity, structure=args.structure, bits=args.bits,
                         group_size=None if args.group_size == 0 else args.group_size, calibration=args.calibration,
                         text_field=args.text_field, num_samples=args.num_samples, seq_len=args.seq_len, seed=args.seed)
    out = compress(args.source, args.out, cfg, python=args.python, overwrite=args.overwrite)
    measured = read_record(out)["measured"]
    print(f"{out}: {cfg.method}, sparsity {measured['sparsity']:.3f}, at most {measured['max_levels_per_group']} "
          f"values per {'group' if cfg.quantizes else 'row'} over {measured['layers']} layers (record: {out}/compression.json)")
    return 0


def cmd_perplexity(args) -> int:
    """Perplexity (and task accuracy) of every base with and without every prompt, on identical tokens."""
    from softprompt import recovery_report as report

    prompts = report.parse_named(args.prompt, "prompt")
    unscored = report.selection_read(prompts)  # a bank's selector reads each block's first tokens
    cells = report.run(report.parse_named(args.base, "base"), prompts,
                       report.parse_named(args.text, "text"), split=args.split, text_field=args.text_field,
                       block_size=args.block_size, max_blocks=args.max_blocks, batch_size=args.batch_size,
                       task=args.task, task_split=args.task_split, max_task_rows=args.max_task_rows,
                       reference=args.reference)
    protocol = (f"Protocol: split `{args.split}` of each text cut into {args.block_size}-token blocks (the tail "
                f"dropped{f', the first {args.max_blocks} blocks' if args.max_blocks else ''}); tokens "
                f"{max(unscored, 1) + 1}..{args.block_size} of every block scored"
                f"{f' (tokens 1..{unscored} are what a prompt bank reads to choose its prompt)' if unscored else ''}, "
                "the prompt prepended to every block; the same tokens for every cell. "
                f"Reference for the gap: `{args.reference or args.base[0].partition('=')[0]}`.")
    files = report.write(cells, Path(args.out), protocol) if args.out else []
    print(report.markdown(cells, protocol))
    for f in files:
        print(f"wrote {f}")
    return 0


def cmd_budget(args) -> int:
    """DePT's (m, r) pairs within a vanilla prompt's parameter budget l*d."""
    from softprompt.methods.dept import format_budget

    print(format_budget(args.d, args.s, args.l, args.step))
    return 0


def _main_process() -> bool:
    import os

    return os.environ.get("RANK", "0") == "0"


class UsageError(Exception):
    """A command line argparse refuses; main prints it as one line (argparse would print usage + error)."""


class Parser(argparse.ArgumentParser):
    """argparse with one-line errors; a subcommand's parser (`intermixed`) takes its options anywhere, so
    `train R.yaml --resume optim.lr=0.1` is the recipe, the flag and an override (plain parsing ends the
    positionals at the first option and refuses the override after it)."""

    def __init__(self, *args, intermixed: bool = False, **kwargs):
        kwargs.setdefault("allow_abbrev", False)  # `train --resum` is an unknown flag, not --resume
        super().__init__(*args, **kwargs)
        self.intermixed, self._mixing = intermixed, False

    def parse_known_args(self, args=None, namespace=None):
        if not self.intermixed or self._mixing:  # parse_known_intermixed_args calls back in here
            return super().parse_known_args(args, namespace)
        self._mixing = True
        try:
            return self.parse_known_intermixed_args(args, namespace)
        finally:
            self._mixing = False

    def error(self, message: str):
        raise UsageError(f"{message} (see `{self.prog} --help`)")


def positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a whole number > 0, got {text!r}") from None
    if value <= 0:
        raise argparse.ArgumentTypeError(f"must be > 0, got {value}")
    return value


ADAPTER_HELP = "an adapter dir: a run's final/ (checkpoints/RUN/final) or a dir written by `softprompt export`"
JSON_HELP = "print the summary as JSON (for scripts) instead of a table"


def parser() -> argparse.ArgumentParser:
    ap = Parser(prog="softprompt", description="Soft-prompt tuning for Hugging Face models.")
    ap.add_argument("--version", action="version", version=f"softprompt {__version__}")
    sub = ap.add_subparsers(dest="command", required=True)

    def command(name: str, help: str, usage: str | None = None):
        return sub.add_parser(name, help=help, description=help, usage=usage, intermixed=True)

    p = command("train", "train from a YAML recipe with key.sub=value overrides",
                "softprompt train [RECIPE] [key=value ...] [--resume [PATH]] [--overwrite] [--json]")
    p.add_argument("items", nargs="*", metavar="RECIPE|key=value",
                   help="a YAML recipe (default: the bundled demo), then overrides of its keys, e.g. train.max_steps=20")
    p.add_argument("--resume", nargs="?", const=True, default=False, metavar="PATH",
                   help="continue a run: with no PATH, the latest checkpoint of the run dir (train.output_dir/"
                        "train.run_name); with PATH, that checkpoint (RUN/step_NNNNNN/) or run dir (with no "
                        "recipe, the run's own config). It is an error when there is no checkpoint")
    p.add_argument("--overwrite", action="store_true",
                   help="replace the run already in the run dir (checkpoints, final/, metrics.jsonl); without it "
                        "a new run there is refused")
    p.add_argument("--json", action="store_true", help=JSON_HELP)
    p.set_defaults(fn=cmd_train)
    p = command("demo", "prompt-tune the bundled model offline and print accuracy (or macro-F1) before/after",
                "softprompt demo [key=value ...] [--task lm|classify] [--json]")
    p.add_argument("overrides", nargs="*", metavar="key=value", help="overrides of the demo's config keys")
    p.add_argument("--task", choices=("lm", "classify"), default="lm",
                   help="lm (default): a prompt that makes the model answer a noun's color; classify: PTEC, a prompt "
                        "and a linear head sorting the bundled companies into sectors (multi-label, macro-F1)")
    p.add_argument("--json", action="store_true", help=JSON_HELP)
    p.set_defaults(fn=cmd_demo)
    p = command("eval", "evaluate an adapter on its run's data (or a recipe's)",
                "softprompt eval ADAPTER [RECIPE] [key=value ...] [--split S] [--json]")
    p.add_argument("adapter", metavar="ADAPTER", help=ADAPTER_HELP)
    p.add_argument("items", nargs="*", metavar="RECIPE|key=value",
                   help="a YAML recipe whose data to use (default: the config the adapter's run recorded, in its "
                        "softprompt.json or the run dir's config.yaml), then overrides of its keys")
    p.add_argument("--split", default=None, metavar="S",
                   help="the split to evaluate (default: data.test_split, else data.eval_split, or the rows "
                        "data.validation_fraction carves from the train split)")
    p.add_argument("--json", action="store_true", help="print the metrics as JSON instead of a table")
    p.set_defaults(fn=cmd_eval)
    p = command("generate", "continue texts with an adapter",
                "softprompt generate ADAPTER TEXTS [TEXTS ...] [--max-new-tokens N]")
    p.add_argument("adapter", metavar="ADAPTER", help=ADAPTER_HELP)
    p.add_argument("texts", nargs="+", metavar="TEXTS", help="input texts to continue, one batch")
    p.add_argument("--max-new-tokens", type=positive_int, default=20, metavar="N",
                   help="tokens to generate per text (default 20)")
    p.set_defaults(fn=cmd_generate)
    p = command("serve-payload", "the request a serving engine takes for a text with the adapter's prompt (JSON)",
                "softprompt serve-payload ADAPTER TEXT [--engine vllm|sglang] [--dtype D] [--model-name NAME]")
    p.add_argument("adapter", metavar="ADAPTER", help=ADAPTER_HELP)
    p.add_argument("text", metavar="TEXT", help="the input text; the prompt goes before its tokens, BOS included")
    p.add_argument("--engine", default="vllm", choices=("vllm", "vllm-chat", "sglang"),
                   help="vllm: a Completions body (prompt_embeds, --enable-prompt-embeds); sglang: a /generate body "
                        "(input_embeds); vllm-chat is refused for adapters trained before the raw text")
    p.add_argument("--dtype", default=None, help="the rows' dtype on the wire (default: the base's)")
    p.add_argument("--model-name", default=None, help="vllm: the served model's name for the body's model field")
    p.add_argument("--prompt-index", type=int, default=None, help="a bank: this prompt instead of its selector's choice")
    p.add_argument("--max-tokens", type=positive_int, default=32, metavar="N", help="tokens to generate (default 32)")
    p.set_defaults(fn=cmd_serve_payload)
    p = command("classify", "label texts with a classify run's adapter (a probability per label)",
                "softprompt classify ADAPTER [TEXTS ...] [--file F] [--json]")
    p.add_argument("adapter", metavar="ADAPTER", help="a classify run's final/ (its labels and template come from the run)")
    p.add_argument("texts", nargs="*", metavar="TEXTS", help="texts to label")
    p.add_argument("--file", default=None, metavar="F", help="a UTF-8 file with one text per line (after TEXTS)")
    p.add_argument("--json", action="store_true", help="one JSON object per text: its labels and every probability")
    p.add_argument("--threshold", default=None, metavar="T|tuned",
                   help="decide every label at probability T, or 'tuned': at the per-label thresholds the run "
                        "fitted on its eval split (default: the run's objective.threshold, 0.5)")
    p.set_defaults(fn=cmd_classify)
    p = command("export", "write an adapter dir (PEFT + serving) from a checkpoint")
    p.add_argument("checkpoint", help="a run's checkpoint dir, checkpoints/RUN/step_NNNNNN")
    p.add_argument("out", help="the adapter dir to create (new or empty)")
    p.add_argument("--push-to-hub", metavar="REPO_ID", help="then upload it (model card included) to this hub model "
                   "repo, created if needed, with huggingface_hub's login (HF_TOKEN or `hf auth login`)")
    p.add_argument("--private", action="store_true", help="with --push-to-hub: create the repo private")
    p.set_defaults(fn=cmd_export)
    p = command("compress", "prune and/or quantize a causal LM into a checkpoint (recover it with method recovery)",
                "softprompt compress SOURCE OUT --method M [--sparsity S] [--structure 2:4] [--bits B] [--calibration F]")
    p.add_argument("source", help="the dense model: hub id, local dir, demo or demo-large")
    p.add_argument("out", help="the checkpoint dir to create (its record: OUT/compression.json)")
    p.add_argument("--method", required=True, choices=("magnitude", "wanda", "sparsegpt", "gptq", "sparsegpt+gptq"),
                   help="magnitude: torch.nn.utils.prune; the others one-shot through llmcompressor (sparsegpt+gptq: "
                        "the paper's 8x, 50%% sparse and 4-bit). bitsandbytes quantizes at load time instead "
                        "(model.quantization in a recipe)")
    p.add_argument("--sparsity", type=float, default=0.5, help="fraction of each layer's weights pruned (default 0.5)")
    p.add_argument("--structure", choices=("unstructured", "2:4"), default="unstructured",
                   help="unstructured (default) or 2:4 (two of every four inputs kept)")
    p.add_argument("--bits", type=int, default=4, help="GPTQ weight bits: 2, 3, 4 or 8 (default 4)")
    p.add_argument("--group-size", type=int, default=128, metavar="G",
                   help="GPTQ columns per scale (default 128; 0: one scale per row, the paper's setting)")
    p.add_argument("--calibration", default=None, metavar="F",
                   help="calibration text for the one-shot methods: a .txt, a .jsonl with a text field, or demo")
    p.add_argument("--text-field", default="text", help="the .jsonl field holding the text (default text)")
    p.add_argument("--num-samples", type=positive_int, default=128, help="calibration windows (default 128)")
    p.add_argument("--seq-len", type=positive_int, default=512, help="tokens per calibration window (default 512)")
    p.add_argument("--seed", type=int, default=0, help="which windows of the text are taken (default 0)")
    p.add_argument("--python", default=None, metavar="PY",
                   help="the python of an environment with llmcompressor (default: $SOFTPROMPT_COMPRESS_PYTHON, "
                        "else this one if it has llmcompressor)")
    p.add_argument("--overwrite", action="store_true", help="replace OUT if it exists")
    p.set_defaults(fn=cmd_compress)
    p = command("perplexity", "perplexity of bases with and without prompts on identical tokens (dense vs compressed vs "
                "recovered, and the transfer matrix), as markdown, CSV and plots",
                "softprompt perplexity --base NAME=PATH[@bnb-4bit] ... [--prompt NAME=ADAPTER ...] --text NAME=DATA ... "
                "[--task DATA] [--out DIR]")
    p.add_argument("--base", action="append", default=[], metavar="NAME=PATH",
                   help="a model (dir, hub id, demo, demo-large), optionally @bnb-4bit|@bnb-fp4|@bnb-8bit to quantize "
                        "it while loading; repeat for each base (the first is the reference unless --reference)")
    p.add_argument("--prompt", action="append", default=[], metavar="NAME=ADAPTER",
                   help="an adapter dir whose prompt is applied to every base; repeat for each")
    p.add_argument("--text", action="append", default=[], metavar="NAME=DATA",
                   help="generic text: a dir of split files with a text column, demo-text or demo-large-text; repeat")
    p.add_argument("--split", default="test", help="the text split scored (default test)")
    p.add_argument("--text-field", default="text", help="the column holding the text (default text)")
    p.add_argument("--block-size", type=positive_int, default=1024, help="tokens per block (default 1024)")
    p.add_argument("--max-blocks", type=positive_int, default=None, help="score only the first N blocks of each text")
    p.add_argument("--batch-size", type=positive_int, default=8, help="blocks per forward (default 8)")
    p.add_argument("--task", default=None, metavar="DATA",
                   help="a task with source/target columns (e.g. demo-large-task): exact-match accuracy per cell")
    p.add_argument("--task-split", default="test", help="the task split (default test)")
    p.add_argument("--max-task-rows", type=positive_int, default=None, help="score only the first N task rows")
    p.add_argument("--reference", default=None, metavar="NAME", help="the base whose perplexity closes the gap (default: the first)")
    p.add_argument("--out", default=None, metavar="DIR",
                   help="write perplexity.md, perplexity.csv, perplexity.png and transfer.png here")
    p.set_defaults(fn=cmd_perplexity)
    p = command("budget", "DePT: (prompt length m, rank r) pairs within a vanilla prompt's parameter budget")
    p.add_argument("--d", type=positive_int, required=True, help="hidden size of the base model (768 for T5-base)")
    p.add_argument("--s", type=positive_int, required=True, help="DePT offset length, the max input length (256 in the paper)")
    p.add_argument("--l", type=positive_int, required=True, help="vanilla prompt length whose budget l*d is matched (100)")
    p.add_argument("--step", type=positive_int, default=10, help="list every step-th prompt length m (default 10)")
    p.set_defaults(fn=cmd_budget)
    return ap


def _resume_takes_no_override(argv: list[str]) -> list[str]:
    """`--resume` takes an optional PATH, and argparse gives it whatever follows, so `train R.yaml --resume
    optim.lr=0.1` would resume from a dir named 'optim.lr=0.1'. An override (has '='), an existing file or a
    .yaml/.yml name is no PATH: the bare flag moves to the end of the line, where it takes nothing."""
    for i, item in enumerate(argv[:-1]):
        following = Path(argv[i + 1])
        if item == "--resume" and not following.is_dir() and (
                "=" in argv[i + 1] or following.is_file() or following.suffix in (".yaml", ".yml")):
            return [*argv[:i], *argv[i + 1:], "--resume"]
    return argv


def main(argv: list[str] | None = None) -> int:
    """Run a command. Bad input (SoftPromptError, a usage error) is one stderr line and exit code 2; Ctrl-C is
    `softprompt: interrupted` and 130. Warnings and log lines are held while the command runs and shown only
    when it does not end on bad input, so the error line stands alone."""
    held = HeldOutput()
    try:
        argv = list(sys.argv[1:] if argv is None else argv)
        if argv[:1] == ["train"]:
            argv = _resume_takes_no_override(argv)
        args = parser().parse_args(argv)
        _quiet_libraries()
        args.release_output = held.release  # a long command (train) releases them once its input is accepted
        with held:
            code = args.fn(args)
    except (SoftPromptError, UsageError) as e:
        print("softprompt: error: " + " ".join(str(e).split()), file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("softprompt: interrupted", file=sys.stderr)
        return 130
    except BaseException:
        held.replay()  # a bug or a deliberate exit: its context is worth seeing
        raise
    held.replay()
    return code


class HeldOutput:
    """Collects `warnings` and `logging` records (every logger, library ones included) instead of printing
    them; `replay` prints them afterwards through the handlers they would have reached."""

    def __init__(self):
        self.records: list = []
        self.warned: list = []
        self._catch = None
        self._call = None

    def __enter__(self):
        self._catch = warnings.catch_warnings(record=True)
        self.warned = self._catch.__enter__()
        self._call = logging.Logger.callHandlers
        records = self.records
        logging.Logger.callHandlers = lambda logger, record: records.append((logger, record))
        return self

    def release(self) -> None:
        """Stop holding and print what was held: the input is accepted, later output streams as usual."""
        if self._call is not None and logging.Logger.callHandlers is not self._call:
            self.__exit__(None, None, None)
            self._catch = None
            self.replay()

    def __exit__(self, *exc) -> None:
        if self._catch is None:  # already released
            return
        logging.Logger.callHandlers = self._call
        self._catch.__exit__(*exc)

    def replay(self) -> None:
        call, self._call = self._call, None
        if call is None:
            return
        for logger, record in self.records:
            call(logger, record)
        for w in self.warned:
            warnings.showwarning(w.message, w.category, w.filename, w.lineno, w.file, w.line)
        self.records, self.warned = [], []


def _quiet_libraries() -> None:
    import os
    import warnings

    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    warnings.filterwarnings("ignore", category=FutureWarning)
    import transformers

    transformers.logging.set_verbosity_error()
    transformers.logging.disable_progress_bar()


if __name__ == "__main__":
    raise SystemExit(main())
