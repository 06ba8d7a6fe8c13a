#!/usr/bin/env python
"""Build the embedded multi-label classification demo: companies of the demo world, each with one to
three industry sectors (in the spirit of PTEC's industry sector allocation), written in the words the
bundled demo model was pretrained on, to softprompt/data/demo/classify/{train,validation,test}.jsonl.

    python scripts/build_demo_classify.py      # < 1 s, offline, deterministic (seeded; no torch)

A company is one of the demo world's 570 made-up nouns. Its sectors follow from three of its world
facts, which the pretraining corpus states and the row's text does not: its kind (the product line:
`fruit` -> agriculture, `gem` -> jewelry, ...), its home (where it trades: `river` -> shipping, `city`
-> retail, ...) and its taste (`sweet`, `salty` -> food). A row is a short sentence about the company
that ends in the corpus's fact syntax, `COMPANY =`, the form at which the model recalls the noun's
facts; the sentence's other words (subject, verb, size and color words) are decoys:

    {"text": "the child carried a tasku =", "labels": ["agriculture", "fishing", "food"]}  # fish, farm, sweet

So the classifier has to read what the frozen model knows about a company it was never shown with
labels: companies are disjoint across splits (the LM demo's noun splits, softprompt/data/demo/task/),
and a test score measures generalisation to new companies. 40% of each split's gem and toy
companies are kept (RARE_KEEP), so jewelry and toys are rare labels (the inverse-frequency pos_weight matters).

The world (each noun's facts) is read from the bundled corpus (softprompt/data/demo/corpus.txt, its
`ATTRIBUTE : NOUN = VALUE` lines), so this script needs nothing but the files build_demo.py wrote.
"""

from __future__ import annotations

import argparse
import json
import random
import re
from collections import Counter
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
DEMO = ROOT / "softprompt" / "data" / "demo"
OUT = DEMO / "classify"

SECTORS = ("agriculture", "livestock", "fishing", "hardware", "jewelry", "toys", "shipping", "retail", "mining", "food")
KIND_SECTOR = {"fruit": "agriculture", "plant": "agriculture", "beast": "livestock", "bird": "livestock",
               "fish": "fishing", "tool": "hardware", "gem": "jewelry", "toy": "toys"}
HOME_SECTOR = {"farm": "agriculture", "river": "shipping", "ocean": "shipping", "city": "retail",
               "mountain": "mining", "cave": "mining", "forest": None, "desert": None}  # None: no sector
TASTE_SECTOR = {"sweet": "food", "salty": "food", "sour": None, "bitter": None, "spicy": None, "bland": None}
RARE_KEEP = {"gem": 0.4, "toy": 0.4}  # the share of each split's gem / toy companies kept: jewelry, toys ~5%
ROWS_PER_COMPANY = 2  # two different sentences per company in every split
SEED = 0

# decoys: words of the demo world's filler sentences and attribute values that carry no sector
SUBJECTS = ("i", "we", "they", "the farmer", "my friend", "the child", "a stranger", "the old man", "she", "he")
VERBS = ("saw", "found", "lost", "bought", "drew", "named", "kept", "sold", "fed", "met", "painted", "carried")
SIZES = ("tiny", "small", "medium", "large", "huge", "giant")
COLORS = ("red", "blue", "green", "yellow", "black", "white", "purple", "orange")


def world(corpus: Path) -> dict[str, dict[str, str]]:
    """Each noun's facts, {attribute: value}, from the corpus's marked facts and lists."""
    facts: dict[str, dict[str, str]] = {}
    for line in corpus.read_text().splitlines():
        marked = re.fullmatch(r"(\w+) : (.*)", line)
        if marked:
            for noun, value in re.findall(r"(\w+) = (\w+)", marked.group(2)):
                facts.setdefault(noun, {})[marked.group(1)] = value
    return facts


def companies(split: str) -> list[str]:
    """The LM demo's task split's nouns (its sources are `NOUN =`), in file order."""
    lines = (DEMO / "task" / f"{split}.jsonl").read_text().splitlines()
    return [json.loads(line)["source"].split()[0] for line in lines]


def sectors(facts: dict[str, str]) -> list[str]:
    found = {KIND_SECTOR[facts["kind"]], HOME_SECTOR[facts["home"]], TASTE_SECTOR[facts["taste"]]} - {None}
    return [s for s in SECTORS if s in found]


def sentence(rng: random.Random, company: str) -> str:
    """`COMPANY =` after a decoy clause of 0-2 adjectives (none: the corpus's own `COMPANY =` line)."""
    if rng.random() < 0.15:
        return f"{company} ="
    adjectives = rng.sample([rng.choice(SIZES), rng.choice(COLORS)], rng.randint(0, 2))
    return " ".join([rng.choice(SUBJECTS), rng.choice(VERBS), "a", *adjectives, company, "="])


def build(seed: int, corpus: Path) -> dict[str, list[dict]]:
    facts = world(corpus)
    rng = random.Random(seed)
    out = {}
    for split in ("train", "validation", "test"):
        names = companies(split)
        dropped = set()
        for kind, keep in RARE_KEEP.items():  # an exact share per split: every split keeps some of each
            of_kind = [c for c in names if facts[c]["kind"] == kind]
            dropped |= set(rng.sample(of_kind, len(of_kind) - round(keep * len(of_kind))))
        rows = []
        for company in [c for c in names if c not in dropped]:
            texts: list[str] = []
            while len(texts) < ROWS_PER_COMPANY:
                text = sentence(rng, company)
                if text not in texts:
                    texts.append(text)
            rows += [{"text": text, "labels": sectors(facts[company])} for text in texts]
        out[split] = rows
    return out


def describe(data: dict[str, list[dict]]) -> str:
    """A table of each sector's share of rows per split, and the labels per row."""
    lines = [f"{'sector':<12}" + "".join(f"{s:>12}" for s in data)]
    counts = {s: Counter(label for r in rows for label in r["labels"]) for s, rows in data.items()}
    for label in SECTORS:
        lines.append(f"{label:<12}" + "".join(f"{counts[s][label] / len(rows):>12.1%}" for s, rows in data.items()))
    lines.append(f"{'labels/row':<12}" + "".join(
        f"{sum(len(r['labels']) for r in rows) / len(rows):>12.2f}" for rows in data.values()))
    lines.append(f"{'rows':<12}" + "".join(f"{len(rows):>12}" for rows in data.values()))
    return "\n".join(lines)


def write(data: dict[str, list[dict]], out: Path) -> None:
    out.mkdir(parents=True, exist_ok=True)
    for split, rows in data.items():
        (out / f"{split}.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", type=Path, default=OUT)
    ap.add_argument("--seed", type=int, default=SEED)
    args = ap.parse_args()
    data = build(args.seed, DEMO / "corpus.txt")
    write(data, args.out)
    print(describe(data))
    print(f"wrote {', '.join(f'{s} {len(r)}' for s, r in data.items())} rows to {args.out}")


if __name__ == "__main__":
    main()
