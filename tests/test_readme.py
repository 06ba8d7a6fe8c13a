"""Every fenced block of README.md runs, so the docs cannot drift from the code.

Each block is run as its language says, in a scratch directory that holds the repo's recipes (so
nothing lands in the checkout), offline:
- python: the block as a script; it must exit 0;
- bash: each command line in turn; each must exit 0;
- yaml: loaded as a recipe (`load_config`); it must be valid;
- console: the `$ command` is run and every shown output line must appear, in order (`...` skips);
- text: an output sample, not code (its command is checked where it is run).
An HTML comment right before a block changes how it is checked:
- `<!-- readme: hub -->`: the block needs a model hub; offline it must fail with one clear error line
  that says so (no traceback);
- `<!-- readme: ci -->`: the set-up commands; they are what `.ci/run` and the demo script run, so the
  test checks that link instead of running the whole suite from inside itself;
- `<!-- readme: install -->`: pip commands; the extras they name must exist in pyproject.toml.
"""

from __future__ import annotations

import os
import re
import shlex
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[1]
README = ROOT / "README.md"
LANGUAGES = ("python", "bash", "yaml", "console", "text")
DIRECTIVES = ("hub", "ci", "install")


@dataclass
class Block:
    line: int  # 1-based line of the opening fence
    language: str
    code: str
    directive: str | None

    @property
    def id(self) -> str:
        return f"L{self.line}-{self.language}" + (f"-{self.directive}" if self.directive else "")


def blocks(text: str) -> list[Block]:
    found, lines, i = [], text.splitlines(), 0
    while i < len(lines):
        fence = re.match(r"^```(\S*)\s*$", lines[i])
        if not fence:
            i += 1
            continue
        start, language = i, fence.group(1)
        end = next(j for j in range(i + 1, len(lines)) if lines[j].startswith("```"))
        previous = next((lines[j] for j in range(start - 1, -1, -1) if lines[j].strip()), "")
        directive = re.fullmatch(r"<!-- readme: (\w+) -->", previous.strip())
        found.append(Block(start + 1, language, "\n".join(lines[start + 1:end]) + "\n",
                           directive.group(1) if directive else None))
        i = end + 1
    return found


BLOCKS = blocks(README.read_text())


def env() -> dict:
    bin_dir = str(Path(sys.executable).parent)  # the venv's `softprompt` and `accelerate` scripts
    return {**os.environ, "PATH": bin_dir + os.pathsep + os.environ.get("PATH", ""), "HF_HUB_OFFLINE": "1",
            "HF_DATASETS_OFFLINE": "1", "WANDB_MODE": "offline", "TOKENIZERS_PARALLELISM": "false",
            "PYTHONPATH": str(ROOT)}


@pytest.fixture
def workspace(tmp_path) -> Path:
    """A scratch cwd with the repo's recipes, so README paths resolve and outputs stay out of the checkout."""
    (tmp_path / "recipes").symlink_to(ROOT / "recipes")
    return tmp_path


def run(command: list[str] | str, cwd: Path, timeout: int = 600) -> subprocess.CompletedProcess:
    return subprocess.run(command, cwd=cwd, env=env(), capture_output=True, text=True, timeout=timeout,
                          shell=isinstance(command, str), executable="/bin/bash" if isinstance(command, str) else None)


def commands(block: Block) -> list[str]:
    """The command lines of a bash block (comments dropped, `\\` continuations joined)."""
    text = re.sub(r"\\\n\s*", " ", block.code)
    return [re.sub(r"\s+#.*$", "", line).strip() for line in text.splitlines()
            if line.strip() and not line.strip().startswith("#")]


def test_every_block_has_a_known_language_and_directive():
    assert len(BLOCKS) >= 8
    for block in BLOCKS:
        assert block.language in LANGUAGES, f"README line {block.line}: fence language {block.language!r}"
        assert block.directive in (None, *DIRECTIVES), f"README line {block.line}: directive {block.directive!r}"


LLMCOMPRESSOR_METHODS = ("gptq", "sparsegpt", "wanda")  # `softprompt compress` runs these in .venv-compress


def _params(*languages: str, directive: str | None = None, slow: bool = False):
    chosen = [b for b in BLOCKS if b.language in languages and b.directive == directive]

    def marks(block: Block) -> list:
        llmc = any(f"--method {m}" in block.code for m in LLMCOMPRESSOR_METHODS)
        return [pytest.mark.slow] * slow + [pytest.mark.llmcompressor] * llmc

    return [pytest.param(b, id=b.id, marks=marks(b)) for b in chosen]


@pytest.mark.parametrize("block", _params("python", slow=True))
def test_python_blocks_run(block, workspace):
    (workspace / "snippet.py").write_text(block.code)
    done = run([sys.executable, "snippet.py"], workspace)
    assert done.returncode == 0, f"README line {block.line}:\n{done.stdout[-2000:]}\n{done.stderr[-4000:]}"


@pytest.mark.parametrize("block", _params("bash", slow=True))
def test_bash_blocks_run(block, workspace):
    for command in commands(block):
        done = run(command, workspace)
        assert done.returncode == 0, f"README line {block.line}: {command}\n{done.stdout[-2000:]}\n{done.stderr[-4000:]}"


@pytest.mark.parametrize("block", _params("yaml"))
def test_yaml_blocks_load(block, tmp_path):
    from softprompt.config import load_config

    recipe = tmp_path / "r.yaml"
    recipe.write_text(block.code)
    assert isinstance(yaml.safe_load(block.code), dict)
    load_config(recipe)


@pytest.mark.parametrize("block", _params("console"))
def test_console_blocks_show_real_output(block, workspace):
    lines = block.code.splitlines()
    assert lines[0].startswith("$ "), f"README line {block.line}: a console block starts with `$ command`"
    done = run(lines[0][2:], workspace)
    assert done.returncode == 0, done.stderr
    out = done.stdout.splitlines()
    position = 0
    for shown in lines[1:]:
        if shown.strip() == "...":
            continue
        matches = [i for i in range(position, len(out)) if out[i].rstrip() == shown.rstrip()]
        assert matches, f"README line {block.line}: {shown!r} is not in the output (in order):\n{done.stdout}"
        position = matches[0] + 1


@pytest.mark.parametrize("block", _params("python", "bash", directive="hub", slow=True))
def test_hub_blocks_fail_clearly_offline(block, workspace):
    if block.language == "python":
        (workspace / "snippet.py").write_text(block.code)
        done = run([sys.executable, "snippet.py"], workspace, timeout=120)
        assert done.returncode != 0
        last = done.stderr.strip().splitlines()[-1]
        assert "SoftPromptError" in last and ("offline" in last or "hub" in last), done.stderr[-2000:]
    else:
        for command in commands(block):
            done = run(command, workspace, timeout=120)
            assert done.returncode == 2 and "Traceback" not in done.stderr, done.stderr[-2000:]
            assert len(done.stderr.strip().splitlines()) == 1 and ("offline" in done.stderr or "hub" in done.stderr)


@pytest.mark.parametrize("block", _params("bash", directive="ci"))
def test_setup_commands_are_what_ci_and_the_demo_run(block):
    assert commands(block) == ["bash scripts/demo.sh", "bash scripts/test.sh"]
    assert "scripts/test.sh" in (ROOT / ".ci" / "run").read_text()
    assert "softprompt demo" in (ROOT / "scripts" / "demo.sh").read_text()


@pytest.mark.parametrize("block", _params("bash", directive="install"))
def test_install_extras_exist(block):
    import tomllib

    extras = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["optional-dependencies"]
    for command in commands(block):
        words = shlex.split(command)
        assert words[:3] == ["pip", "install", "-e"], command
        named = re.fullmatch(r"\.(?:\[(.*)\])?", words[3])
        assert named, command
        for extra in filter(None, (named.group(1) or "").split(",")):
            assert extra in extras, f"{command}: no extra {extra!r} in pyproject.toml"
