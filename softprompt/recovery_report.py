"""Dense vs compressed vs compressed + prompt, and prompts transferred across bases and texts: one command
(`softprompt perplexity`) that scores every (text, base, prompt) cell on identical tokens and writes the
comparison as markdown, CSV and plots (research/methods.md §4.3-4.4).

    softprompt perplexity --base dense=demo-large --base 8x=out/8x --prompt lm=runs/lm/final \\
        --text held-out=demo-large-text --task demo-large-task --reference dense --out report/

Protocol (stated in every report): each text's split is cut into `block_size`-token blocks by
`objectives.recover.split_blocks`, exactly as recovery training cuts them; every cell scores tokens 2..L of
every block (the first token has no context without a prompt; with a prompt bank whose selector reads a
block's first c tokens, every cell scores tokens c+1..L instead), the prompt prepended to every block; all
bases must tokenize the text identically, else the report refuses. "Gap closed" for base b and prompt q is
(NLL(b) - NLL(b + q)) / (NLL(b) - NLL(reference)): 1 means the prompt brings b to the reference's
perplexity, 0 means no change. It comes with a 90% paired bootstrap interval over blocks (`GAP_RESAMPLES` seeded
draws, each indexing the same blocks in all three terms). Why: on a gap of a fraction of a percent, a share such
as +400% is noise, and the interval says so. Where fewer than 90% of the draws still show a gap, the report says
"gap unresolved" instead. Task accuracy is exact match of greedy continuations (up to 8 new tokens) against the
targets, with and without each prompt.
"""

from __future__ import annotations

import csv
import io
import math
from dataclasses import dataclass
from pathlib import Path

import torch

from softprompt.errors import SoftPromptError
from softprompt.loading import ModelConfig, load_base

NO_PROMPT = "none"
GAP_RESAMPLES = 2000
GAP_LEVEL = 0.9


@dataclass(frozen=True)
class Cell:
    text: str
    base: str
    prompt: str
    tokens: int
    nll: float
    ppl: float
    gap_closed: float | None = None  # see the module docstring
    gap_low: float | None = None  # its 90% bootstrap interval; None where gap_closed is, or the gap is unresolved
    gap_high: float | None = None
    accuracy: float | None = None  # the task's exact match, or None without a task


def parse_named(items: list[str], what: str) -> dict[str, str]:
    """NAME=VALUE pairs (a bare VALUE is named by itself), in order; duplicate names are an error."""
    out: dict[str, str] = {}
    for item in items:
        name, _, value = item.partition("=") if "=" in item else (item, "", item)
        if not name or not value:
            raise SoftPromptError(f"--{what} {item!r}: expected NAME=VALUE (or VALUE)")
        if name in out or name == NO_PROMPT:
            raise SoftPromptError(f"--{what}: the name {name!r} is {'reserved' if name == NO_PROMPT else 'given twice'}; "
                                  "name each one differently")
        out[name] = value
    return out


def base_spec(value: str) -> ModelConfig:
    """PATH, or PATH@QUANTIZATION (e.g. out/pruned50@bnb-4bit: a pruned checkpoint quantized while loading)."""
    from softprompt.loading import QUANTIZATIONS

    path, _, quantization = value.partition("@")
    if quantization and quantization not in QUANTIZATIONS:
        raise SoftPromptError(f"--base {value!r}: {quantization!r} is not a quantization; choose one of "
                              f"{list(QUANTIZATIONS[1:])}")
    return ModelConfig(name_or_path=path, kind="causal", quantization=quantization or "none")


def run(bases: dict[str, str], prompts: dict[str, str], texts: dict[str, str], split: str = "test",
        text_field: str = "text", block_size: int = 1024, max_blocks: int | None = None, batch_size: int = 8,
        task: str | None = None, task_split: str = "test", max_task_rows: int | None = None,
        reference: str | None = None) -> list[Cell]:
    """Every (text, base, prompt) cell, `NO_PROMPT` first in each base. Bases load one at a time. Each block's
    first `selection_read(prompts)` tokens are not scored in any cell."""
    from softprompt.adapter import read
    from softprompt.data.loading import load_split

    if not bases:
        raise SoftPromptError("perplexity: give at least one --base NAME=PATH")
    if not texts:
        raise SoftPromptError("perplexity: give at least one --text NAME=DATA (a dir of split files, or demo-text)")
    reference = reference or next(iter(bases))
    if reference not in bases:
        raise SoftPromptError(f"--reference {reference!r} is not one of the bases {list(bases)}")
    specs = {name: base_spec(value) for name, value in bases.items()}
    for name, path in prompts.items():
        read(path)  # every adapter checked before any model loads
    unscored = selection_read(prompts)
    rows = {name: load_split(path, split) for name, path in texts.items()}
    task_rows = load_task(task, task_split, max_task_rows) if task else None
    cells, blocks_seen, per_block = [], {}, {}
    for base_name, spec in specs.items():
        base, tokenizer, _ = load_base(spec)
        base.eval()
        device = base.device
        blocks = {name: cut(r, text_field, tokenizer, block_size, split, max_blocks) for name, r in rows.items()}
        for name, b in blocks.items():  # identical token sets across bases, or no comparison
            if blocks_seen.setdefault(name, b) != b:
                raise SoftPromptError(f"perplexity: base {base_name!r} tokenizes text {name!r} differently from the "
                                      "first base; compare bases that share a tokenizer")
        for prompt_name in [NO_PROMPT, *prompts]:
            model = None if prompt_name == NO_PROMPT else prompted(prompts[prompt_name], base, tokenizer)
            accuracy = task_accuracy(model, base, tokenizer, task_rows, batch_size) if task_rows else None
            for text_name, text_blocks in blocks.items():
                result = score(model, base, text_blocks, batch_size, device, unscored)
                per_block[(text_name, base_name, prompt_name)] = result["block_nll"]
                cells.append(Cell(text_name, base_name, prompt_name, result["tokens"], result["nll"], result["ppl"],
                                  accuracy=accuracy))
        del base
    return with_gaps(cells, reference, per_block)


def cut(rows, field: str, tokenizer, block_size: int, split: str, max_blocks: int | None) -> list[dict]:
    from softprompt.objectives.recover import split_blocks

    blocks = split_blocks(rows, field, tokenizer, block_size, split)
    return blocks[:max_blocks] if max_blocks else blocks


def prompted(adapter_dir: str, base, tokenizer):
    """The adapter's prompt on `base` (any base of its width and embedding table: that is the transfer)."""
    from softprompt.model import SoftPromptModel

    return SoftPromptModel.from_adapter(adapter_dir, base=base, tokenizer=tokenizer).eval()


def selection_read(prompts: dict[str, str]) -> int:
    """The most leading tokens of a block any prompt's selector reads to choose (0: no bank among them). A
    selector that reads the whole block is refused: no token would be left that its choice has not seen."""
    from softprompt.adapter import read

    most = 0
    for name, path in prompts.items():
        selector = read(path).meta.get("selector")
        if selector is None:
            continue
        if not selector.get("context_tokens"):
            raise SoftPromptError(f"perplexity: prompt {name!r} is a bank whose selector reads whole blocks, so it would "
                                  "choose with the tokens it is scored on; train it with selector.context_tokens set")
        most = max(most, int(selector["context_tokens"]))
    return most


def score(model, base, blocks: list[dict], batch_size: int, device, read: int = 0) -> dict:
    """Token-weighted NLL, perplexity and token count over the blocks, and each block's summed NLL."""
    from softprompt.objectives.lm import perplexity_of
    from softprompt.objectives.recover import block_nlls

    if model is None:
        logits = lambda ids, mask: base(input_ids=ids, attention_mask=mask).logits  # noqa: E731
    else:
        logits = lambda ids, mask: model(ids, mask, right_padded=True).logits  # noqa: E731
    with torch.no_grad():
        nlls, counts = block_nlls(logits, blocks, batch_size, device, read)
    nll = sum(nlls) / max(sum(counts), 1)
    return {"nll": nll, "ppl": perplexity_of(nll), "tokens": int(sum(counts)), "block_nll": nlls}


def load_task(path: str, split: str, max_rows: int | None) -> list[dict]:
    from softprompt.data.loading import load_split

    rows = load_split(path, split)
    missing = {"source", "target"} - set(rows.column_names)
    if missing:
        raise SoftPromptError(f"--task {path!r}: the {split!r} split lacks column(s) {sorted(missing)}; a task has "
                              "source and target columns")
    out = [{"source": s, "target": t} for s, t in zip(rows["source"], rows["target"])]
    return out[:max_rows] if max_rows else out


@torch.no_grad()
def task_accuracy(model, base, tokenizer, rows: list[dict], batch_size: int, max_new_tokens: int = 8) -> float:
    """Exact match of greedy continuations against the targets (whitespace-normalised), with the prompt
    (through `SoftPromptModel.generate`) or without (the base's own `generate` on left-padded rows)."""
    from softprompt.evaluate import normalise

    hits = 0
    for start in range(0, len(rows), batch_size):
        chunk = rows[start:start + batch_size]
        sources = [r["source"] for r in chunk]
        if model is not None:
            outputs = model.generate(sources, max_new_tokens=max_new_tokens, eos_token_id=tokenizer.eos_token_id)
        else:
            side = tokenizer.padding_side
            tokenizer.padding_side = "left"  # new tokens follow each row's last real token
            try:
                enc = tokenizer(sources, return_tensors="pt", padding=True).to(base.device)
            finally:
                tokenizer.padding_side = side
            new = base.generate(**enc, max_new_tokens=max_new_tokens, do_sample=False, pad_token_id=tokenizer.pad_token_id,
                                eos_token_id=tokenizer.eos_token_id)[:, enc["input_ids"].shape[1]:]
            outputs = tokenizer.batch_decode(new, skip_special_tokens=True)
        hits += sum(normalise(o) == normalise(r["target"]) for o, r in zip(outputs, chunk))
    return hits / max(len(rows), 1)


def with_gaps(cells: list[Cell], reference: str, per_block: dict | None = None) -> list[Cell]:
    """Each prompted cell's share of its base's log-perplexity gap to the reference base that it closes, and,
    given each cell's per-block NLLs (keyed (text, base, prompt)), its bootstrap interval."""
    from dataclasses import replace

    plain = {(c.text, c.base): c.nll for c in cells if c.prompt == NO_PROMPT}
    out = []
    for c in cells:
        gap = plain[(c.text, c.base)] - plain.get((c.text, reference), math.nan)
        closed = (plain[(c.text, c.base)] - c.nll) / gap if c.prompt != NO_PROMPT and c.base != reference and gap > 0 else None
        low = high = None
        if closed is not None and per_block is not None:
            low, high = gap_interval(per_block[(c.text, c.base, NO_PROMPT)], per_block[(c.text, c.base, c.prompt)],
                                     per_block[(c.text, reference, NO_PROMPT)])
        out.append(replace(c, gap_closed=closed, gap_low=low, gap_high=high))
    return out


def gap_interval(plain: list[float], prompted: list[float], reference: list[float]) -> tuple[float | None, float | None]:
    """The GAP_LEVEL bootstrap interval of sum(plain - prompted) / sum(plain - reference) over blocks resampled
    with replacement (paired: one draw indexes all three), or (None, None) where too few draws keep a gap > 0."""
    plain_t = torch.tensor(plain, dtype=torch.float64)
    gain = plain_t - torch.tensor(prompted, dtype=torch.float64)  # (N,) per block
    gap = plain_t - torch.tensor(reference, dtype=torch.float64)  # (N,)
    draws = torch.randint(len(plain), (GAP_RESAMPLES, len(plain)), generator=torch.Generator().manual_seed(0))
    gains, gaps = gain[draws].sum(1), gap[draws].sum(1)  # (R,)
    kept = gaps > 0
    if float(kept.double().mean()) < GAP_LEVEL:
        return None, None
    tail = (1 - GAP_LEVEL) / 2
    low, high = torch.quantile(gains[kept] / gaps[kept], torch.tensor([tail, 1 - tail], dtype=torch.float64)).tolist()
    return low, high


# ---------------------------------------------------------------------------------------------------
# Writing


def write(cells: list[Cell], out: Path, protocol: str) -> list[Path]:
    """perplexity.csv (one row per cell), perplexity.md (a table per text; task accuracy), perplexity.png (bars)
    and transfer.png (a heatmap per text: bases x prompts, log-perplexity). Returns the files written."""
    out.mkdir(parents=True, exist_ok=True)
    fields = ["text", "base", "prompt", "tokens", "nll", "ppl", "gap_closed", "gap_low", "gap_high", "accuracy"]
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=fields, lineterminator="\n")
    writer.writeheader()
    for c in cells:
        writer.writerow({f: getattr(c, f) for f in fields})
    (out / "perplexity.csv").write_text(buffer.getvalue())
    (out / "perplexity.md").write_text(markdown(cells, protocol))
    plot(cells, out)
    return [out / n for n in ("perplexity.csv", "perplexity.md", "perplexity.png", "transfer.png")]


def _order(values) -> list:
    return list(dict.fromkeys(values))


def markdown(cells: list[Cell], protocol: str) -> str:
    bases, prompts, texts = _order(c.base for c in cells), _order(c.prompt for c in cells), _order(c.text for c in cells)
    at = {(c.text, c.base, c.prompt): c for c in cells}
    lines = ["# Perplexity: dense, compressed, compressed + prompt", "", protocol, ""]
    for text in texts:
        tokens = next(c.tokens for c in cells if c.text == text)
        lines += [f"## text `{text}` ({tokens:,} scored tokens per cell)", "",
                  "perplexity (gap closed: share of the base's log-perplexity gap to the reference, with its 90% "
                  "bootstrap interval over blocks)", "",
                  "| base | " + " | ".join(f"prompt `{p}`" if p != NO_PROMPT else "no prompt" for p in prompts) + " |",
                  "|---|" + "---:|" * len(prompts)]
        for base in bases:
            row = []
            for p in prompts:
                c = at[(text, base, p)]
                row.append(f"{c.ppl:.3f}" + gap_text(c))
            lines.append(f"| {base} | " + " | ".join(row) + " |")
        lines.append("")
    if any(c.accuracy is not None for c in cells):
        text = texts[0]
        lines += ["## task accuracy (exact match, greedy)", "",
                  "| base | " + " | ".join(p if p != NO_PROMPT else "no prompt" for p in prompts) + " |",
                  "|---|" + "---:|" * len(prompts)]
        for base in bases:
            lines.append(f"| {base} | " + " | ".join(f"{at[(text, base, p)].accuracy:.3f}" for p in prompts) + " |")
        lines.append("")
    return "\n".join(lines)


def gap_text(c: Cell) -> str:
    if c.gap_closed is None:
        return ""
    if c.gap_low is None:
        return f" ({c.gap_closed:+.0%}, gap unresolved)"
    return f" ({c.gap_closed:+.0%} [{c.gap_low:+.0%}, {c.gap_high:+.0%}])"


def plot(cells: list[Cell], out: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import numpy as np

    bases, prompts, texts = _order(c.base for c in cells), _order(c.prompt for c in cells), _order(c.text for c in cells)
    at = {(c.text, c.base, c.prompt): c for c in cells}
    fig, axes = plt.subplots(1, len(texts), figsize=(max(5, 1.6 * len(bases) * max(1, len(prompts) / 2)) * len(texts), 4),
                             squeeze=False)
    width = 0.8 / len(prompts)
    for ax, text in zip(axes[0], texts):
        x = np.arange(len(bases))
        for i, p in enumerate(prompts):
            ax.bar(x + i * width, [at[(text, b, p)].ppl for b in bases], width, label=p if p != NO_PROMPT else "no prompt")
        ax.set_xticks(x + width * (len(prompts) - 1) / 2, bases)
        ax.set_ylabel("perplexity")
        ax.set_title(f"text: {text}")
        ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(out / "perplexity.png", dpi=110)
    plt.close(fig)

    fig, axes = plt.subplots(1, len(texts), figsize=(1.2 * len(prompts) * len(texts) + 3, 0.6 * len(bases) + 2),
                             squeeze=False)
    for ax, text in zip(axes[0], texts):
        grid = np.array([[at[(text, b, p)].nll for p in prompts] for b in bases])  # (bases, prompts): log-perplexity
        image = ax.imshow(grid, cmap="viridis_r", aspect="auto")
        ax.set_xticks(range(len(prompts)), [p if p != NO_PROMPT else "no prompt" for p in prompts], rotation=30, ha="right")
        ax.set_yticks(range(len(bases)), bases)
        for (i, j), v in np.ndenumerate(grid):
            ax.text(j, i, f"{math.exp(v):.2f}", ha="center", va="center", color="w", fontsize=8)
        ax.set_title(f"perplexity, prompt (x) on base (y): {text}")
        fig.colorbar(image, ax=ax, label="log-perplexity")
    fig.tight_layout()
    fig.savefig(out / "transfer.png", dpi=110)
    plt.close(fig)
