"""Command line: `softprompt train|demo|eval|generate|export|budget`.

    softprompt demo                                   # the embedded default, offline, ~1-2 min on CPU
    softprompt train recipes/debug/tiny-causal.yaml train.max_steps=20 --resume
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


def cmd_train(args) -> int:
    from softprompt.config import load_config
    from softprompt.train import train

    recipe, overrides = _recipe_and_overrides(args.items)
    cfg = load_config(recipe, overrides)
    result = train(cfg, resume=args.resume, on_accepted=args.release_output)
    if not _main_process():
        return 0
    summary = {
        "adapter": str(result.adapter_dir), "steps": result.steps, "trainable_parameters": result.trainable_parameters,
        "before": result.before, "best_eval": result.best, "test": result.test,
    }
    print(json.dumps(summary, indent=2))
    return 0


def cmd_demo(args) -> int:
    """Prompt tuning on the bundled model and task: held-out accuracy before and after."""
    from softprompt.config import load_config
    from softprompt.train import train

    # AdamW at 0.1 with a short warmup and linear decay: the demo's 1M-parameter model has small
    # embeddings, and 0.003 reaches only ~55% in 300 steps (softprompt/data/demo/README.md).
    demo = ["train.run_name=demo", "optim.lr=0.1", "optim.scheduler=linear", "optim.warmup_steps=10"]
    cfg = load_config(None, [*demo, *args.overrides])
    print("softprompt demo: tuning a soft prompt on the bundled causal LM (softprompt/data/demo)")
    result = train(cfg, resume=False, on_accepted=args.release_output)
    if not _main_process():
        return 0
    before = result.before.get("test_accuracy", result.before.get("eval_accuracy"))
    after = result.test.get("test_accuracy", result.best.get("eval_accuracy"))
    print(f"\ntrainable parameters: {result.trainable_parameters:,} (the prompt: "
          f"{cfg.prompt.num_virtual_tokens} x {result.trainable_parameters // cfg.prompt.num_virtual_tokens})")
    print(f"held-out accuracy before prompt tuning: {before:.1%}")
    print(f"held-out accuracy after prompt tuning:  {after:.1%}  (test split, {result.steps} steps)")
    print(f"adapter: {result.adapter_dir}  curves: {result.run_dir / 'curves.png'}")
    return 0


def cmd_eval(args) -> int:
    from softprompt.build import build_objective
    from softprompt.config import load_config
    from softprompt.data import load_split
    from softprompt.export import load_adapter

    recipe, overrides = _recipe_and_overrides(args.items)
    cfg = load_config(recipe, overrides)
    split = args.split or cfg.data.test_split or cfg.data.eval_split
    if not split:
        raise SoftPromptError("eval: no split to evaluate; pass --split NAME or set data.test_split or data.eval_split")
    objective = build_objective(cfg)
    model = load_adapter(args.adapter)
    items = objective.encode(load_split(cfg.data.path, split, cfg.data.name), model.tokenizer, cfg.data, model.kind, split)
    metrics = objective.evaluate(model, items, cfg.train.eval_batch_size)
    print(json.dumps({"split": split, **metrics}, indent=2))
    return 0


def cmd_generate(args) -> int:
    from softprompt.export import load_adapter

    model = load_adapter(args.adapter)
    for text, out in zip(args.texts, model.generate(list(args.texts), max_new_tokens=args.max_new_tokens)):
        print(f"{text}{out}" if model.kind == "causal" else out)
    return 0


def cmd_export(args) -> int:
    """Turn a checkpoint (step_NNNNNN/) into an adapter dir. Everything is checked before anything is written."""
    from softprompt.export import export_checkpoint

    print(export_checkpoint(args.checkpoint, args.out))
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
    def __init__(self, *args, **kwargs):
        kwargs.setdefault("allow_abbrev", False)  # `train --resum` is an unknown flag, not --resume
        super().__init__(*args, **kwargs)

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


def parser() -> argparse.ArgumentParser:
    ap = Parser(prog="softprompt", description="Soft-prompt tuning for Hugging Face models.")
    sub = ap.add_subparsers(dest="command", required=True)
    p = sub.add_parser("train", help="train from a YAML recipe with key.sub=value overrides")
    p.add_argument("items", nargs="*", metavar="RECIPE|key=value")
    p.add_argument("--resume", action="store_true", help="continue from the run's latest checkpoint")
    p.set_defaults(fn=cmd_train)
    p = sub.add_parser("demo", help="prompt-tune the bundled model offline and print accuracy before/after")
    p.add_argument("overrides", nargs="*", metavar="key=value")
    p.set_defaults(fn=cmd_demo)
    p = sub.add_parser("eval", help="evaluate an adapter on a recipe's data")
    p.add_argument("adapter")
    p.add_argument("items", nargs="*", metavar="RECIPE|key=value")
    p.add_argument("--split", default=None)
    p.set_defaults(fn=cmd_eval)
    p = sub.add_parser("generate", help="generate with an adapter")
    p.add_argument("adapter")
    p.add_argument("texts", nargs="+")
    p.add_argument("--max-new-tokens", type=positive_int, default=20)
    p.set_defaults(fn=cmd_generate)
    p = sub.add_parser("export", help="write an adapter dir (PEFT + serving) from a checkpoint")
    p.add_argument("checkpoint")
    p.add_argument("out")
    p.set_defaults(fn=cmd_export)
    p = sub.add_parser("budget", help="DePT: (prompt length m, rank r) pairs within a vanilla prompt's parameter budget")
    p.add_argument("--d", type=positive_int, required=True, help="hidden size of the base model (768 for T5-base)")
    p.add_argument("--s", type=positive_int, required=True, help="DePT offset length, the max input length (256 in the paper)")
    p.add_argument("--l", type=positive_int, required=True, help="vanilla prompt length whose budget l*d is matched (100)")
    p.add_argument("--step", type=positive_int, default=10, help="list every step-th prompt length m (default 10)")
    p.set_defaults(fn=cmd_budget)
    return ap


def main(argv: list[str] | None = None) -> int:
    """Run a command. Bad input (SoftPromptError, a usage error) is one stderr line and exit code 2; Ctrl-C is
    `softprompt: interrupted` and 130. Warnings and log lines are held while the command runs and shown only
    when it does not end on bad input, so the error line stands alone."""
    held = HeldOutput()
    try:
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
