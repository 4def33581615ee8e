#!/usr/bin/env bash
# The CPU-scale efficacy queue, one single-threaded run at a time, in order: anomaly, cls, seg.
# Every command resumes (records already in the results file are skipped), so rerunning the
# queue after an interruption continues where it stopped.
#
#   setsid nohup bash benchmarks/efficacy/queue_cpu.sh RESULTS.jsonl > queue.log 2>&1 &
#
# PYTHON (default: python) runs it; the runner is the one beside this script.
set -u
here="$(cd "$(dirname "$0")" && pwd)"
results="${1:-$here/results/cpu.jsonl}"
python="${PYTHON:-python}"
run() {
    echo "=== $(date '+%F %T') $*"
    "$python" "$here/run.py" --scale cpu --seeds 3 --results "$results" "$@" || echo "=== FAILED ($?): $*"
}
run --task anomaly --arms cutpaste_normal,cutpaste_scar,cutpaste_3way,cropliq,cropliq_cutpaste_3way
run --task cls --arms baseline,cutmix,contextmix,contextmix_defect
run --task seg --arms baseline,dli_all,dli_balance,dli_all_source
run --task seg --arms guided_crop
echo "=== $(date '+%F %T') queue done"
