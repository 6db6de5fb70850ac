#!/usr/bin/env bash
# Start a Ray head node on 127.0.0.1 (our own, stopped by PID at the end, never `ray stop`), then
# submit configs/quick.yaml as a Ray job, the way a run is launched on a real cluster:
#   ray job submit --address http://HEAD:8265 -- tutorloop run configs/quick.yaml
# Usage: scripts/ray_job_local.sh [RUN_DIR]   (default: runs/quick-job)
set -euo pipefail
cd "$(dirname "$0")/.."
REPO=$(pwd)
RUN_DIR=$(realpath -m "${1:-runs/quick-job}")
export PATH="$REPO/.venv/bin:$PATH"             # the cluster and its jobs use the project's venv
export RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER=0 RAY_USAGE_STATS_ENABLED=0
export RAY_AUTH_MODE=token                       # a head node enables token auth for job submission
DASHBOARD_PORT=${DASHBOARD_PORT:-8265}
# Logical CPUs: the student, trainer and teacher actors reserve 2.25 together (phases take turns).
TEMP_DIR=$(mktemp -d /tmp/tutorloop-ray-XXXX)

ray start --head --block --node-ip-address=127.0.0.1 --port=0 --num-cpus="${NUM_CPUS:-4}" \
    --include-dashboard=true --dashboard-host=127.0.0.1 --dashboard-port="$DASHBOARD_PORT" \
    --temp-dir="$TEMP_DIR" --disable-usage-stats >"$TEMP_DIR/head.log" 2>&1 &
HEAD_PID=$!
stop_head() {  # only the head node this script started; its exit status is not the script's
    kill "$HEAD_PID" 2>/dev/null || true
    wait "$HEAD_PID" 2>/dev/null || true
    rm -rf "$TEMP_DIR"
}
trap stop_head EXIT

for _ in $(seq 1 60); do
    if ray job list --address "http://127.0.0.1:$DASHBOARD_PORT" >/dev/null 2>&1; then break; fi
    sleep 2
done
ray job submit --address "http://127.0.0.1:$DASHBOARD_PORT" -- \
    tutorloop run "$REPO/configs/quick.yaml" --run-dir "$RUN_DIR" --overwrite
tutorloop sql "$RUN_DIR" "SELECT round, kind, test_accuracy FROM round_summary"
