#!/usr/bin/env bash
# `make test`: lint and every test tier, in two lanes side by side (docs/testing.md says why and what each costs).
#
#   lane cpu:   ruff, ruff format --check, mypy; then (once the other lane's testbed is built: SeaweedFS, helm,
#               kubectl) the fast tier; then the trainer tier
#               (what keeps the CPUs busy: tokenizing, two-process DeepSpeed runs)
#   lane wait:  the testbed (Go builds, cached), the images (podman's layer cache); then the cluster, e2e and
#               images tiers in one pytest session (one control plane, one S3 server, one operator); then the
#               trainer-tier files in $late (what mostly waits: on controllers, Kueue, TTLs, image builds and pods;
#               the trainer files it takes over make the lanes end closer together)
#
# Each lane's lines are printed as they come, prefixed with the lane's name; each step's wall time, pytest's slowest
# tests and the time by tier are printed at the end. Every tier runs: the exit code is the first failure's.
set -uo pipefail
root="$(cd "$(dirname "$0")/.." && pwd)"
cd "$root"
PY="${PY:-.venv/bin/python}"
VENV_BIN="$(dirname "$PY")"
logs="$(mktemp -d "${TMPDIR:-/tmp}/kubetune-test-XXXXXX")"
pytest_args=(-p no:cacheprovider --durations=30)
# trainer-tier files the wait lane runs once its cluster session is done (it spends most of that session waiting on
# controllers, the cpu lane all of its time on the CPUs): the two lanes end closer together
late=(tests/test_preemption.py tests/test_quickstart.py)

step() {  # name, command...: run it, note its wall time and status
  local name="$1"; shift
  local started=$SECONDS
  "$@"
  local code=$?
  echo "$name $((SECONDS - started)) $code" >> "$logs/steps"
  return $code
}

pytest_tier() {  # name, marker expression, more arguments (paths, --ignore=...)
  local name="$1" expr="$2"; shift 2
  step "$name" "$PY" -m pytest "${pytest_args[@]}" --basetemp="$logs/tmp-$name" -m "$expr" "$@"
  local code=$?
  if [ $code -eq 5 ]; then echo "pytest collected no $name tests: that is a failure here" >&2; return 1; fi
  return $code
}

lane_cpu() {
  local failed=0
  step lint bash -c "$VENV_BIN/ruff check . && $VENV_BIN/ruff format --check . && $VENV_BIN/mypy" || failed=1
  # the fast and trainer tiers use what `make testbed` makes (SeaweedFS for S3, helm and kubectl for the chart):
  # the other lane builds it meanwhile and says when it is done, however it ended
  while [ ! -f "$logs/testbed.done" ]; do sleep 1; done
  [ "$(cat "$logs/testbed.done")" = 0 ] || { echo "make testbed failed: the tiers cannot run" >&2; return 1; }
  pytest_tier fast "not trainer and not cluster and not e2e and not images" || failed=1
  pytest_tier trainer "trainer and not cluster and not e2e and not images" "${late[@]/#/--ignore=}" || failed=1
  return $failed
}

lane_wait() {
  step testbed make -s testbed
  local code=$?
  echo $code > "$logs/testbed.done"
  [ $code = 0 ] || return 1
  step images make -s images || return 1
  local failed=0
  pytest_tier cluster+e2e+images "cluster or e2e or images" || failed=1
  pytest_tier trainer-late "trainer and not cluster and not e2e and not images" "${late[@]}" || failed=1
  return $failed
}

prefix() { while IFS= read -r line; do printf '[%s] %s\n' "$1" "$line"; done; }

started=$SECONDS
( lane_cpu 2>&1; echo $? > "$logs/cpu.code" ) | prefix cpu &
cpu=$!
( lane_wait 2>&1; echo $? > "$logs/wait.code" ) | prefix wait &
wait_lane=$!
wait "$cpu" "$wait_lane"

echo
echo "== make test: wall time by step (the lanes run side by side) =="
while read -r name seconds code; do
  printf '  %-20s %6d s  %s\n' "$name" "$seconds" "$([ "$code" = 0 ] && echo ok || echo "FAILED ($code)")"
done < "$logs/steps"
printf '  %-20s %6d s\n' "total" "$((SECONDS - started))"
code=0
for lane in cpu wait; do
  lane_code="$(cat "$logs/$lane.code" 2>/dev/null || echo 1)"
  [ "$lane_code" = 0 ] || { echo "lane $lane failed ($lane_code)"; code=1; }
done
exit $code
