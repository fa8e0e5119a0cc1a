#!/usr/bin/env bash
# The GPU measurements of BENCHMARKS.md in one prepared script, for a session that is lent a GPU.
#
# Why a script: device time is short (15 minutes a session, at most 10 per command) and every start costs
# minutes, so the measurements go in as few calls as possible, each writing its results under $OUT as it
# goes (what finished comes back even if the call times out).
#
# On the development machine, once:
#     bash ../shared/tools/gpu-wheels.sh        # Pyro + Jupyter kernel wheels into .whl/ (git-ignored)
# Then one device call per stage, with carry [".whl"] (a later stage on the same warm machine finds the
# first stage's installs and checkpoint cache still there), or most of them in one call:
#     DEADLINE_S=520 bash benchmarks/gpu_check.sh all
#                                               # step, then the series (notebook 07's 30-s run and its
#                                               # 84-nat check are part of it); bench, warm, the recipe and
#                                               # the unit tests only while enough of DEADLINE_S (default
#                                               # 560 s) is left. Give the call a timeout_s of about 570:
#                                               # killed at its limit, it still returns the log, where each
#                                               # notebook's time and Checks output are written as it finishes
#     bash benchmarks/gpu_check.sh step         # where notebook 07's step spends its time: the CUDA-graph
#                                               # test, then variants side by side (the recorded CUDA
#                                               # graph, bf16, channels-last, ...), a profile,
#                                               # and torch.compile's variant
#     bash benchmarks/gpu_check.sh bench        # make bench + notebook 04's Pyro step table      (~1-2 min)
#     bash benchmarks/gpu_check.sh series       # every notebook, full mode, cold cache: table     (target < 10 min)
#     bash benchmarks/gpu_check.sh warm         # the same again with the cache warm: the ratio
#     bash benchmarks/gpu_check.sh 07           # notebook 07 alone, full mode (the 84-nat target)
#     bash benchmarks/gpu_check.sh recipe       # notebook 07's recipe alone, 30 s, k = 5000 on all digits
#                                               # (scored again in full float32, no TF32), with the
#                                               # recorded CUDA-graph step; then the same with the plain
#                                               # step (--no-graph) and with batches of 1024         (~5 min)
# Any other argument is passed to `course_utils.execute --only` (e.g. `03,05`).
#
# The checkpoints and generated data sets go to a cache of this script's own ($GPU_CHECK_CACHE, default
# /tmp/gpu_check_cache), never to the project's data/cache: the series stage empties that folder for a cold
# run, and the warm stage, run later on the same machine, finds it filled. The exit status is non-zero when
# any command of the stage failed (each one's status is in the log).
#
# Results: $OUT/<stage>.log (tables as printed), $OUT/bench.json, and the executed notebooks of the
# stage as $OUT/<stage>-nb.tar.gz (outputs included, for the figures and the numbers in them).
set -uo pipefail
cd "$(dirname "$0")/.."
stage=${1:?usage: bash benchmarks/gpu_check.sh all|bench|step|series|warm|recipe|NN[,NN]}
OUT=${OUT:-build/gpu}
mkdir -p "$OUT"

# The device machine has torch but neither Pyro nor Jupyter and no network: install the carried wheels.
if ! python3 -c "import pyro, nbclient, ipykernel" 2>/dev/null; then
    if ls .whl/*.whl >/dev/null 2>&1; then
        python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --target /tmp/site .whl/*.whl
    else
        echo "no .whl/ here: run 'bash ../shared/tools/gpu-wheels.sh' first and carry .whl" >&2
    fi
fi
export PYTHONPATH=/tmp/site:$PWD${PYTHONPATH:+:$PYTHONPATH} PATH=/tmp/site/bin:$PATH PYTHONUNBUFFERED=1
CACHE=${GPU_CHECK_CACHE:-/tmp/gpu_check_cache}
mkdir -p "$CACHE"
export COURSE_CACHE_DIR=$CACHE  # this script's cache, not the project's data/cache
t0=$(date +%s)
failed=0

log="$OUT/$stage.log"
{
    date -u +"%Y-%m-%d %H:%M UTC"
    nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader 2>/dev/null || echo "no nvidia-smi"
    python3 -c "import torch; print('torch', torch.__version__, 'cuda', torch.cuda.is_available())"
} > "$log" 2>&1

run() {  # a command, its output, its exit status and its wall time, into the stage's log
    echo "\$ $*" >> "$log"
    local start=$(date +%s.%N) rc
    "$@" >> "$log" 2>&1; rc=$?
    [ "$rc" -eq 0 ] || failed=1
    echo "exit $rc, wall $(python3 -c "print(f'{$(date +%s.%N) - $start:.1f}')") s" >> "$log"
}

left() { echo $(( ${DEADLINE_S:-560} - ($(date +%s) - t0) )); }  # seconds left of this call's budget
pack() {  # the executed notebooks of a stage, outputs included, into $OUT
    [ -d "build/$1" ] && tar -czf "$OUT/$1-nb.tar.gz" --exclude='*.html' -C build "$1"
}
bench() {  # throughput and its Pyro part; notebook 04's own table at batches 256 and 1024 comes with the series
    run python3 benchmarks/bench.py --json "$OUT/bench.json"
}
pyro_table() {  # notebook 04's step-time table alone, for a call that does not run the series
    run python3 benchmarks/pyro_steps.py --batch-sizes 256 1024
}
series() {
    rm -rf "${CACHE:?}"/* # a cold first run in this script's own cache; the generated data sets are rebuilt too
    run python3 -m course_utils.execute --out build/series --cell-timeout 240
    pack series
}
score="--k 5000 --n-eval 10000 --max-decode 50000"  # the 84-nat target's scoring: k = 5000, all test digits
step() {  # notebook 07's training step: which lever the 30-s target needs (torch.compile: stage 'step' only)
    run python3 -m pytest -q -p no:cacheprovider tests/test_graph_step.py  # the recorded step trains as the plain one
    run python3 benchmarks/step_02.py --profile --json "$OUT/step.json"
}
recipe_headline() {  # notebook 07's recipe, 30 s on the clock, scored as the target is, then again in full float32
    run python3 benchmarks/recipe_02.py --budget-s 30 --epochs 100 $score
}
unit() {  # the unit tests on CUDA (five of them run only there); the browser test needs Chromium
    run python3 -m pytest -q -p no:cacheprovider tests --ignore=tests/test_browser.py
}
warm() {
    run python3 -m course_utils.execute --out build/warm --cell-timeout 240
    pack warm
}

case "$stage" in
    all)  # the short, decisive step measurement first, then the series: its length is the unknown, and it
          # includes notebook 07's 30-s training and k = 5000 scoring (the 84-nat target) and 04's Pyro table;
          # the rest only while time is left (what is skipped is a stage of its own for the next call)
        step
        series
        if [ "$(left)" -gt 150 ]; then bench; else echo "skipped bench: $(left) s left" >> "$log"; fi
        if [ "$(left)" -gt 120 ]; then warm; else echo "skipped warm: $(left) s left" >> "$log"; fi
        if [ "$(left)" -gt 100 ]; then recipe_headline; else echo "skipped recipe: $(left) s left" >> "$log"; fi
        if [ "$(left)" -gt 60 ]; then unit; else echo "skipped unit tests: $(left) s left" >> "$log"; fi
        ;;
    bench) bench; pyro_table ;;
    step)
        step
        run python3 benchmarks/step_02.py --variants notebook,compile --steps 100 --json "$OUT/step-compile.json"
        ;;
    series) series ;;
    warm) warm ;;
    recipe)
        recipe_headline
        run python3 benchmarks/recipe_02.py --budget-s 30 --epochs 100 $score --no-graph
        run python3 benchmarks/recipe_02.py --budget-s 30 --epochs 100 $score --batch 1024 --lr 4e-3
        ;;
    *)
        run python3 -m course_utils.execute --only "$stage" --out "build/$stage" --cell-timeout 240
        pack "$stage"
        ;;
esac
echo "call total $(( $(date +%s) - t0 )) s, $([ "$failed" -eq 0 ] && echo "every command passed" || echo "a command FAILED")" >> "$log"
cat "$log"
exit "$failed"
