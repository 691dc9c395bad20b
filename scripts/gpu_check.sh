#!/usr/bin/env bash
# The GPU path checked in one run of under ten minutes, on a GPU machine without network access
# that gets only a copy of the repository (limited to 64 MiB in all) and has Python 3.12 with a
# CUDA torch at python3 (the packages scripts/gpu_prepare.sh names).
#
#   bash scripts/gpu_prepare.sh          # first, on a machine with network access: fills .gpu/
#   bash scripts/gpu_check.sh --dry-run  # anywhere: checks every part, runs nothing that needs CUDA
#
# On the GPU machine, the wheels it lacks and the bundled model (151 MiB in all) come in loads,
# .gpu/load1 .. .gpu/loadN (3 today), one beside the repository in each copy sent to it: run
#
#   bash scripts/gpu_check.sh --stash-only   # with .gpu/load1, then .gpu/load2, ... (a few seconds each)
#   bash scripts/gpu_check.sh                # with the last load: the check itself
#
# one after the other on the same machine while it stays up (the loads wait under
# $MAGRPO_GPU_HOME, /tmp/magrpo-gpu).
# A run without every load still runs what it can: without the model the tests run and the
# quick start and benchmarks are skipped; without trl the benchmarks are.
#
# Parts, each under its own time limit, all within GPU_CHECK_BUDGET_S (default 560 s):
#   payload     keep the loads this copy carries, install the wheels the machine lacks, join the model
#   machine     the GPU, torch, CUDA and library versions
#   model       the bundled model converted once (GGUF -> safetensors)
#   tests       the GPU-marked and device-generic tests on cuda (MAGRPO_TEST_DEVICE=cuda)
#   quickstart  scripts/demo.sh's run with device=cuda: its held-out reward must rise, as on the CPU
#   vllm-sync   a full and a LoRA agent: after a weight push the engine's log-probs are the trainer's
#   bench       benchmarks/bench_vs_trl.py --device cuda --precision mixed at 2 x G4 x 48 and
#               16 x G4 x 256 tokens: TRL, magrpo's fast sampler; with vLLM, in the same run, TRL
#               with use_vllm and magrpo's vllm rollout
# vLLM's GPU wheel is too large to travel: where vllm is not importable its parts say
# "skipped: vllm not installed". Output: each part's log and summary.md (part, status, seconds,
# key figures) in $OUT (default runs/gpu_check/); the table is printed at the end. Exit status 1
# if a part failed or ran out of time (a skip is no failure).
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT=$PWD

DRY=0
STASH_ONLY=0
for arg in "$@"; do
  case $arg in
    --dry-run) DRY=1 ;;
    --stash-only) STASH_ONLY=1 ;;
    -h | --help) sed -n '2,/^set -euo/p' "$0" | sed '$d; s/^# \{0,1\}//'; exit 0 ;;
    *) echo "unknown option: $arg (see --help)" >&2; exit 2 ;;
  esac
done

PAYLOAD=${MAGRPO_GPU_PAYLOAD:-.gpu}
GPU_HOME=${MAGRPO_GPU_HOME:-/tmp/magrpo-gpu}
BUDGET=${GPU_CHECK_BUDGET_S:-560}
OUT=${OUT:-runs/gpu_check}
mkdir -p "$OUT"
OUT=$(cd "$OUT" && pwd)
if [ -n "${PYTHON:-}" ]; then
  PY=$PYTHON
elif [ -x .venv/bin/python ]; then
  PY=.venv/bin/python # a development machine or CI
else
  PY=python3 # the GPU machine
fi
SITE=$GPU_HOME/site
if ((DRY)); then
  export PYTHONPATH=$ROOT/src${PYTHONPATH:+:$PYTHONPATH}
else
  export PYTHONPATH=$SITE:$ROOT/src${PYTHONPATH:+:$PYTHONPATH}
  export MAGRPO_CACHE=${MAGRPO_CACHE:-$GPU_HOME/cache}
fi
export HF_HUB_OFFLINE=1 TOKENIZERS_PARALLELISM=false COLUMNS=200
TOOLS=("$PY" scripts/gpu_tools.py) # the standard library only; install asks this Python what it lacks

# ---------------------------------------------------------------------------- the table
ROWS=$OUT/rows.tsv
: > "$ROWS"
FAILED=0
START=$SECONDS
row() { # PART STATUS SECONDS FIGURES: one line of the table, rewritten after each part
  printf '%s\t%s\t%s\t%s\n' "$1" "$2" "$3" "$(echo "$4" | tr '\t\n' '  ')" >> "$ROWS"
  case $2 in FAIL* | TIMEOUT*) FAILED=1 ;; esac
  "${TOOLS[@]}" table "$ROWS" > "$OUT/summary.md"
  echo "--- $1: $2${3:+ (${3} s)}"
}
shown() { # a command as one would type it
  local arg words=()
  for arg in "$@"; do
    if [[ $arg =~ [^A-Za-z0-9_./=:,@%+-] ]]; then words+=("'${arg//\'/\'\\\'\'}'"); else words+=("$arg"); fi
  done
  echo "${words[*]}"
}

# run_part NAME LIMIT_S COMMAND...: the command under its own limit (and what is left of the
# budget), its output in $OUT/NAME.log; sets RC (124: out of time), SECS and STATUS
limit_for() { # WANT_S: that, or what is left of the budget
  # a dry run's limits only stop a hang: a busy CPU collecting the tests is not the GPU machine
  ((DRY)) && { echo $(($1 * 5)); return; }
  local left=$((BUDGET - (SECONDS - START) - 5))
  echo $(($1 < left ? $1 : left))
}
run_part() {
  local name=$1 limit
  limit=$(limit_for "$2")
  shift 2
  LOG=$OUT/$name.log
  if ((limit < 20)); then
    RC=skip SECS="" STATUS="skipped: no time left of the ${BUDGET} s budget"
    return 0
  fi
  echo "--- $name: $(shown "$@") (limit ${limit} s)"
  local t0=$SECONDS
  set +e
  timeout -k 10 "$limit" "$@" > "$LOG" 2>&1
  RC=$?
  set -e
  SECS=$((SECONDS - t0))
  case $RC in
    0) STATUS=ok ;;
    124 | 137) STATUS="TIMEOUT after ${limit} s" ;;
    *) STATUS="FAIL (exit $RC)" ;;
  esac
}
has_module() { "$PY" -c "import importlib.util, sys; sys.exit(importlib.util.find_spec('$1') is None)" 2> /dev/null; }

# ---------------------------------------------------------------------------- the parts' commands
# (the learning tests of many steps, minutes on a CPU, are left out for time: the quick start learns on cuda)
TESTS=(env MAGRPO_TEST_DEVICE=cuda "$PY" -m pytest -q -p no:cacheprovider -m "(gpu or device_generic) and not long"
  --durations=10)
# scripts/demo.sh's run (tests/test_gpu_check.py holds the two equal), on cuda, its big files under /tmp
QUICKSTART_ARGS=(--task coding --steps 8 --batch-size 2 --num-generations 4 --max-new-tokens 64 --eval-items 8)
QUICKSTART=("$PY" -m magrpo.cli train "${QUICKSTART_ARGS[@]}" --output-dir "$GPU_HOME/quickstart" --no-progress
  --set device=cuda)
SYNC_TESTS="after_a_sync_the_engine_samples_the_updated_weights or lora_agents_on_one_base_share_one_engine"
SYNC=(env MAGRPO_TEST_DEVICE=cuda "$PY" -m pytest -q -s -p no:cacheprovider tests/sampling/test_vllm_engine.py
  -k "$SYNC_TESTS")
bench() { # bench PROMPTS TOKENS STEPS WITH_VLLM: the benchmark's command
  local systems=trl,magrpo-single,magrpo-team rollout=fast
  if (($4)); then systems=trl,trl-vllm,magrpo-single,magrpo-team rollout=fast,vllm; fi
  BENCH=("$PY" benchmarks/bench_vs_trl.py --device cuda --precision mixed --rollout "$rollout" --systems "$systems"
    --prompts "$1" --num-generations 4 --max-new-tokens "$2" --steps "$3")
}
BENCHES=("2 48 3" "16 256 2") # prompts, tokens, steps (the first step is warm-up)

HAVE_VLLM=0
has_module vllm && HAVE_VLLM=1

# ---------------------------------------------------------------------------- the dry run
if ((DRY)); then
  echo "dry run: checks each part and runs nothing that needs CUDA (python: $PY)"
  set +e
  figures=$("${TOOLS[@]}" check "$PAYLOAD" 2>&1)
  rc=$?
  set -e
  case $rc in
    0) row payload checked "" "$figures" ;;
    2) row payload "not prepared" "" "$figures" ;;
    *) row payload FAIL "" "$figures" ;;
  esac

  run_part machine 60 "${TOOLS[@]}" machine --versions-only
  row machine "$([ "$RC" = 0 ] && echo checked || echo "$STATUS")" "$SECS" "$(tail -1 "$LOG")"

  row model "would run: $(shown "$PY" -c "from magrpo.models import bundled_model_dir; bundled_model_dir()")" "" \
    "where the model's parts came (scripts/gpu_prepare.sh)"

  run_part tests 120 "${TESTS[@]}" --collect-only
  figures=$("${TOOLS[@]}" figures pytest "$LOG")
  if [ "$RC" = 0 ] && [[ $figures =~ ^[1-9][0-9]*(/[0-9]+)?\ tests?\ collected ]]; then
    row tests "would run: $(shown "${TESTS[@]}")" "$SECS" "$figures"
  else
    row tests "FAIL: collecting them: $STATUS" "$SECS" "$figures (see $LOG)"
  fi

  run_part quickstart 60 "$PY" -m magrpo.cli train --help
  missing=""
  for flag in "${QUICKSTART[@]}"; do
    if [[ $flag == --* ]] && [ "$RC" = 0 ] && ! grep -q -- "$flag\b" "$LOG"; then missing+=" $flag"; fi
  done
  "$PY" -c "import dataclasses, sys; from magrpo.config import MAGRPOConfig; sys.exit('device' not in {f.name for f in dataclasses.fields(MAGRPOConfig)})" ||
    missing+=" --set device"
  if [ "$RC" = 0 ] && [ -z "$missing" ]; then
    row quickstart "would run: $(shown "${QUICKSTART[@]}")" "$SECS" "train --help lists each flag; device is a config field"
  else
    row quickstart "FAIL: $STATUS" "$SECS" "not in train --help:${missing:- (it failed)}"
  fi

  run_part vllm-sync 120 "${SYNC[@]}" --collect-only
  full=$(grep -c "after_a_sync_the_engine_samples_the_updated_weights" "$LOG" || true)
  lora=$(grep -c "lora_agents_on_one_base_share_one_engine" "$LOG" || true)
  if [ "$RC" = 0 ] && ((full > 0 && lora > 0)); then
    row vllm-sync "would run: $(shown "${SYNC[@]}")" "$SECS" \
      "collected: $full full-agent, $lora LoRA; runs where vllm is importable (here: $( ((HAVE_VLLM)) && echo yes || echo no))"
  else
    row vllm-sync "FAIL: the sync tests are not found ($STATUS)" "$SECS" "full-agent $full, LoRA $lora (see $LOG)"
  fi

  for shape in "${BENCHES[@]}"; do
    read -r prompts tokens steps <<< "$shape"
    name="bench-${prompts}x4x${tokens}"
    bench "$prompts" "$tokens" "$steps" 0
    without=("${BENCH[@]}")
    bench "$prompts" "$tokens" "$steps" 1
    run_part "$name" 60 "${without[@]}" --plan
    plan_without=$(grep -c "device=cuda" "$LOG" || true)
    rc_without=$RC
    run_part "$name-vllm" 60 "${BENCH[@]}" --plan
    plan_with=$(grep -c "device=cuda" "$LOG" || true)
    if [ "$rc_without" = 0 ] && [ "$RC" = 0 ]; then
      row "$name" "would run: $(shown "${without[@]}")" "" "plans $plan_without runs: TRL generate, magrpo fast"
      row "$name-vllm" "would run: $(shown "${BENCH[@]}")" "" \
        "plans $plan_with runs (TRL use_vllm, magrpo vllm beside the above) where vllm is importable"
    else
      row "$name" "FAIL: the benchmark refused its options" "" "see $OUT/$name.log"
      row "$name-vllm" "FAIL: the benchmark refused its options" "" "see $OUT/$name-vllm.log"
    fi
  done
  echo
  cat "$OUT/summary.md"
  exit "$FAILED"
fi

# ---------------------------------------------------------------------------- on the GPU machine
mkdir -p "$GPU_HOME"
run_part payload 90 "${TOOLS[@]}" stash "$PAYLOAD" "$GPU_HOME/stash"
payload_status=$STATUS payload_secs=$SECS
payload_figures=$(tail -1 "$LOG")
if ((STASH_ONLY)); then
  row payload "$payload_status (stash only)" "$payload_secs" "$payload_figures"
  cat "$OUT/summary.md"
  exit "$FAILED"
fi
if [ "$RC" = 0 ]; then
  run_part payload 90 "${TOOLS[@]}" install "$GPU_HOME/stash" "$SITE"
  payload_status=$STATUS payload_secs=$((payload_secs + SECS))
  payload_figures+="; $(tail -1 "$LOG")"
fi
row payload "$payload_status" "$payload_secs" "$payload_figures"

run_part machine 60 "${TOOLS[@]}" machine
CUDA=0
grep -q "NO CUDA DEVICE" "$LOG" || { [ "$RC" = 0 ] && CUDA=1; }
((CUDA)) || [ "$RC" != 0 ] || STATUS="FAIL: no CUDA device"
row machine "$STATUS" "$SECS" "$(tail -1 "$LOG")"

HAVE_MODEL=0
"$PY" -c "from magrpo.models.presets import bundled_gguf_path; bundled_gguf_path()" 2> /dev/null && HAVE_MODEL=1
HAVE_TRL=0
has_module trl && has_module datasets && HAVE_TRL=1
no_model="skipped: model not present (bring every load: scripts/gpu_prepare.sh)"

if ((HAVE_MODEL)); then
  run_part model 120 "$PY" -c "from magrpo.models import bundled_model_dir; print(bundled_model_dir())"
  row model "$STATUS" "$SECS" "$(tail -1 "$LOG")"
  [ "$RC" = 0 ] || { HAVE_MODEL=0 && no_model="skipped: the model did not convert (model.log)"; }
else
  row model "$no_model" "" ""
fi

if ((CUDA)); then
  # pytest-timeout (where it is installed) ends the session in time for pytest's own summary
  stop=()
  limit=$(limit_for 150)
  has_module pytest_timeout && ((limit > 60)) && stop=(--session-timeout $((limit - 25)))
  run_part tests "$limit" "${TESTS[@]}" "${stop[@]}"
  [ "$RC" = 1 ] && STATUS="FAIL (tests failed)"
  row tests "$STATUS" "$SECS" "$("${TOOLS[@]}" figures pytest "$LOG")"
else
  row tests "skipped: no CUDA device" "" ""
fi

if ((CUDA && HAVE_MODEL)); then
  rm -rf "$GPU_HOME/quickstart"
  run_part quickstart 210 "${QUICKSTART[@]}"
  mkdir -p "$OUT/quickstart"
  for f in eval_before.json eval_after.json metrics.jsonl config.yaml; do
    [ -f "$GPU_HOME/quickstart/$f" ] && cp "$GPU_HOME/quickstart/$f" "$OUT/quickstart/"
  done
  figures=$(tail -1 "$LOG")
  if [ "$RC" = 0 ]; then
    held_out=$("${TOOLS[@]}" figures quickstart "$GPU_HOME/quickstart" docs/results/quickstart || true)
    IFS=$'\t' read -r learned figures <<< "$held_out"
    case $learned in
      learned) ;;
      "did not learn") STATUS="FAIL: did not learn" ;;
      *) STATUS="FAIL: no held-out results" figures="see quickstart.log" ;;
    esac
  fi
  row quickstart "$STATUS" "$SECS" "$figures"
elif ((CUDA)); then
  row quickstart "$no_model" "" ""
else
  row quickstart "skipped: no CUDA device" "" ""
fi

if ((!HAVE_VLLM)); then
  row vllm-sync "skipped: vllm not installed" "" ""
elif ((CUDA)); then
  run_part vllm-sync 150 "${SYNC[@]}"
  [ "$RC" = 1 ] && STATUS="FAIL (tests failed)"
  row vllm-sync "$STATUS" "$SECS" "$("${TOOLS[@]}" figures pytest "$LOG")"
else
  row vllm-sync "skipped: no CUDA device" "" ""
fi

for shape in "${BENCHES[@]}"; do
  read -r prompts tokens steps <<< "$shape"
  name="bench-${prompts}x4x${tokens}"
  reason=""
  ((CUDA)) || reason="skipped: no CUDA device"
  ((HAVE_MODEL)) || reason=${reason:-$no_model}
  ((HAVE_TRL)) || reason=${reason:-"skipped: trl not installed (bring every load)"}
  if [ -n "$reason" ]; then
    row "$name" "$reason" "" ""
    row "$name-vllm" "$( ((HAVE_VLLM)) && echo "$reason" || echo "skipped: vllm not installed")" "" ""
    continue
  fi
  bench "$prompts" "$tokens" "$steps" "$HAVE_VLLM"
  run_part "$name" $((HAVE_VLLM ? 240 : 150)) "${BENCH[@]}"
  row "$name" "$STATUS" "$SECS" "$("${TOOLS[@]}" figures bench "$LOG" || tail -1 "$LOG")"
  if ((HAVE_VLLM)); then
    row "$name-vllm" "$STATUS (the same run)" "" "$("${TOOLS[@]}" figures bench-vllm "$LOG" || true)"
  else
    row "$name-vllm" "skipped: vllm not installed" "" ""
  fi
done

echo
echo "$((SECONDS - START)) s in all; logs and summary.md in $OUT"
cat "$OUT/summary.md"
exit "$FAILED"
