"""Compress a causal LM through real libraries and save a checkpoint transformers reloads, with a record of
how it was made (Compress-then-Prompt, Xu et al. 2023, https://arxiv.org/abs/2305.11186; research/methods.md §4).

    compress("demo", "out/demo-gptq4", CompressConfig(method="gptq", bits=4, calibration="demo"))
    softprompt compress demo out/demo-8x --method sparsegpt+gptq --sparsity 0.5 --bits 4 --calibration demo

Methods (METHODS):
- `magnitude`: smallest-|w| pruning with `torch.nn.utils.prune` (unstructured or 2:4), made permanent
  (`prune.remove`) before saving: a state dict still holding `weight_orig`/`weight_mask` reloads as a
  re-initialised, dense model (research/env_probe.md §5).
- `wanda`, `sparsegpt`, `gptq`, `sparsegpt+gptq` (the paper's "8x": 50% sparse and 4-bit): one-shot through
  llmcompressor with calibration text. llmcompressor pins an older transformers than softprompt's tested
  range, so it runs in its own environment (`compress_llmc.py`, found by `compress_python`), which returns
  plain dense weights; nothing of it is imported here.
- bitsandbytes 4/8-bit is not a method here: it quantizes at load time (`model.quantization` in a recipe),
  on top of any checkpoint this module writes (e.g. `magnitude` 50% + `bnb-4bit`: zero is an NF4 level).

Saved checkpoints hold dense weights, as the paper's GPTQ/SparseGPT outputs do: quantized weights are stored
dequantized (each group of a row takes at most 2^bits values), pruned ones as zeros. The memory saving is
notional until a serving engine packs them; the record says so (`storage`). `compression.json` records the
method, bits, requested and measured sparsity and levels, the calibration data (source, samples, length and
a hash of its token ids), the source model and the library versions; adapters trained on the checkpoint
record it too, so `SoftPromptModel.from_adapter` can tell whether a base at that path is still the same one.
"""

from __future__ import annotations

import hashlib
import importlib.util
import json
import os
import random
import shutil
import subprocess
import sys
import tempfile
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import torch
from torch import nn

from softprompt.errors import ConfigError, SoftPromptError, gist

RECORD = "compression.json"
PRUNERS = ("magnitude", "wanda", "sparsegpt")
METHODS = ("magnitude", "wanda", "sparsegpt", "gptq", "sparsegpt+gptq")
LLMCOMPRESSOR = ("wanda", "sparsegpt", "gptq", "sparsegpt+gptq")  # run in the llmcompressor environment
STRUCTURES = ("unstructured", "2:4")
PYTHON_ENV = "SOFTPROMPT_COMPRESS_PYTHON"  # the interpreter of an environment with llmcompressor


@dataclass(frozen=True)
class CompressConfig:
    method: str = "magnitude"  # one of METHODS
    sparsity: float = 0.5  # fraction of each Linear's weights set to zero (pruning methods)
    structure: str = "unstructured"  # unstructured | 2:4 (two of every four consecutive inputs kept; 50%)
    bits: int = 4  # GPTQ weight bits (2, 3, 4 or 8): symmetric integers, zero is a level
    group_size: int | None = 128  # GPTQ columns sharing a scale; None: one scale per output row (the paper's -1)
    calibration: str | None = None  # text for the one-shot methods: "demo", a .txt file or a .jsonl/.json with `text`
    text_field: str = "text"  # the .jsonl/.json field holding the text
    num_samples: int = 128  # calibration windows (the paper: 128 C4 samples)
    seq_len: int = 512  # tokens per window (the paper: 2048 for LLaMA)
    ignore: tuple[str, ...] = ("lm_head",)  # Linear layers left dense (by name suffix)
    seed: int = 0  # which windows of the calibration text are taken

    def __post_init__(self):
        if self.method not in METHODS:
            raise ConfigError(f"compress: method {self.method!r} is not one of {list(METHODS)} (bitsandbytes "
                              "quantizes at load time instead: model.quantization: bnb-4bit | bnb-fp4 | bnb-8bit)")
        if self.structure not in STRUCTURES:
            raise ConfigError(f"compress: structure {self.structure!r} is not one of {list(STRUCTURES)}")
        if self.prunes:
            if self.structure == "2:4" and self.sparsity != 0.5:
                raise ConfigError(f"compress: 2:4 structure prunes exactly 50%; drop --sparsity {self.sparsity} or "
                                  "set it to 0.5")
            if not 0 < self.sparsity < 1:
                raise ConfigError(f"compress: sparsity must be between 0 and 1 (exclusive), got {self.sparsity}")
        if self.quantizes and self.bits not in (2, 3, 4, 8):
            raise ConfigError(f"compress: bits must be 2, 3, 4 or 8 for GPTQ, got {self.bits}")
        if self.group_size is not None and self.group_size <= 0:
            raise ConfigError(f"compress: group_size must be > 0 (or none for one scale per row), got {self.group_size}")
        if self.method in LLMCOMPRESSOR and self.calibration is None:
            raise ConfigError(f"compress: {self.method} is one-shot and needs calibration text; pass --calibration "
                              "FILE (.txt, or .jsonl with a text field) or --calibration demo")
        for name in ("num_samples", "seq_len"):
            if getattr(self, name) <= 0:
                raise ConfigError(f"compress: {name} must be > 0, got {getattr(self, name)}")

    @property
    def prunes(self) -> bool:
        return self.method in PRUNERS or self.method == "sparsegpt+gptq"

    @property
    def quantizes(self) -> bool:
        return self.method in ("gptq", "sparsegpt+gptq")


def compress(source: str, out: str | Path, cfg: CompressConfig, python: str | None = None,
             overwrite: bool = False) -> Path:
    """Compress the causal LM `source` (hub id, local dir or "demo") per `cfg` into `out`: a checkpoint
    `from_pretrained` reloads, its tokenizer, and `compression.json`. Written to a temp dir beside `out` and
    renamed, so a failure leaves nothing behind. `python`: the interpreter that runs llmcompressor."""
    from softprompt.loading import ModelConfig, load_base

    out = Path(out)
    if out.exists() and not overwrite:
        raise SoftPromptError(f"compress: {out} already exists; choose another output dir or pass --overwrite")
    interpreter = compress_python(python) if cfg.method in LLMCOMPRESSOR else None  # refused before any work
    base, tokenizer, kind = load_base(ModelConfig(name_or_path=source, kind="causal"))
    calibration = calibration_windows(cfg, tokenizer) if cfg.calibration is not None else None
    source_print = model_fingerprint(base)  # before pruning changes `base` in place
    kept = untouched(base, cfg)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.", dir=out.parent))
    started = time.time()
    try:
        if cfg.method == "magnitude":
            magnitude_prune(base, cfg)
            base.save_pretrained(tmp)
            libraries = library_versions(("torch", "transformers"))
        else:
            libraries = run_llmcompressor(interpreter, source, tmp, cfg, calibration)
        tokenizer.save_pretrained(tmp)
        reloaded = reload(tmp)
        changed = [name for name, w in untouched(reloaded, cfg).items() if not torch.equal(w, kept[name])]
        if changed:  # e.g. a library's ignore list that matched nothing, pruning a tied LM head and the embeddings
            raise SoftPromptError(f"compress: {cfg.method} changed layers it must leave dense: {changed}; this "
                                  "library version does not honour the ignore list (please report it)")
        record = {
            "method": cfg.method,
            "config": asdict(cfg),
            "source": {"name_or_path": source, **source_print},
            "measured": measure(reloaded, cfg),
            "calibration": None if calibration is None else {
                "source": cfg.calibration, "num_samples": len(calibration), "seq_len": cfg.seq_len,
                "token_ids_sha256": hashlib.sha256(json.dumps(calibration).encode()).hexdigest()},
            "storage": "dense safetensors: quantized weights stored dequantized, pruned weights as zeros",
            "libraries": libraries,
            "seconds": round(time.time() - started, 1),
            **model_fingerprint(reloaded),
        }
        (tmp / RECORD).write_text(json.dumps(record, indent=1) + "\n")
        if out.exists():
            shutil.rmtree(out)
        tmp.rename(out)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return out


def read_record(path: str | Path) -> dict | None:
    """The compression record of a checkpoint dir, or None for a model this module did not write."""
    file = Path(path) / RECORD
    return json.loads(file.read_text()) if file.is_file() else None


# ---------------------------------------------------------------------------------------------------
# Pruning in this process


def target_linears(model: nn.Module, ignore: tuple[str, ...]) -> dict[str, nn.Linear]:
    """The Linear layers compression touches: every one but the ignored (the LM head by default)."""
    return {name: m for name, m in model.named_modules()
            if isinstance(m, nn.Linear) and not any(name == i or name.endswith("." + i) for i in ignore)}


def magnitude_prune(model: nn.Module, cfg: CompressConfig) -> None:
    """Zero the smallest-|w| weights of each target Linear through torch.nn.utils.prune, then make it
    permanent: per layer (as SparseGPT and Wanda count), not globally, so no layer loses more than the rest."""
    from torch.nn.utils import prune

    for module in target_linears(model, cfg.ignore).values():
        if cfg.structure == "2:4":
            prune.custom_from_mask(module, "weight", mask=two_of_four_mask(module.weight))
        else:
            prune.l1_unstructured(module, "weight", amount=cfg.sparsity)
        prune.remove(module, "weight")  # weight_orig * weight_mask -> weight, so save_pretrained keeps the zeros


def untouched(model: nn.Module, cfg: CompressConfig) -> dict[str, torch.Tensor]:
    """Copies of what compression must leave as it is: the input embeddings (the prompt lives in their space,
    so a prompt transfers between the dense and compressed models) and the ignored Linear layers."""
    ignored = {name: m.weight for name, m in model.named_modules()
               if isinstance(m, nn.Linear) and name not in target_linears(model, cfg.ignore)}
    return {name: w.detach().float().clone() for name, w in
            {"input_embeddings": model.get_input_embeddings().weight, **ignored}.items()}


def two_of_four_mask(weight: torch.Tensor) -> torch.Tensor:
    """Keep the two largest |w| of every four consecutive inputs of each row (NVIDIA's 2:4 pattern)."""
    out_f, in_f = weight.shape
    if in_f % 4:
        raise SoftPromptError(f"compress: 2:4 needs input widths divisible by 4; a layer has {in_f}")
    groups = weight.detach().abs().reshape(out_f, in_f // 4, 4)  # (O, I/4, 4)
    keep = groups.topk(2, dim=-1).indices
    return torch.zeros_like(groups).scatter_(-1, keep, 1.0).reshape(out_f, in_f)  # (O, I)


# ---------------------------------------------------------------------------------------------------
# llmcompressor, in its own environment


def compress_python(python: str | None = None) -> str:
    """The interpreter that runs llmcompressor: `python`, else $SOFTPROMPT_COMPRESS_PYTHON, else this one if it
    has llmcompressor; else one clear error saying how to make such an environment."""
    chosen = python or os.environ.get(PYTHON_ENV)
    if chosen:
        if not (Path(chosen).is_file() and os.access(chosen, os.X_OK)):
            raise SoftPromptError(f"compress: {chosen!r} is not an executable Python interpreter; give the python of "
                                  "an environment with llmcompressor (--python, or $" + PYTHON_ENV + ")")
        return chosen
    if importlib.util.find_spec("llmcompressor") is not None:
        return sys.executable
    raise SoftPromptError(
        "compress: this method runs through llmcompressor, which pins an older transformers than softprompt's, so it "
        "lives in its own environment: `bash scripts/setup.sh compress` makes .venv-compress (or `python -m venv V && "
        "V/bin/pip install softprompt llmcompressor`); then pass --python .venv-compress/bin/python or set "
        f"${PYTHON_ENV}")


def run_llmcompressor(python: str, source: str, out: Path, cfg: CompressConfig, calibration: list[list[int]]) -> dict:
    """Run `compress_llmc` in `python` on `source`; it writes dense weights to `out` and returns the versions
    of the libraries it ran with."""
    from softprompt.loading import resolve_model_path

    spec = {"source": resolve_model_path(source), "out": str(out), "config": asdict(cfg), "calibration": calibration}
    with tempfile.NamedTemporaryFile("w", suffix=".json", delete=False) as f:
        json.dump(spec, f)
    env = {**os.environ, "HF_HUB_OFFLINE": os.environ.get("HF_HUB_OFFLINE", "1")}
    try:
        done = subprocess.run([python, "-m", "softprompt.compress_llmc", f.name], capture_output=True, text=True, env=env)
    finally:
        os.unlink(f.name)
    if done.returncode != 0:
        lines = [line for line in done.stderr.strip().splitlines() if line.strip()]
        raise SoftPromptError(f"compress: llmcompressor ({python}) failed: {lines[-1] if lines else done.returncode}; "
                              "its environment needs softprompt and llmcompressor installed (scripts/setup.sh compress)")
    return json.loads(done.stdout.strip().splitlines()[-1])


# ---------------------------------------------------------------------------------------------------
# Calibration text, measurement, fingerprints


def calibration_windows(cfg: CompressConfig, tokenizer) -> list[list[int]]:
    """`num_samples` windows of `seq_len` token ids cut at seeded random offsets from the calibration text
    (GPTQ's way with C4), each starting with BOS where the tokenizer has one. Fewer tokens than one window
    is an error; fewer than `num_samples` windows' worth gives overlapping windows."""
    text = calibration_text(cfg)
    ids = tokenizer(text, add_special_tokens=False, verbose=False)["input_ids"]  # no "longer than max length" note
    bos = [tokenizer.bos_token_id] if tokenizer.bos_token_id is not None else []
    length = cfg.seq_len - len(bos)
    if len(ids) < length:
        raise SoftPromptError(f"compress: the calibration text has {len(ids)} tokens, fewer than one window of "
                              f"--seq-len {cfg.seq_len}; give more text or a shorter --seq-len")
    rng = random.Random(cfg.seed)
    return [bos + ids[s:s + length] for s in (rng.randrange(len(ids) - length + 1) for _ in range(cfg.num_samples))]


def calibration_text(cfg: CompressConfig) -> str:
    from softprompt.loading import DEMO_MODEL

    if cfg.calibration == "demo":
        return (DEMO_MODEL.parent / "corpus.txt").read_text()
    path = Path(cfg.calibration)
    if not path.is_file():
        raise SoftPromptError(f"compress: calibration file {str(path)!r} not found; give a .txt file, a .jsonl with a "
                              f"{cfg.text_field!r} field, or demo")
    if path.suffix in (".jsonl", ".json"):
        texts = []
        for n, line in enumerate(path.read_text().splitlines(), 1):
            if not line.strip():
                continue
            try:
                row = json.loads(line)
                texts.append(str(row[cfg.text_field]))
            except (json.JSONDecodeError, KeyError, TypeError) as e:
                raise SoftPromptError(f"compress: {path}:{n} is not a JSON object with a {cfg.text_field!r} field "
                                      f"({gist(e, typed=True)}); fix the line or pass --text-field") from None
        return "\n\n".join(texts)
    return path.read_text()


def measure(model: nn.Module, cfg: CompressConfig) -> dict:
    """What the checkpoint holds: the share of zeros over the target layers, whether every group of four
    inputs has at least two zeros (2:4), and the most distinct values any quantization group of a row holds."""
    zeros = total = 0
    two_four = True
    levels = 0
    group = cfg.group_size if cfg.quantizes else None
    for module in target_linears(model, cfg.ignore).values():
        w = module.weight.detach().float()
        zeros += int((w == 0).sum())
        total += w.numel()
        if w.shape[1] % 4 == 0:
            two_four &= bool(((w.reshape(w.shape[0], -1, 4) == 0).sum(-1) >= 2).all())
        levels = max(levels, max_levels(w, group))
    return {"sparsity": zeros / max(total, 1), "two_of_four": two_four, "max_levels_per_group": levels,
            "layers": len(target_linears(model, cfg.ignore))}


def max_levels(w: torch.Tensor, group: int | None) -> int:
    """The most distinct values in any group of `group` consecutive inputs of a row (a whole row for None)."""
    if group is not None and w.shape[1] % group == 0:
        w = w.reshape(-1, group)  # (O * I/g, g)
    s = w.sort(dim=1).values
    return int(((s[:, 1:] != s[:, :-1]).sum(1) + 1).max())


def model_fingerprint(model: nn.Module) -> dict:
    """A short hash of a model's weights: an adapter records it, so a base replaced at the same path is caught."""
    digest = hashlib.sha256()
    for name, tensor in sorted(model.state_dict().items()):
        digest.update(name.encode())
        digest.update(tensor.detach().float().cpu().numpy().tobytes()[:4096])  # a prefix per tensor: fast on 7B
        digest.update(str(tuple(tensor.shape)).encode())
    return {"weights_sha256": digest.hexdigest()[:16]}


def reload(path: Path) -> nn.Module:
    """The saved checkpoint as transformers loads it: what the record's measurements describe."""
    from transformers import AutoModelForCausalLM

    return AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32)


def library_versions(names: tuple[str, ...]) -> dict:
    from importlib.metadata import PackageNotFoundError, version

    out = {}
    for name in names:
        try:
            out[name] = version(name)
        except PackageNotFoundError:
            pass
    return out
