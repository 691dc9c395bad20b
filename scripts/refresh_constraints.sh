#!/usr/bin/env bash
# Refresh scripts/constraints.txt, on purpose: set up a fresh environment in a temporary folder
# with vLLM's CPU build and no constraints (the newest versions pyproject.toml's extras allow, and
# vLLM's CPU build pins transformers and torch), then pin every version it installed. Review the
# diff, run the tests and the quick start, and commit the file with the figures it gives.
set -euo pipefail
cd "$(dirname "$0")/.."
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
MAGRPO_VENV="$tmp/venv" MAGRPO_CONSTRAINTS=none MAGRPO_WITH_VLLM=1 bash scripts/setup.sh
{
  echo "# The versions scripts/setup.sh installs, with or without vLLM (pip -c: a package not installed"
  echo "# is not pulled in). Written by scripts/refresh_constraints.sh from a fresh set-up with"
  echo "# MAGRPO_WITH_VLLM=1; refresh it on purpose, never by hand."
  # magrpo itself (editable) and packages from local files are not pins; torch's local label (+cpu) is the index's
  "$tmp/venv/bin/python" -m pip freeze --exclude-editable | grep -v -e '^magrpo==' -e ' @ ' | sed -E 's/^(torch==[^+]*)\+.*/\1/'
} > scripts/constraints.txt
echo "wrote scripts/constraints.txt ($(grep -vc '^#' scripts/constraints.txt) pins)"
