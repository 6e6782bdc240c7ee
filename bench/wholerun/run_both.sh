#!/usr/bin/env bash
# The reduced HH study (hh-reduced.yaml) through the old pipeline (b3aa6c0, before the throughput
# work) and this checkout's, at the same time, one thread each; prints each side's stage times.
#   bash bench/wholerun/run_both.sh [WORK_DIR]      (default /tmp/bdpo-wholerun; ../shared beside the repo)
set -euo pipefail
repo=$(cd "$(dirname "$0")/../.." && pwd)
work=${1:-/tmp/bdpo-wholerun}
python=${PYTHON:-$repo/.venv/bin/python}
mkdir -p "$work"
[ -d "$work/old" ] || git -C "$repo" worktree add --detach "$work/old" b3aa6c0
# The one change to the old code: its scorer training defaulted to bf16 autocast, emulated (very slow)
# on CPUs without AVX512-BF16/AMX; the new code uses bf16 only where it is native (commit 5579818).
sed -i 's/bf16: bool = True, backbone/bf16: bool = False, backbone/' "$work/old/trainers/scorer_training.py"
for side in old new; do
  sed "s#^run_root: .*#run_root: $work/$side-runs#" "$repo/bench/wholerun/hh-reduced.yaml" > "$work/$side.yaml"
done
run() {  # side, code folder
  (cd "$2" && /usr/bin/time -f "$1 wall %e s" env PYTHONPATH="$2" OMP_NUM_THREADS=1 "$python" -m harness.cli run \
     "$work/$1.yaml" --no-progress > "$work/$1.log" 2>&1)
}
run old "$work/old" & run new "$repo" & wait
for side in old new; do echo "== $side"; grep -E "^done|wall" "$work/$side.log"; done
