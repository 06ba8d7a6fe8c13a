"""Bad input, table-driven: every case gets exit code 2 (130 for Ctrl-C), exactly one stderr line naming the
problem, no traceback, no warning lines around it, and nothing written on disk.

Each case writes its inputs under tmp_path, runs `softprompt.cli.main(argv)` in-process (cwd = tmp_path/cwd,
so default output dirs land there too) and compares a snapshot of every file and dir under tmp_path before
and after. A few cases also run through a real `python -m softprompt` process.
"""

from __future__ import annotations

import json
import logging
import os
import pickle
import shutil
import subprocess
import sys
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import pytest
import torch

from helpers import overrides, write_task
from softprompt.cli import main


@dataclass
class Env:
    tmp: Path
    data: Path  # a valid task dir (train/validation/test.jsonl)
    model: str  # the tiny saved Llama (shared: cases that break a model copy it first)
    t5: str
    adapter: Path  # a valid adapter dir copied into tmp (cases may corrupt it)
    out: Path  # train.output_dir

    def train(self, *extra: str, recipe: str | None = None) -> list[str]:
        return ["train", *([recipe] if recipe else []), *overrides(self.model, self.data, self.out), *extra]

    def write(self, name: str, content: str | bytes) -> Path:
        path = self.tmp / "in" / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(content if isinstance(content, bytes) else content.encode())
        return path

    def single_file(self, name: str, content: str | bytes) -> list[str]:
        """Train on one data file (the train split only)."""
        return self.train(f"data.path={self.write(name, content)}", "data.eval_split=null", "data.test_split=null")

    def model_copy(self, drop: tuple[str, ...] = (), truncate: str | None = None) -> Path:
        dst = self.tmp / "in" / "model"
        shutil.copytree(self.model, dst)
        for pattern in drop:
            for f in dst.glob(pattern):
                f.unlink()
        if truncate:
            data = (dst / truncate).read_bytes()
            (dst / truncate).write_bytes(data[: len(data) // 2])
        return dst

    def checkpoint(self, model: str | None = None) -> Path:
        """A checkpoint dir as train writes it (meta.json with the resolved config + trainable tensors)."""
        from safetensors.torch import save_file

        from softprompt.config import load_config, to_dict

        cfg = load_config(None, overrides(model or self.model, self.data, self.out))
        ckpt = self.tmp / "in" / "run" / "step_000003"
        ckpt.mkdir(parents=True)
        (ckpt / "meta.json").write_text(json.dumps({"config": to_dict(cfg), "metrics": []}))
        save_file({"prompt.prompt": torch.zeros(4, 32)}, str(ckpt / "trainable.safetensors"))
        return ckpt

    def tensor_file(self, name: str, tensors: dict) -> None:
        from safetensors.torch import save_file

        save_file(tensors, str(self.adapter / name))


@dataclass
class Case:
    name: str
    setup: Callable[[Env], list[str]]  # writes inputs, returns argv
    match: str  # what the one line must name (the key or file at fault)
    code: int = 2
    patch: Callable | None = None  # (monkeypatch) -> None, for interrupts and warning noise


def jsonl(*rows) -> str:
    return "".join((r if isinstance(r, str) else json.dumps(r)) + "\n" for r in rows)


GOOD = {"source": "apple =", "target": " red"}


def recipe(text: str | bytes):
    return lambda e: e.train(recipe=str(e.write("recipe.yaml", text)))


def override(*items: str):
    return lambda e: e.train(*items)


def truncated(e: Env, name: str = "adapter_model.safetensors") -> None:
    data = (e.adapter / name).read_bytes()
    (e.adapter / name).write_bytes(data[: len(data) // 2])


def _corrupt_adapter(fn):
    def setup(e: Env) -> list[str]:
        fn(e)
        return ["generate", str(e.adapter), "apple ="]

    return setup


def _peft_only(e: Env) -> None:
    (e.adapter / "softprompt.json").unlink()


def _peft_cfg(e: Env, **changes) -> None:
    _peft_only(e)
    cfg = json.loads((e.adapter / "adapter_config.json").read_text())
    cfg.update(changes)
    for k, v in list(cfg.items()):
        if v is _DROP:
            del cfg[k]
    (e.adapter / "adapter_config.json").write_text(json.dumps(cfg))


_DROP = object()


def _peft_t5_adapter(e: Env, submodules: int | None = None, rows: int | None = None, task: str | None = None) -> None:
    """A PEFT seq2seq PROMPT_TUNING adapter saved by peft itself (default num_transformer_submodules 2)."""
    import peft
    from safetensors.torch import save_file
    from transformers import AutoModelForSeq2SeqLM

    shutil.rmtree(e.adapter)
    base = AutoModelForSeq2SeqLM.from_pretrained(e.t5)
    pm = peft.get_peft_model(base, peft.PromptTuningConfig(task_type="SEQ_2_SEQ_LM", num_virtual_tokens=4))
    pm.save_pretrained(str(e.adapter))
    if submodules is not None or task is not None:
        cfg = json.loads((e.adapter / "adapter_config.json").read_text())
        cfg["num_transformer_submodules"] = submodules or cfg["num_transformer_submodules"]
        cfg["task_type"] = task or cfg["task_type"]
        (e.adapter / "adapter_config.json").write_text(json.dumps(cfg))
    if rows is not None:
        save_file({"prompt_embeddings": torch.zeros(rows, 32)}, str(e.adapter / "adapter_model.safetensors"))


def _export(out: Callable[[Env], str], ckpt: Callable[[Env], Path] | None = None):
    def setup(e: Env) -> list[str]:
        c = (ckpt or Env.checkpoint)(e)
        return ["export", str(c), out(e)]

    return setup


def _nonempty(e: Env) -> str:
    d = e.tmp / "in" / "exported"
    d.mkdir(parents=True)
    (d / "notes.txt").write_text("mine")
    return str(d)


def _a_file(e: Env) -> str:
    return str(e.write("exported", "not a dir"))


def _ckpt_meta(text: str):
    def make(e: Env) -> Path:
        c = e.checkpoint()
        (c / "meta.json").write_text(text)
        return c

    return make


def _ckpt_truncated(e: Env) -> Path:
    c = e.checkpoint()
    data = (c / "trainable.safetensors").read_bytes()
    (c / "trainable.safetensors").write_bytes(data[:20])
    return c


def _finished_run(e: Env, ckpt: bool = True) -> None:
    """What a run leaves in its run dir (train.run_name t under e.out): metrics.jsonl, and a checkpoint and final/."""
    run = e.out / "t"
    run.mkdir(parents=True)
    (run / "metrics.jsonl").write_text(json.dumps({"step": 1, "train_loss": 1.0}) + "\n")
    if ckpt:
        (run / "step_000003").mkdir()
        shutil.copytree(e.adapter, run / "final")


def _raise_interrupt(*args, **kwargs):
    raise KeyboardInterrupt


def _module_attr(target: str):
    import importlib

    module, name = target.rsplit(".", 1)
    return importlib.import_module(module), name  # softprompt.train is also a function: import the module


def _interrupt(target: str):
    return lambda mp: mp.setattr(*_module_attr(target), _raise_interrupt)


def _noisy(target: str):
    """Wrap `target` so it prints library-style warnings and log lines before doing its work."""

    def patch(mp):
        module, name = _module_attr(target)
        original = getattr(module, name)

        def noisy(*args, **kwargs):
            warnings.warn("some library deprecation", UserWarning)
            logging.getLogger("transformers.modeling_utils").warning("Some weights were not initialized")
            logging.getLogger("softprompt.model").warning("our own warning")
            logging.getLogger("datasets.builder").warning("Generating split")
            return original(*args, **kwargs)

        mp.setattr(module, name, noisy)

    return patch


def _pickled(e: Env) -> Path:
    path = e.tmp / "in" / "prompt.pt"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(pickle.dumps(Path("not a tensor")))
    return path


def recovery(e: "Env", *extra: str) -> list[str]:
    """`train` with method recovery (whose objective has no generation settings) on the tiny model and data."""
    return ["train", "method=recovery", *(o for o in overrides(e.model, e.data, e.out)
                                           if not o.startswith("objective.")), *extra]



CASES = [
    # --- recipes: encoding, emptiness, shape -------------------------------------------------------------
    Case("recipe empty file", recipe(b""), "empty"),
    Case("recipe only comments", recipe(b"# nothing here\n\n"), "empty"),
    Case("recipe utf-16 with BOM", recipe("train:\n  max_steps: 3\n".encode("utf-16")), "UTF-8"),
    Case("recipe latin-1 bytes", recipe("data:\n  source_template: 'caf\u00e9 {source}'\n".encode("latin-1")), "UTF-8"),
    Case("recipe invalid yaml", recipe("model: [\n"), "not valid YAML"),
    Case("recipe is a list", recipe("- a\n- b\n"), "mapping"),
    Case("recipe section is a scalar", recipe("train: 5\n"), "train"),
    Case("recipe unknown key", recipe("train:\n  max_stepz: 3\n"), "max_stepz"),
    Case("recipe value wrong type", recipe("model:\n  kind: [causal]\n"), "model.kind"),
    Case("recipe is a directory", lambda e: e.train(recipe=str(e.data)), "recipe"),
    Case("recipe missing .yml", lambda e: e.train(recipe=str(e.tmp / "foo.yml")), "recipe not found"),
    Case("bare key without =", lambda e: ["train", "model.kind"], "model.kind=VALUE"),
    Case("bare key after recipe", lambda e: e.train("model.kind", recipe=str(e.write("r.yaml", "{}\n"))), "key"),
    # --- overrides: unknown keys and wrong types -----------------------------------------------------------
    Case("unknown section", override("foo.bar=1"), "foo"),
    Case("unknown key", override("train.max_stepz=3"), "max_stepz"),
    Case("override into a value", override("train.max_steps.x=1"), "train.max_steps"),
    Case("empty key", override("=3"), "key"),
    Case("int given text", override("train.max_steps=abc"), "train.max_steps"),
    Case("int given float", override("train.max_steps=2.5"), "train.max_steps"),
    Case("int given null", override("train.batch_size=null"), "train.batch_size"),
    Case("bool given text", override("train.progress_bar=maybe"), "train.progress_bar"),
    Case("list given scalar", override("optim.betas=0.9"), "optim.betas"),
    Case("list of wrong length", override("optim.betas=[0.9]"), "optim.betas"),
    Case("float given text", override("optim.lr=fast"), "optim.lr"),
    Case("choice not valid", override("optim.scheduler=sometimes"), "optim.scheduler"),
    # --- values only the optimizer/scheduler/loop would notice --------------------------------------------
    Case("adam beta1 = 1", override("optim.betas=[1.0, 0.999]"), "optim.betas"),
    Case("adam beta2 negative", override("optim.betas=[0.9, -0.1]"), "optim.betas"),
    Case("eps zero", override("optim.eps=0"), "optim.eps"),
    Case("eps negative", override("optim.eps=-1e-8"), "optim.eps"),
    Case("weight decay negative", override("optim.weight_decay=-0.01"), "optim.weight_decay"),
    Case("lr nan", override("optim.lr=.nan"), "optim.lr"),
    Case("lr infinite", override("optim.lr=.inf"), "optim.lr"),
    Case("max_train_samples 0", override("data.max_train_samples=0"), "data.max_train_samples"),
    Case("max_eval_samples negative", override("data.max_eval_samples=-1"), "data.max_eval_samples"),
    Case("keep_checkpoints 0", override("train.keep_checkpoints=0"), "train.keep_checkpoints"),
    Case("warmup longer than max_steps", override("optim.warmup_steps=100"), "optim.warmup_steps"),
    Case("warmup negative", override("optim.warmup_steps=-1"), "optim.warmup_steps"),
    Case("max_grad_norm negative", override("optim.max_grad_norm=-1"), "optim.max_grad_norm"),
    Case("init_range zero", override("prompt.init=uniform", "prompt.init_range=0"), "prompt.init_range"),
    Case("vocab_top_k zero", override("prompt.vocab_top_k=0"), "prompt.vocab_top_k"),
    Case("patience zero", override("train.early_stopping_patience=0"), "train.early_stopping_patience"),
    # --- templates, checked before any data or model loads ------------------------------------------------
    Case("template positional {}", override("data.source_template=Q: {} A:"), "data.source_template"),
    Case("template positional {0}", override("data.target_template={0}"), "data.target_template"),
    Case("template unbalanced {", override("data.source_template={source"), "data.source_template"),
    Case("template unbalanced }", override("data.source_template=source} ="), "data.source_template"),
    Case("template attribute access", override("data.source_template={source.upper}"), "data.source_template"),
    Case("template index access", override("data.source_template={source[0]}"), "data.source_template"),
    Case("template conversion", override("data.source_template={source!r}"), "data.source_template"),
    Case("template format spec", override("data.target_template={target:>10}"), "data.target_template"),
    Case("template JSON braces", override('data.target_template={"answer": "{target}"}'), "{{"),
    Case("template missing column", override("data.source_template={question} ="), "question"),
    # --- data files --------------------------------------------------------------------------------------
    Case("null target", lambda e: e.single_file("d.jsonl", jsonl(GOOD, {"source": "sky =", "target": None})), "null"),
    Case("null source", lambda e: e.single_file("d.jsonl", jsonl(GOOD, {"source": None, "target": " blue"})), "null"),
    Case("row lacks a column", lambda e: e.single_file("d.jsonl", jsonl(GOOD, {"source": "sky ="})), "target"),
    Case("empty row", lambda e: e.single_file("d.jsonl", jsonl(GOOD, {"source": "", "target": ""})), "empty"),
    Case("empty target", lambda e: e.single_file("d.jsonl", jsonl(GOOD, {"source": "sky =", "target": ""})), "empty"),
    Case("csv row with extra field", lambda e: e.single_file("d.csv", "source,target\napple =,red\nsky =,blue,x\n"),
         "field"),
    Case("csv row with missing field", lambda e: e.single_file("d.csv", "source,target\napple =,red\nsky =\n"), "field"),
    Case("csv latin-1", lambda e: e.single_file("d.csv", "source,target\ncaf\u00e9 =,red\n".encode("latin-1")),
         "UTF-8"),
    Case("jsonl latin-1", lambda e: e.single_file("d.jsonl", jsonl({"source": "caf\u00e9 =", "target": " red"}
                                                                    ).replace("\\u00e9", "\u00e9").encode("latin-1")),
         "UTF-8"),
    Case("jsonl utf-16", lambda e: e.single_file("d.jsonl", jsonl(GOOD).encode("utf-16")), "UTF-8"),
    Case("json latin-1", lambda e: e.single_file("d.json", '[{"source": "caf\u00e9", "target": "x"}]'.encode("latin-1")),
         "UTF-8"),
    Case("jsonl line is a list", lambda e: e.single_file("d.jsonl", jsonl(GOOD, "[1, 2]")), "line 2"),
    Case("jsonl line is a string", lambda e: e.single_file("d.jsonl", jsonl(GOOD, '"hello"')), "line 2"),
    Case("jsonl invalid json", lambda e: e.single_file("d.jsonl", jsonl(GOOD, '{"source": "a", ')), "line 2"),
    Case("json invalid", lambda e: e.single_file("d.json", '[{"source": "a", "target": "b"}'), "d.json"),
    Case("data file empty", lambda e: e.single_file("d.jsonl", ""), "empty"),
    Case("data file missing", override("data.path=/nonexistent/d.jsonl"), "does not exist"),
    Case("data dir lacks split", lambda e: e.train(f"data.path={e.write('notes.txt', 'x').parent}"),
         "not data.train_split ('train')"),  # load_splits names every split it lacks at once
    Case("label out of range", lambda e: e.single_file("d.jsonl", jsonl({"source": "a", "label": 5})) + [
        "data.label_names=[no, yes]", "data.target_template={label_name}"], "data.label_names"),
    # --- adapters ----------------------------------------------------------------------------------------
    Case("adapter dir missing", lambda e: ["generate", str(e.tmp / "nope"), "x"], "not an adapter dir"),
    Case("adapter safetensors empty", _corrupt_adapter(lambda e: (e.adapter / "adapter_model.safetensors").write_bytes(b"")),
         "adapter_model.safetensors"),
    Case("adapter safetensors truncated", _corrupt_adapter(truncated), "adapter_model.safetensors"),
    Case("adapter is a pickle", _corrupt_adapter(lambda e: torch.save({"prompt_embeddings": torch.zeros(4, 32)},
                                                                       str(e.adapter / "adapter_model.safetensors"))),
         "adapter_model.safetensors"),
    Case("adapter tensor missing", _corrupt_adapter(lambda e: e.tensor_file("adapter_model.safetensors",
                                                                             {"other": torch.zeros(4, 32)})),
         "prompt_embeddings"),
    Case("adapter too few rows", _corrupt_adapter(lambda e: e.tensor_file("adapter_model.safetensors",
                                                                           {"prompt_embeddings": torch.zeros(3, 32)})),
         "shape"),
    Case("adapter wrong width", _corrupt_adapter(lambda e: e.tensor_file("adapter_model.safetensors",
                                                                          {"prompt_embeddings": torch.zeros(4, 16)})),
         "shape"),
    Case("adapter 1-d tensor", _corrupt_adapter(lambda e: e.tensor_file("adapter_model.safetensors",
                                                                         {"prompt_embeddings": torch.zeros(128)})),
         "shape"),
    Case("sidecar invalid json", _corrupt_adapter(lambda e: (e.adapter / "softprompt.json").write_text("{oops")),
         "softprompt.json"),
    Case("sidecar not an object", _corrupt_adapter(lambda e: (e.adapter / "softprompt.json").write_text("[]")),
         "softprompt.json"),
    Case("peft config invalid json", _corrupt_adapter(lambda e: (_peft_only(e), (e.adapter / "adapter_config.json")
                                                                  .write_text("{oops"))),
         "adapter_config.json"),
    Case("peft config missing", _corrupt_adapter(lambda e: (_peft_only(e), (e.adapter / "adapter_config.json").unlink())),
         "adapter_config.json"),
    Case("peft config lacks token_dim", _corrupt_adapter(lambda e: _peft_cfg(e, token_dim=_DROP)), "token_dim"),
    Case("peft config wrong p", _corrupt_adapter(lambda e: _peft_cfg(e, num_virtual_tokens=7)), "shape"),
    Case("peft two submodules on a causal task", _corrupt_adapter(lambda e: _peft_t5_adapter(e, task="CAUSAL_LM")),
         "num_transformer_submodules is 2 with task_type 'CAUSAL_LM'"),
    Case("peft seq2seq three submodules", _corrupt_adapter(lambda e: _peft_t5_adapter(e, submodules=3)),
         "num_transformer_submodules is 3, expected 1 or 2"),
    Case("peft seq2seq rows mismatch", _corrupt_adapter(lambda e: _peft_t5_adapter(e, submodules=1, rows=8)), "shape"),
    Case("eval with truncated adapter", lambda e: (truncated(e), ["eval", str(e.adapter), str(e.write("r.yaml", "{}\n")),
                                                                  *overrides(e.model, e.data, e.out)])[1],
         "adapter_model.safetensors"),
    Case("eval without recipe or run config", lambda e: ["eval", str(e.adapter), "data.max_eval_samples=2"],
         "give the recipe it was trained with"),
    Case("eval run config.yaml invalid", lambda e: (e.write("run/config.yaml", "train: [\n"),
                                                    shutil.copytree(e.adapter, e.tmp / "in" / "run" / "final"),
                                                    ["eval", str(e.tmp / "in" / "run" / "final")])[2], "config.yaml"),
    Case("init_file is a pickle", lambda e: e.train("prompt.init=file", f"prompt.init_file={_pickled(e)}"),
         "prompt.init_file"),
    Case("init_file truncated", lambda e: (truncated(e), e.train("prompt.init=file", f"prompt.init_file={e.adapter}"))[1],
         "prompt.init_file"),
    # --- export outputs ------------------------------------------------------------------------------------
    Case("export into non-empty dir", _export(_nonempty), "not empty"),
    Case("export into current dir", _export(lambda e: "."), "current directory"),
    Case("export onto a file", _export(_a_file), "file"),
    Case("export into the checkpoint", lambda e: (lambda c: ["export", str(c), str(c)])(e.checkpoint()), "not empty"),
    Case("export missing checkpoint", lambda e: ["export", str(e.tmp / "nope"), str(e.tmp / "x")], "checkpoint"),
    Case("export meta invalid json", _export(lambda e: str(e.tmp / "x"), _ckpt_meta("{oops")), "meta.json"),
    Case("export meta without config", _export(lambda e: str(e.tmp / "x"), _ckpt_meta("{}")), "meta.json"),
    Case("export trainable truncated", _export(lambda e: str(e.tmp / "x"), _ckpt_truncated), "trainable.safetensors"),
    Case("export model without weights", _export(lambda e: str(e.tmp / "x"),
                                                 lambda e: e.checkpoint(str(e.model_copy(drop=("*.safetensors",))))),
         "weights"),
    # --- models --------------------------------------------------------------------------------------------
    Case("model dir without weights", lambda e: e.train(f"model.name_or_path={e.model_copy(drop=('*.safetensors',))}"),
         "weights"),
    Case("model dir without tokenizer", lambda e: e.train(
        f"model.name_or_path={e.model_copy(drop=('tokenizer*', 'special_tokens_map.json'))}"), "tokenizer"),
    Case("model weights truncated", lambda e: e.train(f"model.name_or_path={e.model_copy(truncate='model.safetensors')}"),
         "model.safetensors"),
    Case("model dir empty", lambda e: (e.write("m/.keep", ""), e.train(f"model.name_or_path={e.tmp / 'in' / 'm'}"))[1],
         "model.name_or_path"),
    Case("model path is a file", lambda e: e.train(f"model.name_or_path={e.write('m.txt', 'hi')}"), "model.name_or_path"),
    Case("kind seq2seq for a Llama", override("model.kind=seq2seq"), "model.kind"),
    Case("kind causal for a T5", lambda e: e.train(f"model.name_or_path={e.t5}", "model.kind=causal"), "model.kind"),
    # --- compression and recovery ----------------------------------------------------------------------------
    Case("compress: unknown method", lambda e: ["compress", e.model, str(e.tmp / "c"), "--method", "rtn"], "--method"),
    Case("compress: one-shot without calibration",
         lambda e: ["compress", e.model, str(e.tmp / "c"), "--method", "gptq"], "calibration"),
    Case("compress: sparsity out of range",
         lambda e: ["compress", e.model, str(e.tmp / "c"), "--method", "magnitude", "--sparsity", "1"], "sparsity"),
    Case("compress: output exists", lambda e: ["compress", e.model, str(e.data), "--method", "magnitude"], "exists"),
    Case("recovery: distillation without a teacher", lambda e: recovery(e, "objective.kd_weight=0.5"), "objective.teacher"),
    Case("recovery: teacher source on an uncompressed base",
         lambda e: recovery(e, "objective.teacher=source", "objective.text_field=source"), "compression.json"),
    Case("recovery: text column missing", lambda e: recovery(e, "objective.block_size=8"), "objective.text_field"),
    Case("perplexity: no text", lambda e: ["perplexity", "--base", f"a={e.model}"], "--text"),
    Case("perplexity: unknown quantization", lambda e: ["perplexity", "--base", f"a={e.model}@int3", "--text",
                                                        f"t={e.data}"], "quantization"),
    Case("quantization unknown", override("model.quantization=int3"), "model.quantization"),
    # --- components --------------------------------------------------------------------------------------------
    Case("prompt type unknown", override("prompt.type=lora"), "prompt.type"),
    Case("prompt type against its method", override("method=dept", "prompt.type=bank"), "conflicts with method"),
    Case("objective type unknown", override("objective.type=regress"), "objective.type"),
    Case("head on the lm objective", override("head.num_outputs=2"), "head"),
    Case("bank of zero prompts", override("prompt.type=bank", "prompt.num_prompts=0"), "prompt.num_prompts"),
    Case("moved key given twice", override("method.name=dept", "method.rank=4", "prompt.rank=4"), "moved to prompt.rank"),
    # --- command line ----------------------------------------------------------------------------------------
    Case("max-new-tokens 0", lambda e: ["generate", str(e.adapter), "x", "--max-new-tokens", "0"], "--max-new-tokens"),
    Case("max-new-tokens negative", lambda e: ["generate", str(e.adapter), "x", "--max-new-tokens", "-3"],
         "--max-new-tokens"),
    Case("max-new-tokens text", lambda e: ["generate", str(e.adapter), "x", "--max-new-tokens", "many"],
         "--max-new-tokens"),
    Case("unknown flag", lambda e: ["train", "--resum"], "--resum"),
    # --- run dirs: a new run never silently replaces one, a resume never silently starts over ---------------
    Case("resume without a checkpoint", lambda e: e.train("--resume"), "holds no checkpoint"),
    Case("resume a missing path", lambda e: e.train("--resume", str(e.tmp / "nope")), "no such directory"),
    Case("resume a checkpoint of another run", lambda e: e.train("--resume", str(e.checkpoint())), "belongs to run dir"),
    Case("new run into an existing run", lambda e: (_finished_run(e), e.train())[1], "already holds a run"),
    Case("resume a run killed before its first checkpoint", lambda e: (_finished_run(e, ckpt=False), e.train("--resume"))[1],
         "--overwrite"),
    Case("unknown subcommand", lambda e: ["trian"], "trian"),
    Case("no subcommand", lambda e: [], "command"),
    Case("generate without text", lambda e: ["generate", str(e.adapter)], "TEXTS"),
    Case("budget d zero", lambda e: ["budget", "--d", "0", "--s", "256", "--l", "100"], "--d"),
    Case("budget step zero", lambda e: ["budget", "--d", "768", "--s", "256", "--l", "100", "--step", "0"], "--step"),
    # --- Ctrl-C and noise ------------------------------------------------------------------------------------
    Case("interrupt in training", lambda e: e.train(), "interrupted", 130, _interrupt("softprompt.train.train")),
    Case("interrupt in config", lambda e: e.train(), "interrupted", 130, _interrupt("softprompt.config.load_config")),
    Case("interrupt in generate", lambda e: ["generate", str(e.adapter), "x"], "interrupted", 130,
         _interrupt("softprompt.export.load_adapter")),
    Case("warnings before a data error", override("data.source_template={question} ="), "question", 2,
         _noisy("softprompt.train.load_base")),
    Case("warnings before an adapter error", _corrupt_adapter(truncated), "adapter_model.safetensors", 2,
         _noisy("softprompt.model.load_base")),
]


@pytest.fixture(scope="module")
def valid_adapter(saved_model, tokenizer, tmp_path_factory):
    from transformers import AutoModelForCausalLM

    from softprompt.layers import PromptEmbedding
    from softprompt.model import SoftPromptModel

    path = saved_model("llama")
    base = AutoModelForCausalLM.from_pretrained(path)
    model = SoftPromptModel(base, PromptEmbedding(torch.randn(4, 32) * 0.1), tokenizer, base_config=path)
    return model.save_adapter(tmp_path_factory.mktemp("adapter") / "adapter")


@pytest.fixture(scope="module")
def task_dir(tmp_path_factory):
    return write_task(tmp_path_factory.mktemp("task"), n_train=8, n_eval=4)


def snapshot(root: Path) -> dict:
    return {str(p.relative_to(root)): (p.is_dir(), p.stat().st_size if p.is_file() else 0,
                                       p.stat().st_mtime_ns if p.is_file() else 0)
            for p in sorted(root.rglob("*"))}


@pytest.fixture()
def env(tmp_path, saved_model, valid_adapter, task_dir, monkeypatch):
    (tmp_path / "cwd").mkdir()
    monkeypatch.chdir(tmp_path / "cwd")
    adapter = tmp_path / "adapter"
    shutil.copytree(valid_adapter, adapter)
    return Env(tmp_path, task_dir, saved_model("llama"), saved_model("t5"), adapter, tmp_path / "out")


def check_one_line(code: int, out: str, err: str, case: Case) -> None:
    lines = err.splitlines()
    assert code == case.code, f"exit {code}\nstderr:\n{err[-3000:]}"
    assert "Traceback" not in err + out, err[-3000:]
    assert len(lines) == 1 and lines[0].strip(), f"expected one stderr line, got {len(lines)}:\n{err[-3000:]}"
    prefix = "softprompt: interrupted" if case.code == 130 else "softprompt: error: "
    assert lines[0].startswith(prefix), lines[0]
    assert case.match in lines[0], f"{case.match!r} not in {lines[0]!r}"
    assert out == "", out[-2000:]


@pytest.mark.parametrize("case", CASES, ids=[c.name for c in CASES])
def test_bad_input(case, env, capfd, monkeypatch):
    argv = case.setup(env)
    if case.patch:
        case.patch(monkeypatch)
    before = snapshot(env.tmp)
    capfd.readouterr()
    try:
        code = main(argv)
    except KeyboardInterrupt:  # escaping Ctrl-C would end the whole pytest session
        code = "KeyboardInterrupt escaped main"
    out, err = capfd.readouterr()
    check_one_line(code, out, err, case)
    assert snapshot(env.tmp) == before, "files were written or changed"


def test_corpus_size():
    assert len(CASES) >= 60 and len({c.name for c in CASES}) == len(CASES)


SUBPROCESS = ["recipe utf-16 with BOM", "template positional {}", "adapter safetensors truncated",
              "max-new-tokens 0", "export into non-empty dir", "eval without recipe or run config",
              "resume without a checkpoint"]


@pytest.mark.parametrize("name", SUBPROCESS)
def test_real_process(name, env):
    case = next(c for c in CASES if c.name == name)
    argv = case.setup(env)
    before = snapshot(env.tmp)
    src = str(Path(__file__).resolve().parents[1])
    proc = subprocess.run([sys.executable, "-m", "softprompt", *argv], capture_output=True, text=True, cwd=env.tmp / "cwd",
                          timeout=120, env={**os.environ, "PYTHONPATH": src})
    check_one_line(proc.returncode, proc.stdout, proc.stderr, case)
    assert snapshot(env.tmp) == before
