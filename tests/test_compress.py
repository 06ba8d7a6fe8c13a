"""Compression through real libraries (compress.py): torch.nn.utils.prune here, llmcompressor in its own
environment (SOFTPROMPT_COMPRESS_PYTHON, set up by scripts/test.sh), bitsandbytes at load time."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from softprompt.compress import RECORD, CompressConfig, compress, max_levels, read_record, target_linears
from softprompt.errors import SoftPromptError
from tests.conftest import CORPUS


def load(path):
    from transformers import AutoModelForCausalLM

    return AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32)


def layer_sparsities(model) -> list[float]:
    return [float((m.weight == 0).float().mean()) for m in target_linears(model, ("lm_head",)).values()]


@pytest.fixture(scope="module")
def calibration(tmp_path_factory) -> str:
    path = tmp_path_factory.mktemp("calib") / "calib.jsonl"
    path.write_text("".join(json.dumps({"text": line}) + "\n" for line in CORPUS))
    return str(path)


def test_magnitude_prunes_each_layer_and_reloads_sparse(saved_model, tmp_path):
    out = compress(saved_model(), tmp_path / "pruned", CompressConfig(method="magnitude", sparsity=0.5))
    dense, pruned = load(saved_model()), load(out)
    assert all(abs(s - 0.5) < 0.02 for s in layer_sparsities(pruned))  # each layer, not only on average
    assert layer_sparsities(dense) == [0.0] * len(layer_sparsities(dense))
    # made permanent before saving: no weight_orig / weight_mask (which would reload as a re-initialised model)
    from safetensors import safe_open

    with safe_open(str(out / "model.safetensors"), "pt") as f:
        assert not any(k.endswith(("weight_orig", "weight_mask")) for k in f.keys())
    # the kept weights are the dense ones; the embeddings (the prompt's space) and the LM head are untouched
    for (name, d), p in zip(target_linears(dense, ("lm_head",)).items(), target_linears(pruned, ("lm_head",)).values()):
        kept = p.weight != 0
        assert torch.equal(p.weight[kept], d.weight[kept]), name
        assert d.weight[~kept].abs().max() <= d.weight[kept].abs().min() + 1e-7  # the smallest were cut
    assert torch.equal(dense.get_input_embeddings().weight, pruned.get_input_embeddings().weight)
    record = read_record(out)
    assert record["method"] == "magnitude" and record["measured"]["sparsity"] == pytest.approx(0.5, abs=0.01)
    assert record["calibration"] is None and "torch" in record["libraries"] and record["source"]["weights_sha256"]


def test_two_of_four_pattern(saved_model, tmp_path):
    out = compress(saved_model(), tmp_path / "p24", CompressConfig(method="magnitude", structure="2:4"))
    for module in target_linears(load(out), ("lm_head",)).values():
        groups = (module.weight.reshape(module.weight.shape[0], -1, 4) == 0).sum(-1)  # zeros per 4 inputs
        assert bool((groups >= 2).all())
    assert read_record(out)["measured"]["two_of_four"] is True


def test_max_levels_counts_distinct_values_per_group():
    w = torch.tensor([[1.0, 1.0, 2.0, 3.0], [0.0, 0.0, 0.0, 5.0]])
    assert max_levels(w, None) == 3 and max_levels(w, 2) == 2


BAD = [  # (config changes, calibration, what the message names)
    ({"method": "magnitude", "sparsity": 1.5}, None, "between 0 and 1"),
    ({"method": "magnitude", "structure": "2:4", "sparsity": 0.3}, None, "exactly 50%"),
    ({"method": "gptq", "bits": 5, "calibration": "demo"}, None, "bits must be"),
    ({"method": "gptq"}, None, "needs calibration text"),
    ({"method": "bnb-4bit"}, None, "load time"),
    ({"method": "magnitude", "structure": "3:8"}, None, "structure"),
    ({"method": "gptq", "group_size": 0, "calibration": "demo"}, None, "group_size"),
]


@pytest.mark.parametrize("changes,_,words", BAD)
def test_bad_settings_are_one_clear_error(changes, _, words):
    with pytest.raises(SoftPromptError, match=words):
        CompressConfig(**changes)


def test_bad_input_writes_nothing(saved_model, tmp_path, calibration):
    (tmp_path / "bad.jsonl").write_text('{"text": "a b"}\nnot json\n')
    (tmp_path / "short.txt").write_text("tiny")
    cases = [
        (CompressConfig(method="gptq", calibration=str(tmp_path / "missing.txt")), "not found"),
        (CompressConfig(method="gptq", calibration=str(tmp_path / "bad.jsonl")), "bad.jsonl:2"),
        (CompressConfig(method="gptq", calibration=str(tmp_path / "short.txt"), seq_len=64), "fewer than one window"),
    ]
    for cfg, words in cases:
        with pytest.raises(SoftPromptError, match=words):
            compress(saved_model(), tmp_path / "out" / "x", cfg, python=sys.executable)
    (tmp_path / "taken").mkdir()
    with pytest.raises(SoftPromptError, match="already exists"):
        compress(saved_model(), tmp_path / "taken", CompressConfig(method="magnitude"))
    with pytest.raises(SoftPromptError, match="not an executable"):
        compress(saved_model(), tmp_path / "out" / "y", CompressConfig(method="gptq", calibration=calibration),
                 python=str(tmp_path / "no-python"))
    leftovers = list((tmp_path / "out").iterdir()) if (tmp_path / "out").exists() else []
    assert leftovers == [] and list((tmp_path / "taken").iterdir()) == []


def test_cli_compress_bad_input_exit_2(saved_model, tmp_path):
    done = subprocess.run([sys.executable, "-m", "softprompt", "compress", saved_model(), str(tmp_path / "o"),
                           "--method", "magnitude", "--sparsity", "2"], capture_output=True, text=True)
    assert done.returncode == 2 and "Traceback" not in done.stderr
    assert done.stderr.strip().count("\n") == 0 and "sparsity" in done.stderr
    assert not (tmp_path / "o").exists()


def llmc_python() -> str:
    python = os.environ.get("SOFTPROMPT_COMPRESS_PYTHON")
    # not skipped: CI (scripts/test.sh) sets up .venv-compress; a bare pytest run has to as well
    assert python, "set SOFTPROMPT_COMPRESS_PYTHON (bash scripts/setup.sh compress makes .venv-compress)"
    return python


LLMC = [  # (method, extra settings, check on the reloaded model's record and weights)
    ("gptq", {"bits": 4, "group_size": 16}, lambda m, r: r["max_levels_per_group"] <= 16 and r["sparsity"] < 0.3),
    ("sparsegpt", {"sparsity": 0.5}, lambda m, r: all(abs(s - 0.5) < 0.02 for s in layer_sparsities(m))),
    ("wanda", {"structure": "2:4"}, lambda m, r: r["two_of_four"]),
    # the paper's 8x: 50% sparse and 4-bit together
    ("sparsegpt+gptq", {"sparsity": 0.5, "bits": 4, "group_size": 16},
     lambda m, r: min(layer_sparsities(m)) >= 0.49 and r["max_levels_per_group"] <= 16),
]


@pytest.mark.slow
@pytest.mark.llmcompressor
@pytest.mark.parametrize("method,extra,check", LLMC, ids=[f"{m}-{i}" for i, (m, _, _) in enumerate(LLMC)])
def test_llmcompressor_methods_for_real(saved_model, tmp_path, calibration, method, extra, check):
    cfg = CompressConfig(method=method, calibration=calibration, num_samples=8, seq_len=16, **extra)
    out = compress(saved_model(), tmp_path / method, cfg, python=llmc_python())
    model = load(out)
    # recompute from the reloaded weights rather than trusting the record
    from softprompt.compress import measure

    measured = measure(model, cfg)
    assert measured == read_record(out)["measured"]
    assert check(model, measured), measured
    record = read_record(out)
    assert record["libraries"]["llmcompressor"] and record["calibration"]["num_samples"] == 8
    assert torch.equal(load(saved_model()).get_input_embeddings().weight, model.get_input_embeddings().weight)
    assert (out / RECORD).is_file() and (out / "tokenizer.json").is_file()


def test_bnb_4bit_on_a_pruned_checkpoint_keeps_zeros_and_16_levels(saved_model, tmp_path):
    """The joint setting without llmcompressor: magnitude 50% saved, then NF4 at load time (zero is an NF4 level)."""
    import bitsandbytes as bnb

    from softprompt.loading import ModelConfig, load_base

    out = compress(saved_model(), tmp_path / "pruned", CompressConfig(method="magnitude"))
    base, _, _ = load_base(ModelConfig(name_or_path=str(out), quantization="bnb-4bit"))
    layers = [m for m in base.modules() if isinstance(m, bnb.nn.Linear4bit)]
    assert layers
    for layer in layers:
        w = bnb.functional.dequantize_4bit(layer.weight.data, layer.weight.quant_state)  # (O, I)
        assert float((w == 0).float().mean()) >= 0.5
        assert max_levels(w.float(), 64) <= 16  # NF4: 16 values per block of 64


@pytest.mark.parametrize("quantization,layer,kind", [("bnb-4bit", "Linear4bit", "nf4"), ("bnb-fp4", "Linear4bit", "fp4"),
                                                     ("bnb-8bit", "Linear8bitLt", None)])
def test_bitsandbytes_quantizes_while_loading_on_cpu(saved_model, quantization, layer, kind):
    from softprompt.loading import ModelConfig, load_base

    base, _, _ = load_base(ModelConfig(name_or_path=saved_model(), quantization=quantization))
    layers = [m for m in base.modules() if type(m).__name__ == layer]
    assert len(layers) == len(target_linears(load(saved_model()), ("lm_head",)))
    if kind:
        assert {m.weight.quant_type for m in layers} == {kind}
    embeds = base.get_input_embeddings().weight[:6].detach().clone()[None].requires_grad_(True)  # (1, 6, D)
    base(inputs_embeds=embeds).logits.sum().backward()
    assert embeds.grad is not None and float(embeds.grad.abs().sum()) > 0
