"""Dynamic prompt selection (issue 14): selectors that give each row its prompt of a bank, the attention
scorer against a plain eager twin, order invariance, planted prompts, what selection may read, selections
through save and reload, and the bank trained through the one loop."""

import json

import pytest
import torch
import torch.nn.functional as F

from conftest import build_model
from helpers import overrides, write_task
from softprompt import selectors
from softprompt.config import load_config
from softprompt.errors import ConfigError, SoftPromptError
from softprompt.layers import PromptBank, PromptEmbedding
from softprompt.model import SoftPromptModel
from softprompt.selectors.attention import AttentionSelector
from softprompt.selectors.key import KeySelector
from softprompt.selectors.oracle import OracleSelector

VOCAB = 400
K, P = 3, 4


def bank_of(base, k: int = K, p: int = P, seed: int = 1) -> PromptBank:
    """K prompts of frozen-table rows (the scale the model expects)."""
    rows = torch.randint(3, VOCAB, (k, p), generator=torch.Generator().manual_seed(seed))
    return PromptBank(base.get_input_embeddings().weight.detach()[rows])  # (K, P, D)


def batch(seed: int = 2):
    """Four rows: full, right-padded, left-padded, right-padded."""
    ids = torch.randint(3, VOCAB, (4, 7), generator=torch.Generator().manual_seed(seed))
    mask = torch.tensor([[1] * 7, [1, 1, 1, 1, 0, 0, 0], [0, 0, 1, 1, 1, 1, 1], [1, 1, 1, 1, 1, 1, 0]])
    return ids * mask, mask


def model_with(family: str, selector, execution: str = "auto", seed: int = 1, k: int = K) -> SoftPromptModel:
    base = build_model(family, VOCAB)
    return SoftPromptModel(base, bank_of(base, k, seed=seed), kind="causal", execution=execution, selector=selector).eval()


def eager_mass(model: SoftPromptModel, ids, context, layers=None, heads=None) -> torch.Tensor:
    """The plain twin of the attention selector: the K prompts and the context tokens concatenated in one
    sequence, a block-diagonal prompt region (no prompt sees another; each restarts at position 0), the
    tokens at positions p, p+1, ..., eager attention with every layer's map returned; the mass each context
    token puts on each block, averaged over heads, context tokens and layers (B, K)."""
    base = model.base
    prompts = model.prompt.prompt_table(torch.float32)  # (K, p, D)
    k, p, d = prompts.shape
    b, length = ids.shape
    tok = context.bool()
    embeds = torch.cat([prompts.reshape(1, k * p, d).expand(b, -1, -1), base.get_input_embeddings()(ids)], 1)  # (B, S, D)
    s = k * p + length
    allow = torch.zeros(b, s, s, dtype=torch.bool)
    for j in range(k):
        allow[:, j * p:(j + 1) * p, j * p:(j + 1) * p] = torch.ones(p, p).tril().bool()
    for t in range(length):
        allow[:, k * p + t, :k * p] = tok[:, t:t + 1]
        allow[:, k * p + t, k * p:k * p + t + 1] = tok[:, :t + 1] & tok[:, t:t + 1]
    allow |= torch.eye(s, dtype=torch.bool)  # a masked query still needs one key (its output is ignored)
    mask4 = torch.zeros(b, 1, s, s).masked_fill(~allow[:, None], torch.finfo(torch.float32).min)
    positions = torch.cat([torch.arange(p).repeat(k).expand(b, -1), p + (tok.long().cumsum(1) - 1).clamp(min=0)], 1)
    before = base.config._attn_implementation
    base.config._attn_implementation = "eager"
    try:
        with torch.no_grad():
            maps = base.base_model(inputs_embeds=embeds, attention_mask=mask4, position_ids=positions,
                                   output_attentions=True).attentions
    finally:
        base.config._attn_implementation = before
    weights = tok.float().unsqueeze(-1)  # (B, L, 1)
    per_layer = []
    for i, a in enumerate(maps):  # (B, H, S, S)
        if layers is None or i in layers:
            a = a if heads is None else a[:, heads]  # query heads (grouped-query models share keys across them)
            mass = a[:, :, k * p:, :k * p].unflatten(-1, (k, p)).sum(-1).mean(1)  # (B, L, K)
            per_layer.append((mass * weights).sum(1) / weights.sum(1))
    return torch.stack(per_layer).mean(0)  # (B, K)


# ---------------------------------------------------------------------------------------------------
# The attention selector equals its eager twin, on every family the prompt cache is exact for


@pytest.mark.parametrize("family", ["llama", "qwen3", "gemma", "gpt2", "gpt_neox", "phi3", "olmo2"])
@pytest.mark.parametrize("layers, heads, context_tokens", [((), (), None), ((-1,), (), 3), ((0,), (1, -1), None)])
def test_attention_scores_equal_eager_attention_maps(family, layers, heads, context_tokens):
    model = model_with(family, AttentionSelector(layers=layers, heads=heads, context_tokens=context_tokens))
    ids, mask = batch()
    context = selectors.context_mask(mask, None, "causal", context_tokens)
    fast = model.selector.scores(model, ids, mask, context)
    n_layers, n_heads = model.base.config.num_hidden_layers, model.base.config.num_attention_heads
    twin = eager_mass(model, ids, context, None if not layers else {l % n_layers for l in layers},
                      None if not heads else sorted(h % n_heads for h in heads))
    torch.testing.assert_close(fast, twin, rtol=1e-4, atol=1e-6)
    assert (fast > 0).all() and (fast.sum(-1) < 1).all()  # the tokens attend to themselves too


@pytest.mark.parametrize("family, reason", [("mistral-window", "sliding-window"), ("bloom", "ALiBi"),
                                            ("llama-dynamic", "rotary scaling")])
def test_attention_selector_refuses_models_whose_prompt_cache_is_not_exact(family, reason):
    model = model_with(family, AttentionSelector())
    ids, mask = batch()
    with pytest.raises(SoftPromptError, match=rf"selector attention: cannot score.*{reason}.*selector.type: key"):
        model(ids, mask)


# ---------------------------------------------------------------------------------------------------
# Order invariance and planted prompts


@pytest.mark.parametrize("selector", ["attention", "key", "oracle"])
def test_selection_follows_the_prompts_not_the_bank_order(selector):
    model = model_with("llama", {"attention": AttentionSelector(), "oracle": OracleSelector(),
                                 "key": KeySelector(torch.randn(K, 32, generator=torch.Generator().manual_seed(3)))}[selector])
    ids, mask = batch()
    chosen = model.select(ids, mask)
    context = selectors.context_mask(mask, None, "causal", None)
    scores = model.selector.scores(model, ids, mask, context)  # (B, K)
    for order in ([2, 0, 1], [1, 2, 0], [2, 1, 0]):
        order = torch.tensor(order)
        permuted = model_with("llama", model.selector)
        permuted.prompt = PromptBank(model.prompt.prompt_table(torch.float32)[order])
        if selector == "key":
            permuted.selector = KeySelector(model.selector.keys[order])
        again = permuted.select(ids, mask)
        assert torch.equal(order[again], chosen)  # the same prompt, wherever it sits
        # scores, not just choices: stacked blocks (positions 0..K·p-1) would move them by position
        torch.testing.assert_close(permuted.selector.scores(permuted, ids, mask, context), scores[:, order],
                                   rtol=0, atol=1e-6)


def planted_attention_prompt(model: SoftPromptModel, ids, mask) -> torch.Tensor:
    """GPT-2's first layer: rows whose keys align with the inputs' mean query of every head, so the inputs
    attend to them most by construction (absolute positions: the key is W_k LN(x + pos), and a large x
    makes it W_k LN(x))."""
    block = model.base.transformer.h[0]
    with torch.no_grad():
        x = model.base.transformer.wte(ids) + model.base.transformer.wpe(P + (mask.cumsum(1) - 1).clamp(min=0))
        q = block.attn.c_attn(block.ln_1(x))[..., :32]  # (B, L, D): queries of all heads
        mean_q = (q * mask[..., None]).sum((0, 1)) / mask.sum()  # (D,)
        w_k = block.attn.c_attn.weight[:, 32:64]  # (D_in, D): Conv1D, x @ W
        direction = w_k @ mean_q  # (D_in,): the input direction whose key meets the mean query
    direction = (direction - direction.mean()) / block.ln_1.weight.clamp(min=1e-3)  # LN centres, then scales
    return (direction / direction.norm() * 50).expand(P, -1).clone()  # (P, D)


def test_attention_selector_picks_a_planted_prompt_in_any_position():
    base = build_model("gpt2", VOCAB)
    ids, mask = batch()
    probe = SoftPromptModel(base, bank_of(base), kind="causal")
    planted = planted_attention_prompt(probe, ids, mask)
    randoms = bank_of(base, k=K).prompt_table(torch.float32)
    for where in range(K + 1):
        prompts = torch.cat([randoms[:where], planted[None], randoms[where:]])  # (K+1, P, D)
        model = SoftPromptModel(base, PromptBank(prompts), kind="causal", selector=AttentionSelector(layers=(0,))).eval()
        chosen = model.select(ids, mask)
        assert (chosen == where).float().mean() >= 0.75, (where, chosen)


def test_oracle_picks_a_trained_prompt_over_random_ones():
    """A prompt trained on rows that continue one way beats random prompts on them; the oracle's pick equals
    each row's lowest loss computed alone with each prompt as a plain prompt."""
    base = build_model("llama", VOCAB)
    g = torch.Generator().manual_seed(5)
    ids = torch.randint(3, VOCAB, (6, 5), generator=g)
    ids[:, 2:] = torch.tensor([11, 12, 13])  # every row ends the same way
    mask = torch.ones_like(ids)
    alone = SoftPromptModel(base, PromptEmbedding(bank_of(base, k=1).prompt_table(torch.float32)[0]), kind="causal")
    opt = torch.optim.Adam(alone.prompt.parameters(), lr=0.05)
    for _ in range(30):
        opt.zero_grad()
        alone(ids, mask, labels=ids).loss.backward()
        opt.step()
    trained = alone.prompt.prompt_table(torch.float32).detach()  # (1, P, D)
    prompts = torch.cat([bank_of(base, k=2, seed=9).prompt_table(torch.float32), trained])  # planted last
    model = SoftPromptModel(base, PromptBank(prompts), kind="causal", selector=OracleSelector()).eval()
    chosen = model.select(ids, mask)
    assert (chosen == 2).float().mean() >= 0.8
    losses = torch.zeros(6, 3)
    for j in range(3):  # each row alone, each prompt as a plain prompt, HF's own loss
        alone = SoftPromptModel(base, PromptEmbedding(prompts[j]), kind="causal", execution="concat")
        for r in range(6):
            logits = alone(ids[r:r + 1]).logits[0, :-1]  # (L-1, V): predictions of tokens 2..L
            losses[r, j] = F.cross_entropy(logits, ids[r, 1:])
    assert torch.equal(chosen, losses.argmin(1))


def test_key_selector_learns_one_key_per_cluster_in_training():
    """Rows from two groups of tokens whose embeddings share a direction per group: online k-means in
    training mode splits them, and in eval mode each group takes its own prompt."""
    base = build_model("llama", VOCAB)
    table = base.get_input_embeddings().weight
    with torch.no_grad():  # two topics: tokens 3..59 lean one way, 340..399 another
        directions = torch.randn(2, 32, generator=torch.Generator().manual_seed(4))
        table[3:60] += directions[0]
        table[340:400] += directions[1]
    model = SoftPromptModel(base, bank_of(base, k=2), kind="causal",
                            selector=KeySelector(torch.randn(2, 32, generator=torch.Generator().manual_seed(0)))).train()
    g = torch.Generator().manual_seed(1)
    low, high = (torch.randint(lo, hi, (8, 6), generator=g) for lo, hi in ((3, 60), (340, 400)))
    for step in range(4):
        rows = torch.cat([low, high])[torch.randperm(16, generator=g)]
        model.select(rows, torch.ones_like(rows))
    assert model.selector.counts.sum() == 64
    model.eval()
    a, b = model.select(low, torch.ones_like(low)), model.select(high, torch.ones_like(high))
    assert (a == a[0]).all() and (b == b[0]).all() and a[0] != b[0]
    frozen = model.selector.keys.clone()
    model.select(low, torch.ones_like(low))
    assert torch.equal(frozen, model.selector.keys)  # eval never moves a key


# ---------------------------------------------------------------------------------------------------
# What selection reads, and per-row execution with the chosen prompts


@pytest.mark.parametrize("selector", ["attention", "key"])
def test_selection_never_reads_a_text_to_text_target(selector):
    key = KeySelector(torch.randn(K, 32, generator=torch.Generator().manual_seed(3)))
    model = model_with("llama", AttentionSelector() if selector == "attention" else key)
    ids, mask = batch()
    labels = ids.masked_fill(torch.arange(7) < 4, -100).masked_fill(mask == 0, -100)  # targets: the last 3 columns
    other = torch.where(labels != -100, (ids + 97) % VOCAB, ids)  # different targets, same sources
    context = selectors.context_mask(mask, labels, "causal", None)
    assert torch.equal(context, mask.bool() & (labels == -100))
    assert torch.equal(model.selector.scores(model, ids, mask, context), model.selector.scores(model, other, mask, context))
    everything = selectors.context_mask(mask, None, "causal", None)  # the same rows read whole: the targets count
    assert not torch.equal(model.selector.scores(model, ids, mask, everything),
                           model.selector.scores(model, other, mask, everything))
    # a row whose every token is a target gives selection nothing of its own to read: an error, or the first tokens
    with pytest.raises(SoftPromptError, match="set selector.context_tokens"):
        model.select(ids, mask, ids.masked_fill(mask == 0, -100))
    assert selectors.context_mask(mask, ids.masked_fill(mask == 0, -100), "causal", 2).sum(1).tolist() == [2, 2, 2, 2]


def test_context_tokens_limits_what_selection_reads():
    context = selectors.context_mask(torch.tensor([[0, 1, 1, 1, 1], [1, 1, 1, 0, 0]]), None, "causal", 2)
    assert context.tolist() == [[False, True, True, False, False], [True, True, False, False, False]]


@pytest.mark.parametrize("execution", ["concat", "shared_prefix"])
@pytest.mark.parametrize("selector", ["attention", "key"])
def test_selected_rows_equal_each_row_alone_with_its_prompt(execution, selector):
    key = KeySelector(torch.randn(K, 32, generator=torch.Generator().manual_seed(3)))
    model = model_with("llama", AttentionSelector() if selector == "attention" else key, execution=execution)
    ids, mask = batch()
    chosen = model.select(ids, mask)
    logits = model(ids, mask).logits
    assert len(set(chosen.tolist())) > 1  # a mixed batch
    for b in range(4):
        real = mask[b].bool()
        alone = SoftPromptModel(model.base, PromptEmbedding(model.prompt.prompt_table(torch.float32)[chosen[b]]),
                                kind="causal", execution="concat")
        own = alone(ids[b:b + 1, real]).logits[0]
        torch.testing.assert_close(logits[b, real], own, rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("padding_side", ["left", "right"])
def test_generate_selects_from_the_input_and_equals_each_row_alone(tokenizer, padding_side):
    base = build_model("llama", len(tokenizer))
    model = SoftPromptModel(base, bank_of(base), tokenizer, "causal", selector=AttentionSelector()).eval()
    texts = ["the cat sat on the mat", "a dog", "one two three four five", "hello world"]
    side, tokenizer.padding_side = tokenizer.padding_side, padding_side
    try:
        enc = tokenizer(texts, return_tensors="pt", padding=True)
    finally:
        tokenizer.padding_side = side
    chosen = model.select(enc["input_ids"], enc["attention_mask"])
    assert len(set(chosen.tolist())) > 1
    kwargs = {"max_new_tokens": 3, "pad_token_id": tokenizer.pad_token_id, "eos_token_id": None}
    out = model.generate(enc["input_ids"], enc["attention_mask"], **kwargs)
    for b, text in enumerate(texts):
        ids = torch.tensor([tokenizer(text)["input_ids"]])
        alone = SoftPromptModel(base, PromptEmbedding(model.prompt.prompt_table(torch.float32)[chosen[b]]), kind="causal")
        assert torch.equal(out[b], alone.generate(ids, **kwargs)[0])


# ---------------------------------------------------------------------------------------------------
# Config, adapters and the loop


@pytest.mark.parametrize("items, message", [
    (["prompt.type=bank"], r"prompt.type: bank needs each row's prompt number; add a selector section"),
    (["selector.type=key"], r"selector: chooses a prompt of a bank per row, and prompt.type is 'plain'"),
    (["method=null", "prompt.type=bank", "selector.type=nope"], r"selector.type: unknown selector 'nope'"),
    (["method=idp", "selector.type=key"], r"selector.type: .key. conflicts with method .idp."),
    (["method=idp", "selector.train_with=best"], r"selector.train_with: 'best' is not valid"),
    (["method=idp", "selector.context_tokens=0"], r"selector.context_tokens: must be a positive integer"),
    (["method=idp", "selector.layers=[1, 1]"], r"selector.layers: \[1, 1\] names one twice"),
    (["method=dept", "selector.type=key"], r"selector: method 'dept' has no selector"),
    (["method=idp"], r"selector.context_tokens: every token of a block is a target of the recover objective"),
    (["method=idp", "selector.context_tokens=64", "objective.block_size=64"], r"set selector.context_tokens below"),
    (["method=null", "prompt.type=bank", "selector.type=oracle", "selector.context_tokens=4"],
     r"selector.context_tokens: the oracle reads a row's targets"),
    (["method=null", "prompt.type=bank", "objective.type=recover", "selector.type=oracle"],
     r"selector.type: oracle chooses each block's prompt by the loss on the very tokens"),
    (["method=null", "prompt.type=bank", "objective.type=classify", "objective.labels=[a, b]", "head.type=linear",
      "selector.type=key", "selector.train_with=oracle"], r"selector.train_with: oracle: the oracle picks the prompt"),
    (["method=idp", "selector.context_tokens=32", "prompt.entry=dept", "objective.block_size=1024"],
     r"prompt.max_length: DePT's offset covers s=256 tokens but objective.block_size=1024"),
])
def test_selector_config_errors(items, message):
    with pytest.raises(ConfigError, match=message):
        load_config(None, items)


def test_idp_preset_and_a_bank_with_a_key_selector_resolve():
    cfg = load_config(None, ["method=idp", "selector.context_tokens=32"])
    assert (cfg.prompt.type, cfg.objective.type, cfg.selector.type) == ("bank", "recover", "attention")
    cfg = load_config(None, ["method=null", "prompt.type=bank", "objective.type=lm", "selector.type=key"])
    assert cfg.method.name is None and cfg.selector.type == "key"


@pytest.mark.parametrize("selector", ["attention", "key"])
def test_selections_survive_save_and_reload(tmp_path, selector):
    base = build_model("llama", VOCAB)
    chosen_by = (AttentionSelector(layers=(-1,), heads=(0, 2), context_tokens=5) if selector == "attention"
                 else KeySelector(torch.randn(K, 32, generator=torch.Generator().manual_seed(3)),
                                  torch.tensor([3.0, 0.0, 5.0]), context_tokens=5))
    model = SoftPromptModel(base, bank_of(base), kind="causal", selector=chosen_by).eval()
    ids, mask = batch()
    out = model.save_adapter(tmp_path / "a")
    back = SoftPromptModel.from_adapter(out, base=base).eval()
    assert back.selector.describe() == model.selector.describe()
    assert torch.equal(back.select(ids, mask), model.select(ids, mask))
    assert torch.equal(back(ids, mask).logits, model(ids, mask).logits)
    assert json.loads((out / "softprompt.json").read_text())["selector"]["type"] == selector


@pytest.mark.slow
@pytest.mark.parametrize("selector, train_with, entry", [("attention", "self", "plain"), ("key", "self", "dept"),
                                                     ("attention", "oracle", "plain")])
def test_a_bank_trains_through_the_loop_and_reloads_with_its_selections(tmp_path, saved_model, selector, train_with,
                                                                        entry):
    from softprompt.train import train

    data = write_task(tmp_path / "data")
    cfg = load_config(None, overrides(saved_model(), data, tmp_path / "out", **{
        "method": "null", "prompt.type": "bank", "prompt.num_prompts": 3, "objective.type": "lm",
        "selector.type": selector, "selector.train_with": train_with, "train.max_steps": 6, "prompt.entry": entry,
        "prompt.max_length": 256}))
    result = train(cfg)
    model = SoftPromptModel.from_adapter(result.adapter_dir).eval()
    assert type(model.selector) is type(result.model.selector)
    ids = model.tokenizer(["cat dog =", "one two three world ="], return_tensors="pt", padding=True)
    assert torch.equal(model.select(ids["input_ids"], ids["attention_mask"]),
                       result.model.eval().select(ids["input_ids"], ids["attention_mask"]))
    if selector == "key":
        assert model.selector.counts.sum() == 6 * 4  # every training row moved a key once
    from softprompt.build import build_model as build_from_config
    from softprompt.loading import load_base

    start = build_from_config(cfg, *load_base(cfg.model)).prompt.prompt_table(torch.float32)
    moved = (model.prompt.prompt_table(torch.float32) - start).abs().amax(dim=(1, 2))  # (K,)
    assert (moved > 0).any()  # the prompts rows chose trained
    if selector == "key":  # the keys' counts say which prompts rows chose: the others never had a gradient
        assert torch.equal(moved > 0, model.selector.counts > 0), (moved, model.selector.counts)
    assert result.best["eval_loss"] < result.before["eval_loss"]


@pytest.mark.slow
def test_key_selector_state_resumes_exactly(tmp_path, saved_model):
    from softprompt.train import train

    data = write_task(tmp_path / "data")
    common = {"method": "null", "prompt.type": "bank", "prompt.num_prompts": 2, "objective.type": "lm",
              "selector.type": "key", "train.max_steps": 6, "train.save_every": 3}
    whole = train(load_config(None, overrides(saved_model(), data, tmp_path / "a", **common)))
    cut = load_config(None, overrides(saved_model(), data, tmp_path / "b", **{**common, "train.max_steps": 3}))
    train(cut)
    resumed = train(load_config(None, overrides(saved_model(), data, tmp_path / "b", **common)), resume=True)
    for name, value in whole.model.learned_buffers().items():
        assert torch.equal(resumed.model.learned_buffers()[name], value), name
    assert torch.equal(whole.model.prompt.prompt_table(torch.float32), resumed.model.prompt.prompt_table(torch.float32))
    # a checkpoint exported as an adapter keeps its step's keys, not the fresh ones the recipe would build
    from safetensors.torch import load_file

    from softprompt.export import export_checkpoint

    step3 = load_file(str(tmp_path / "b" / "t" / "step_000003" / "trainable.safetensors"))
    exported = SoftPromptModel.from_adapter(export_checkpoint(tmp_path / "b" / "t" / "step_000003", tmp_path / "x"))
    assert step3["selector.counts"].sum() == 3 * 4
    torch.testing.assert_close(exported.learned_buffers(), {k: v for k, v in step3.items() if k.startswith("selector.")})


def test_each_bank_member_exports_as_a_peft_adapter(saved_model, tokenizer, tmp_path):
    """Real PEFT loads members/prompt_KK/ on the base and reproduces our logits with prompt K for every row."""
    import peft
    from transformers import AutoModelForCausalLM

    path = saved_model("llama")
    base = AutoModelForCausalLM.from_pretrained(path)
    model = SoftPromptModel(base, bank_of(base), tokenizer, "causal", base_config=path, selector=AttentionSelector())
    out = model.save_adapter(tmp_path / "adapter")
    assert not (out / "adapter_config.json").exists()  # no PEFT form for the bank itself
    ids = torch.tensor([tokenizer("the cat sat on the mat")["input_ids"]])
    for k in range(K):
        member = out / "members" / f"prompt_{k:02d}"
        assert json.loads((member / "adapter_config.json").read_text())["num_virtual_tokens"] == P
        pm = peft.PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(path), str(member)).eval()
        with torch.no_grad():
            theirs = pm(input_ids=ids).logits[:, P:]  # PEFT returns the virtual positions too
            mine = model.eval()(ids, prompt_index=torch.tensor([k])).logits
        torch.testing.assert_close(mine, theirs, atol=1e-5, rtol=1e-4)


# ---------------------------------------------------------------------------------------------------
# DePT entries: each member with its own token offset


def dept_bank_model(execution: str, k: int = K, seed: int = 0):
    from softprompt.layers.dept import DeptOffset

    base = build_model("llama", VOCAB)
    g = torch.Generator().manual_seed(seed)
    offsets = [DeptOffset(12, 2, 32, padding_side="left", generator=g) for _ in range(k)]
    with torch.no_grad():
        for o in offsets:
            o.B.copy_(torch.randn(2, 32, generator=g) * 0.3)  # a trained-like offset (B starts at zero)
    bank = PromptBank(bank_of(base, k).prompt_table(torch.float32), offsets=offsets)
    return SoftPromptModel(base, bank, kind="causal", execution=execution).eval()


def member_alone(model: SoftPromptModel, k: int) -> SoftPromptModel:
    """Bank member k as a single DePT prompt (prompt + its own offset), on concatenation."""
    return SoftPromptModel(model.base, PromptEmbedding(model.prompt.prompt_table(torch.float32)[k].detach(),
                                                       offset=model.prompt.offsets[k]), kind="causal", execution="concat")


@pytest.mark.parametrize("execution", ["concat", "shared_prefix"])
def test_dept_entries_mixed_batch_equals_each_member_alone(execution):
    model = dept_bank_model(execution)
    ids, mask = batch()
    index = torch.tensor([2, 0, 1, 2])
    logits = model(ids, mask, prompt_index=index).logits
    for b in range(4):
        real = mask[b].bool()
        own = member_alone(model, int(index[b]))(ids[b:b + 1, real]).logits[0]
        torch.testing.assert_close(logits[b, real], own, rtol=1e-4, atol=1e-5)
    plain = SoftPromptModel(model.base, PromptBank(model.prompt.prompt_table(torch.float32)), kind="causal")
    assert not torch.allclose(plain(ids, mask, prompt_index=index).logits, logits, atol=1e-3)  # the offsets matter


@pytest.mark.parametrize("num_beams", [1, 2])
def test_dept_entries_generate_offsets_new_tokens_per_row(num_beams):
    model = dept_bank_model("shared_prefix")
    ids, mask = batch()
    index = torch.tensor([1, 0, 2, 1])
    kwargs = {"max_new_tokens": 4, "pad_token_id": 0, "eos_token_id": None, "num_beams": num_beams}
    out = model.generate(ids, mask, prompt_index=index, **kwargs)
    model.execution = "concat"
    assert torch.equal(model.generate(ids, mask, prompt_index=index, **kwargs), out)
    for b in range(4):
        real = mask[b].bool()
        own = member_alone(model, int(index[b])).generate(ids[b:b + 1, real], **kwargs)
        assert torch.equal(out[b], own[0])


def test_dept_entries_from_a_recipe_round_trip_through_an_adapter(tmp_path):
    cfg = load_config(None, ["method=null", "prompt.type=bank", "prompt.entry=dept", "prompt.num_prompts=2",
                             "prompt.rank=3", "prompt.max_length=16", "prompt.offset_lr=0.002", "data.max_length=16",
                             "data.max_target_length=4", "objective.type=lm", "selector.type=key"])
    from softprompt.build import build_model as build_from_config
    from softprompt.build import param_groups

    base = build_model("llama", VOCAB)
    model = build_from_config(cfg, base, None, "causal").eval()
    assert [g["name"] for g in param_groups(cfg, model)] == ["prompt", "offset"]
    assert param_groups(cfg, model)[1]["lr"] == 0.002 and len(model.prompt.offsets) == 2
    with torch.no_grad():
        for o in model.prompt.offsets:
            o.B.normal_()
    ids, mask = batch()
    back = SoftPromptModel.from_adapter(model.save_adapter(tmp_path / "a"), base=base).eval()
    assert not (tmp_path / "a" / "members").exists()  # PEFT would drop each member's offset: no member dirs
    torch.testing.assert_close(back(ids, mask).logits, model(ids, mask).logits, rtol=0, atol=0)
    assert torch.equal(back.select(ids, mask), model.select(ids, mask))


def test_dept_entries_need_each_rows_prompt_and_a_known_entry():
    model = dept_bank_model("shared_prefix")
    ids, mask = batch()
    with pytest.raises(SoftPromptError, match="prompt_index"):
        model(ids, mask)
    with pytest.raises(ConfigError, match=r"prompt.entry: 'lora' is not valid"):
        load_config(None, ["method=idp", "prompt.entry=lora"])


def test_recover_evaluation_scores_only_the_tokens_selection_did_not_read(tmp_path, capsys):
    """eval_loss of a bank whose selector reads c tokens is the NLL of tokens c+1..L, computed here from the
    logits of each block run alone with its chosen prompt; `softprompt perplexity` scores the same tokens in
    every cell and says so, and refuses a bank whose selector reads whole blocks."""
    from softprompt.cli import main
    from softprompt.objectives.recover import Recover, RecoverConfig

    base = build_model("llama", VOCAB)
    c = 3
    model = SoftPromptModel(base, bank_of(base), kind="causal", selector=AttentionSelector(context_tokens=c)).eval()
    blocks = [{"input_ids": torch.randint(3, VOCAB, (8,), generator=torch.Generator().manual_seed(i)).tolist()}
              for i in range(5)]
    metrics = Recover(RecoverConfig(block_size=8)).evaluate(model, blocks, batch_size=2)
    total = 0.0
    for block in blocks:
        ids = torch.tensor([block["input_ids"]])
        k = model.select(ids)
        alone = SoftPromptModel(base, PromptEmbedding(model.prompt.prompt_table(torch.float32)[k[0]]), kind="causal")
        logits = alone(ids).logits[0]  # (8, V)
        total += F.cross_entropy(logits[c - 1:-1], ids[0, c:], reduction="sum").item()
    assert metrics["eval_loss"] == pytest.approx(total / (5 * (8 - c)), rel=1e-5)

    whole = SoftPromptModel(base, bank_of(base), kind="causal", selector=AttentionSelector())
    assert main(["perplexity", "--base", "x=demo", "--prompt", f"b={whole.save_adapter(tmp_path / 'whole')}",
                 "--text", "demo-text", "--block-size", "16", "--max-blocks", "2"]) == 2
    assert "selector reads whole blocks" in capsys.readouterr().err


def test_perplexity_report_states_and_scores_the_tokens_after_the_selection_context(tmp_path, capsys):
    from softprompt.cli import main
    from softprompt.loading import ModelConfig, load_base

    base, tokenizer, _ = load_base(ModelConfig(name_or_path="demo"))
    rows = torch.randint(3, base.config.vocab_size, (K, P), generator=torch.Generator().manual_seed(1))
    bank = PromptBank(base.get_input_embeddings().weight.detach()[rows])
    model = SoftPromptModel(base, bank, tokenizer, "causal", base_config="demo", selector=AttentionSelector(context_tokens=4))
    adapter = model.save_adapter(tmp_path / "bank")
    assert main(["perplexity", "--base", "demo=demo", "--prompt", f"bank={adapter}", "--text", "demo-text",
                 "--block-size", "16", "--max-blocks", "3", "--out", str(tmp_path / "report")]) == 0
    out = capsys.readouterr().out
    assert "tokens 5..16 of every block scored (tokens 1..4 are what a prompt bank reads" in out
    rows = (tmp_path / "report" / "perplexity.csv").read_text().splitlines()
    assert all(",36," in line for line in rows[1:]), rows  # 3 blocks x 12 tokens in every cell


@pytest.mark.parametrize("family, kind", [("t5", "seq2seq"), ("bert", "encoder"), ("roberta", "encoder")])
def test_key_selector_on_seq2seq_and_encoders_equals_each_row_alone(family, kind):
    base = build_model(family, VOCAB)
    d = base.get_input_embeddings().weight.shape[1]
    keys = torch.randn(K, d, generator=torch.Generator().manual_seed(3))
    model = SoftPromptModel(base, bank_of(base), kind=kind, selector=KeySelector(keys)).eval()
    ids, mask = batch()
    ids = ids.clamp(min=3) * mask  # no special ids inside real tokens
    chosen = model.select(ids, mask)
    hidden = model.hidden_states(ids, mask).hidden_states  # (B, L, D)
    assert len(set(chosen.tolist())) > 1
    for b in range(4):
        real = mask[b].bool()
        alone = SoftPromptModel(base, PromptEmbedding(model.prompt.prompt_table(torch.float32)[chosen[b]]), kind=kind)
        torch.testing.assert_close(hidden[b, real], alone.hidden_states(ids[b:b + 1, real]).hidden_states[0],
                                   rtol=1e-4, atol=1e-5)


def test_oracle_on_seq2seq_scores_the_decoder_labels():
    base = build_model("t5", VOCAB)
    model = SoftPromptModel(base, bank_of(base), kind="seq2seq", selector=OracleSelector()).eval()
    ids, mask = batch()
    labels = torch.randint(3, VOCAB, (4, 3), generator=torch.Generator().manual_seed(8))
    chosen = model.select(ids, mask, labels)
    for b in range(4):
        real = mask[b].bool()
        losses = [SoftPromptModel(base, PromptEmbedding(model.prompt.prompt_table(torch.float32)[j]), kind="seq2seq")(
            ids[b:b + 1, real], labels=labels[b:b + 1]).loss.item() for j in range(K)]
        assert chosen[b] == min(range(K), key=losses.__getitem__)
    with pytest.raises(SoftPromptError, match="selector oracle: a seq2seq or encoder row has no targets"):
        model.select(ids, mask)


def test_key_selector_refuses_a_key_count_other_than_the_banks_and_survives_a_bf16_cast():
    base = build_model("llama", VOCAB)
    with pytest.raises(SoftPromptError, match="selector key: 5 keys of width 32 for a bank of 3 prompts"):
        SoftPromptModel(base, bank_of(base), kind="causal", selector=KeySelector(torch.randn(5, 32)))
    model = SoftPromptModel(base, bank_of(base), kind="causal", selector=KeySelector(torch.randn(K, 32))).to(torch.bfloat16)
    ids, mask = batch()
    model.train().select(ids, mask)  # scores and the key update in fp32, written back in bf16
    assert model.selector.keys.dtype == torch.bfloat16 and model.selector.counts.sum() == 4


def test_attention_capture_restores_each_config_and_an_outer_hook():
    from softprompt import compat

    base = build_model("llama", VOCAB)
    before = base.config._attn_implementation
    calls = {"outer": 0, "inner": 0}
    ids = torch.randint(3, VOCAB, (1, 4))
    with compat.attention_capture(base, lambda *a: calls.__setitem__("outer", calls["outer"] + 1)):
        with compat.attention_capture(base, lambda *a: calls.__setitem__("inner", calls["inner"] + 1)):
            base(input_ids=ids)
        base(input_ids=ids)
    assert calls == {"outer": 2, "inner": 2} and base.config._attn_implementation == before
