"""Recovery of a compressed model (objectives/recover.py, method recovery) and the perplexity report."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
import torch

from softprompt import load_config, train
from softprompt.compress import CompressConfig, compress
from softprompt.errors import SoftPromptError
from softprompt.objectives.recover import (RecoverConfig, Recover, collate_blocks, head_reproduces_logits, kd_sum,
                                           perplexity, split_blocks)
from tests.conftest import CORPUS


@pytest.fixture(scope="module")
def text_dir(tmp_path_factory):
    root = tmp_path_factory.mktemp("text")
    lines = sorted(set(CORPUS))
    for split, rows in {"train": lines * 6, "validation": lines * 2, "test": lines[::-1] * 2}.items():
        (root / f"{split}.jsonl").write_text("".join(json.dumps({"text": r}) + "\n" for r in rows))
    return root


@pytest.fixture(scope="module")
def pruned(saved_model, tmp_path_factory):
    return str(compress(saved_model(), tmp_path_factory.mktemp("c") / "pruned", CompressConfig(method="magnitude")))


def recipe(base: str, text_dir, out, **extra) -> list[str]:
    values = {"method": "recovery", "model.name_or_path": base, "data.path": str(text_dir), "objective.block_size": 16,
              "train.output_dir": str(out), "train.run_name": "r", "train.max_steps": 4, "train.batch_size": 4,
              "train.eval_every": 2, "train.save_every": 2, "train.log_every": 1, "train.trackers": "[]",
              "train.progress_bar": "false", "prompt.num_virtual_tokens": 4, "optim.lr": 0.05}
    values.update(extra)
    return [f"{k}={v}" for k, v in values.items()]


def test_kd_is_zero_for_equal_distributions_and_its_gradient_matches_finite_differences():
    torch.manual_seed(0)
    logits = torch.randn(5, 11, dtype=torch.float64)
    assert float(kd_sum(logits, logits.clone(), 2.0)) == pytest.approx(0.0, abs=1e-12)
    assert float(kd_sum(logits + 3.0, logits, 1.0)) == pytest.approx(0.0, abs=1e-6)  # a shift: the same softmax (float32)
    teacher = torch.randn(5, 11, dtype=torch.float64)
    student = logits.clone().requires_grad_(True)
    # kd_sum computes in float32 by design (bf16 logits); the check runs its math in float64 through a twin
    def kd64(s):
        t = torch.log_softmax(teacher / 2.0, -1)
        return torch.nn.functional.kl_div(torch.log_softmax(s / 2.0, -1), t, log_target=True, reduction="sum") * 4.0
    assert torch.autograd.gradcheck(kd64, (student,))
    assert torch.allclose(kd_sum(student, teacher, 2.0).double(), kd64(student), rtol=1e-5)
    analytic = torch.autograd.grad(kd_sum(student, teacher, 2.0), student)[0]
    numeric = torch.autograd.grad(kd64(student), student)[0]
    assert torch.allclose(analytic.double(), numeric, atol=1e-5)


def test_blocks_cover_documents_with_their_special_tokens(saved_model, text_dir):
    from softprompt.data.loading import load_split
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(saved_model())
    rows = load_split(str(text_dir), "validation")
    blocks = split_blocks(rows, "text", tok, 16, "validation")
    stream = [i for t in rows["text"] for i in tok(t)["input_ids"] + [tok.eos_token_id]]
    assert [i for b in blocks for i in b["input_ids"]] == stream[:len(blocks) * 16]
    assert len(stream) - len(blocks) * 16 < 16 and all(len(b["input_ids"]) == 16 for b in blocks)
    with pytest.raises(SoftPromptError, match="fewer than one block"):
        split_blocks(rows.select(range(1)), "text", tok, 4096, "validation")
    with pytest.raises(SoftPromptError, match="not a column"):
        split_blocks(rows, "body", tok, 16, "validation")


def test_perplexity_scores_the_same_tokens_as_the_models_own_loss(saved_model, text_dir):
    """No prompt: our windowing equals HF's own shifted loss on each block (an independent computation)."""
    from softprompt.data.loading import load_split
    from softprompt.loading import load_base

    base, tok, _ = load_base(saved_model())
    blocks = split_blocks(load_split(str(text_dir), "validation"), "text", tok, 16, "validation")
    ours = perplexity(lambda ids, mask: base(input_ids=ids, attention_mask=mask).logits, blocks, 3, "cpu")
    batch = collate_blocks(blocks)
    with torch.no_grad():
        hf = base(input_ids=batch["input_ids"], labels=batch["labels"]).loss  # mean over tokens 2..L of each block
    assert ours["tokens"] == len(blocks) * 15
    assert ours["nll"] == pytest.approx(float(hf), rel=1e-5)


def test_train_recovery_with_kd_records_and_reloads_the_compressed_base(saved_model, pruned, text_dir, tmp_path):
    from softprompt.model import SoftPromptModel

    cfg = load_config(None, recipe(pruned, text_dir, tmp_path, **{"objective.kd_weight": 0.5, "objective.teacher": "source"}))
    result = train(cfg)
    assert cfg.objective.type == "recover" and cfg.prompt.type == "plain"
    assert {"eval_loss", "eval_ppl", "eval_kd"} <= set(result.best) and result.chosen_by == "best eval_ppl"
    sidecar = json.loads((result.adapter_dir / "softprompt.json").read_text())
    assert sidecar["config"]["objective"]["teacher"] == saved_model()  # "source" resolved and recorded
    assert sidecar["compression"]["method"] == "magnitude"
    # only the prompt trained
    assert all(n.startswith("prompt.") for n, p in result.model.named_parameters() if p.requires_grad)
    reloaded = SoftPromptModel.from_adapter(result.adapter_dir)
    ids = torch.tensor([[1, 5, 9, 13, 2]])
    with torch.no_grad():
        assert torch.allclose(reloaded(ids).logits, result.model(ids).logits, atol=1e-5)
    # re-compressing that dir in place with other settings: the adapter refuses the changed base
    compress(saved_model(), pruned, CompressConfig(method="magnitude", sparsity=0.3), overwrite=True)
    try:
        with pytest.raises(SoftPromptError, match="compressed with magnitude"):
            SoftPromptModel.from_adapter(result.adapter_dir)
    finally:
        compress(saved_model(), pruned, CompressConfig(method="magnitude"), overwrite=True)


def test_recovery_evals_report_the_base_without_a_prompt_and_the_teacher(saved_model, pruned, text_dir, tmp_path):
    """Every eval line carries the references a recovery is judged by, computed as the perplexity report computes
    them (an independent path: recovery_report over the same split), and the share of the gap the prompt closes."""
    from softprompt import recovery_report as report

    result = train(load_config(None, recipe(pruned, text_dir, tmp_path, **{"objective.kd_weight": 0.5,
                                                                          "objective.teacher": saved_model()})))
    evals = [m for m in map(json.loads, (tmp_path / "r" / "metrics.jsonl").read_text().splitlines()) if "eval_ppl" in m]
    cells = report.run({"dense": saved_model(), "pruned": pruned}, {"prompt": str(result.adapter_dir)},
                       {"held": str(text_dir)}, split="validation", block_size=16, batch_size=3)
    at = {(c.base, c.prompt): c for c in cells}
    assert len(evals) == 3  # before training, steps 2 and 4
    for m in evals:
        assert m["eval_base_ppl"] == pytest.approx(at[("pruned", "none")].ppl, rel=1e-5)
        assert m["eval_teacher_ppl"] == pytest.approx(at[("dense", "none")].ppl, rel=1e-5)
        base, teacher = math.log(m["eval_base_ppl"]), math.log(m["eval_teacher_ppl"])
        assert m["eval_gap_closed"] == pytest.approx((base - m["eval_loss"]) / (base - teacher), rel=1e-6)
    assert result.best["eval_ppl"] == pytest.approx(at[("pruned", "prompt")].ppl, rel=1e-5)


def test_chunked_distillation_equals_the_full_logits_twin(saved_model, pruned, text_dir):
    from softprompt.build import build_model
    from softprompt.loading import load_base

    cfg = load_config(None, recipe(pruned, text_dir, "/tmp/unused", **{"objective.kd_weight": 1.0,
                                                                      "objective.teacher": saved_model()}))
    base, tok, kind = load_base(cfg.model)
    model = build_model(cfg, base, tok, kind)
    from softprompt.data.loading import load_split

    blocks = split_blocks(load_split(str(text_dir), "validation"), "text", tok, 16, "validation")
    batch = collate_blocks(blocks[:4])
    grads = []
    for chunk in (5, 0):  # 5 positions at a time (uneven chunks), then the plain twin
        objective = Recover(RecoverConfig(block_size=16, kd_weight=0.7, teacher=saved_model(), kd_chunk=chunk))
        model.zero_grad()
        loss = objective.loss(model, batch)
        loss.backward()
        grads.append((float(loss.detach()), model.prompt.prompt.grad.clone()))
        assert objective.teacher.chunkable  # a Llama's logits are its head on the last hidden states
    assert grads[0][0] == pytest.approx(grads[1][0], rel=1e-5)
    assert torch.allclose(grads[0][1], grads[1][1], rtol=1e-4, atol=1e-6)


def test_soft_capped_teacher_takes_the_full_logits_path(tokenizer):
    from tests.conftest import build_model

    gemma2 = build_model("gemma2", len(tokenizer))
    gemma2.config.final_logit_softcapping = 1.0  # strong enough that the head alone differs
    assert not head_reproduces_logits(gemma2)
    assert head_reproduces_logits(build_model("llama", len(tokenizer)))


@pytest.fixture(scope="module")
def wide_pruned(tokenizer, tmp_path_factory):
    """A Llama 64 wide (bitsandbytes' CPU 4-bit kernel packs 64 input columns per block), pruned 50%."""
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(0)
    path = tmp_path_factory.mktemp("wide")
    LlamaForCausalLM(LlamaConfig(vocab_size=len(tokenizer), hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                                 num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=256, pad_token_id=0,
                                 bos_token_id=1, eos_token_id=2)).save_pretrained(path / "dense")
    tokenizer.save_pretrained(path / "dense")
    return str(path / "dense"), str(compress(str(path / "dense"), path / "pruned", CompressConfig(method="magnitude")))


def test_report_on_a_base_quantized_while_loading(wide_pruned, text_dir, tmp_path):
    from softprompt import recovery_report as report

    dense, pruned = wide_pruned
    result = train(load_config(None, recipe(pruned, text_dir, tmp_path, **{"model.quantization": "bnb-4bit"})))
    assert json.loads((result.adapter_dir / "softprompt.json").read_text())["base_loading"]["quantization"] == "bnb-4bit"
    cells = report.run({"dense": dense, "nf4": f"{pruned}@bnb-4bit"}, {"lm": str(result.adapter_dir)},
                       {"held": str(text_dir)}, block_size=16, batch_size=4, task=None)
    at = {(c.base, c.prompt): c for c in cells}
    assert len({c.tokens for c in cells}) == 1
    assert at[("nf4", "lm")].nll == pytest.approx(result.test["test_loss"], rel=1e-4)  # the run's own test split


def test_gradient_reaches_the_prompt_through_4bit_layers(wide_pruned, text_dir):
    import bitsandbytes as bnb

    from softprompt.build import build_model
    from softprompt.loading import load_base

    cfg = load_config(None, recipe(wide_pruned[1], text_dir, "/tmp/unused", **{"model.quantization": "bnb-4bit"}))
    base, tok, kind = load_base(cfg.model)
    assert any(isinstance(m, bnb.nn.Linear4bit) for m in base.modules())
    model = build_model(cfg, base, tok, kind)
    from softprompt.data.loading import load_split

    blocks = split_blocks(load_split(str(text_dir), "validation"), "text", tok, 16, "validation")
    objective = Recover(RecoverConfig(block_size=16))
    objective.evaluate(model, blocks[:4], 2)  # an eval pass first: bitsandbytes would repack and drop gradients
    model.train()
    objective.loss(model, collate_blocks(blocks[:2])).backward()
    grad = model.prompt.prompt.grad
    assert grad is not None and bool(torch.isfinite(grad).all()) and float(grad.abs().sum()) > 0
    assert all(not p.requires_grad for p in base.parameters())


def test_blocks_take_the_shared_prefix_path_and_match_concatenation(saved_model, text_dir):
    from softprompt.build import build_model
    from softprompt.loading import load_base

    cfg = load_config(None, recipe(saved_model(), text_dir, "/tmp/unused"))
    base, tok, kind = load_base(cfg.model)
    model = build_model(cfg, base, tok, kind)
    from softprompt.data.loading import load_split

    batch = collate_blocks(split_blocks(load_split(str(text_dir), "validation"), "text", tok, 16, "validation")[:3])
    objective = Recover(RecoverConfig(block_size=16))
    assert model.execution_mode() == "shared_prefix"
    fast = objective.loss(model, batch)
    model.execution = "concat"
    plain = objective.loss(model, batch)
    assert float(fast.detach()) == pytest.approx(float(plain.detach()), rel=1e-5)


BAD_RECIPES = [
    ({"objective.kd_weight": 1.5}, "kd_weight"),
    ({"objective.kd_weight": 0.5}, "needs the dense model"),
    ({"objective.block_size": 1}, "block_size"),
    ({"objective.temperature": 0}, "temperature"),
    ({"data.validation_fraction": 0.1, "data.eval_split": "null"}, "validation split of its own"),
    ({"objective.text_field": "body"}, "not a column"),
    ({"objective.block_size": 100000}, "fewer than one block"),
]


@pytest.mark.parametrize("changes,words", BAD_RECIPES)
def test_bad_recovery_recipes_are_one_clear_error(saved_model, text_dir, tmp_path, changes, words):
    with pytest.raises(SoftPromptError, match=words):
        train(load_config(None, recipe(saved_model(), text_dir, tmp_path, **changes)))
    assert not (tmp_path / "r").exists()


def test_teacher_source_needs_a_compression_record_and_encoders_are_refused(saved_model, text_dir, tmp_path):
    with pytest.raises(SoftPromptError, match="no compression.json"):
        train(load_config(None, recipe(saved_model(), text_dir, tmp_path, **{"objective.teacher": "source"})))
    with pytest.raises(SoftPromptError, match="causal LM"):
        train(load_config(None, recipe(saved_model("bert"), text_dir, tmp_path, **{"model.kind": "encoder"})))


def test_report_scores_every_cell_on_identical_tokens_and_writes_files(saved_model, pruned, text_dir, tmp_path):
    from softprompt import recovery_report as report

    result = train(load_config(None, recipe(pruned, text_dir, tmp_path)))
    task = tmp_path / "task"
    task.mkdir()
    (task / "test.jsonl").write_text("".join(json.dumps({"source": s, "target": t}) + "\n"
                                             for s, t in [("apple =", " red"), ("sky =", " blue"), ("grass =", " green")]))
    cells = report.run({"dense": saved_model(), "pruned": pruned}, {"lm": str(result.adapter_dir)},
                       {"held": str(text_dir)}, block_size=16, batch_size=4, task=str(task))
    assert [(c.base, c.prompt) for c in cells] == [(b, p) for b in ("dense", "pruned") for p in ("none", "lm")]
    assert len({c.tokens for c in cells}) == 1
    at = {(c.base, c.prompt): c for c in cells}
    gap = at[("pruned", "none")].nll - at[("dense", "none")].nll
    expected = (at[("pruned", "none")].nll - at[("pruned", "lm")].nll) / gap if gap > 0 else None
    assert at[("pruned", "lm")].gap_closed == (pytest.approx(expected) if expected is not None else None)
    assert at[("dense", "lm")].gap_closed is None and at[("dense", "none")].gap_closed is None
    shown = at[("pruned", "lm")]
    assert shown.gap_low is None or shown.gap_low <= shown.gap_closed <= shown.gap_high
    assert all(0 <= c.accuracy <= 1 for c in cells)
    assert math.exp(at[("dense", "none")].nll) == pytest.approx(at[("dense", "none")].ppl)
    files = report.write(cells, tmp_path / "rep", "protocol line")
    assert all(f.is_file() and f.stat().st_size > 0 for f in files)
    table = (tmp_path / "rep" / "perplexity.csv").read_text()
    assert table.count("\n") == len(cells) + 1 and table.startswith("text,base,prompt,tokens,nll,ppl,gap_closed,gap_low,gap_high,")
    with pytest.raises(SoftPromptError, match="tokenizes text"):
        report.run({"a": saved_model(), "b": "demo"}, {}, {"held": str(text_dir)}, block_size=16)


GAP_CASES = [  # (plain, prompted, reference) per block -> the interval, computed by hand
    ([3.0, 4.0, 5.0], [2.0, 3.0, 4.0], [2.0, 3.0, 4.0], (1.0, 1.0)),  # the prompt reaches the reference in every block
    ([3.0, 4.0, 5.0], [3.0, 4.0, 5.0], [2.0, 3.0, 4.0], (0.0, 0.0)),  # it changes nothing
    ([3.0, 4.0, 5.0], [2.5, 3.5, 4.5], [1.0, 2.0, 3.0], (0.25, 0.25)),  # a quarter of every block's gap
    ([3.0, 4.0, 5.0], [2.0, 3.0, 4.0], [3.0, 4.0, 5.0], (None, None)),  # no gap to close
    ([3.0, 4.0, 5.0], [2.0, 3.0, 4.0], [3.1, 3.9, 5.0], (None, None)),  # a gap in one block of three, the reverse in another
]


@pytest.mark.parametrize("plain,prompted,reference,expected", GAP_CASES)
def test_gap_interval_on_cases_worked_by_hand(plain, prompted, reference, expected):
    from softprompt.recovery_report import gap_interval

    low, high = gap_interval(plain, prompted, reference)
    if expected[0] is None:
        assert (low, high) == (None, None)
    else:
        assert (low, high) == (pytest.approx(expected[0]), pytest.approx(expected[1]))


def test_gap_interval_widens_with_block_noise_and_holds_the_estimate():
    import random

    from softprompt.recovery_report import gap_interval

    rng = random.Random(0)
    plain = [4.0 + rng.random() for _ in range(200)]
    reference = [p - 0.1 for p in plain]
    intervals = []
    for noise in (0.01, 0.2):  # each block's gain: half its gap, plus noise
        prompted = [p - 0.05 + rng.gauss(0, noise) for p in plain]
        estimate = sum(p - q for p, q in zip(plain, prompted)) / sum(p - r for p, r in zip(plain, reference))
        low, high = gap_interval(plain, prompted, reference)
        assert low < estimate < high
        intervals.append(high - low)
    assert intervals[1] > 5 * intervals[0]


# the KD recipe covers the LM one too (same settings plus the teacher); test_config loads both
CPU_RECIPES = [Path(__file__).parent.parent / "recipes" / "recovery" / "demo_nf4_kd.yaml"]


@pytest.mark.slow
@pytest.mark.parametrize("path", CPU_RECIPES, ids=lambda p: p.name)
def test_cpu_recovery_recipes_run(path, tmp_path):
    cfg = load_config(path, [f"train.output_dir={tmp_path}", "train.max_steps=3", "train.eval_every=3",
                             "train.save_every=3", "data.max_train_samples=200", "data.max_eval_samples=40",
                             "train.progress_bar=false"])
    result = train(cfg)
    assert cfg.model.quantization == "bnb-4bit" and math.isfinite(result.best["eval_ppl"])
    assert result.best["eval_ppl"] <= result.before["eval_ppl"] * 1.05  # three steps do not make it much worse
