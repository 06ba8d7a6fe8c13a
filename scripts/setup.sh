#!/usr/bin/env bash
# Set up a virtual environment for softprompt on a machine with only python3 and pip.
#   bash scripts/setup.sh                  # .venv, runtime
#   bash scripts/setup.sh test             # .venv + test extras (pytest, triton for the kernel parity tests)
#                                          # and deepspeed (its ZeRO tests)
#   bash scripts/setup.sh test lowest      # .venv-lowest: test extras at the lowest supported versions
#                                          # (ci/constraints-lowest.txt, pyproject.toml's lower bounds)
#   bash scripts/setup.sh compress         # .venv-compress: softprompt + llmcompressor, which pins an older
#                                          # transformers, so `softprompt compress` runs GPTQ/SparseGPT/Wanda
#                                          # there (SOFTPROMPT_COMPRESS_PYTHON=.venv-compress/bin/python)
# torch: an already-installed torch (e.g. a CUDA build in the system Python) is kept: the venv then
# sees the system site-packages. Otherwise the pinned CPU build is taken (torch==2.13.0 resolves to
# the CPU wheel where one is provided locally; a bare `torch` would pull several GB of CUDA packages).
set -euo pipefail
cd "$(dirname "$0")/.."
extra="${1:-}"
flavour="${2:-newest}"
venv=.venv
constraints=()
if [ "$flavour" = lowest ]; then
  venv=.venv-lowest
  constraints=(-c ci/constraints-lowest.txt)
fi
if [ "$extra" = compress ]; then
  venv=.venv-compress
  extra=llmcompressor
  flavour="llmcompressor's pinned"
fi
if [ ! -x "$venv/bin/python" ]; then
  if python3 -c "import torch" 2>/dev/null; then
    echo "setup: keeping the installed torch $(python3 -c 'import torch; print(torch.__version__)')"
    python3 -m venv --system-site-packages "$venv"
  else
    python3 -m venv "$venv"
  fi
fi
# pip, minus the registry mirror's "Location ... is ignored" chatter; its exit status is kept
pipq() { "$venv/bin/python" -m pip --disable-pip-version-check -q "$@" 2>&1 | { grep -v "is ignored" || true; }; }
if ! "$venv/bin/python" -c "import torch" 2>/dev/null; then
  echo "setup: installing torch (CPU build)"
  pipq install "torch==2.13.0" || pipq install torch
fi
target="."
[ -n "$extra" ] && target=".[$extra]"
# the newest-versions test job also runs DeepSpeed (its ZeRO tests); the lowest job's parity tests do not need it
[ "$extra" = test ] && [ "$flavour" = newest ] && target=".[test,deepspeed]"
echo "setup: installing softprompt${extra:+ [$extra]} into $venv ($flavour versions)"
pipq install -e "$target" "${constraints[@]}"
"$venv/bin/python" -c "import softprompt, torch, transformers, peft, accelerate; print('setup: softprompt', softprompt.__version__, '| torch', torch.__version__, '| transformers', transformers.__version__, '| peft', peft.__version__, '| accelerate', accelerate.__version__)"
