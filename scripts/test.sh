#!/usr/bin/env bash
# Set up (with vLLM's CPU build, so the vLLM backend's tests run too), then run the test suite.
# Extra arguments go to pytest.
set -euo pipefail
cd "$(dirname "$0")/.."
MAGRPO_WITH_VLLM=${MAGRPO_WITH_VLLM:-1} bash scripts/setup.sh
exec .venv/bin/python -m pytest -q "$@"
