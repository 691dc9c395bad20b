#!/usr/bin/env bash
# Set up, then train a two-agent team on the coding task with the bundled model and show
# held-out results before and after. Extra arguments go to `magrpo train`.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
exec .venv/bin/magrpo train --task coding --steps 8 --batch-size 2 --num-generations 4 --max-new-tokens 64 --eval-items 8 \
  --output-dir runs/quickstart "$@"
