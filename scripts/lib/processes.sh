# Shared by the launchers: start background processes, and stop every one of them on exit or signal.
# Expects $run_dir (logs go to $run_dir/logs/ROLE.log). Source it; do not run it.

pids=()
stopping=0

start() {  # start ROLE COMMAND...: run in the background, stderr to the role's log
  local role="$1"; shift
  "$@" 2>"$run_dir/logs/$role.log" &
  pids+=("$!")
}

stop_all() {
  # TERM everything, give it a few seconds to write checkpoints and logs, then KILL what is left.
  local deadline=$((SECONDS + 8))
  for pid in "${pids[@]}"; do kill -TERM "$pid" 2>/dev/null; done
  for pid in "${pids[@]}"; do
    while kill -0 "$pid" 2>/dev/null && [ $SECONDS -lt $deadline ]; do sleep 0.1; done
  done
  for pid in "${pids[@]}"; do
    if kill -0 "$pid" 2>/dev/null; then
      echo "process $pid did not stop in time; killing it" >&2
      kill -KILL "$pid" 2>/dev/null
    fi
  done
  wait 2>/dev/null
}

on_signal() {
  [ $stopping -eq 1 ] && return
  stopping=1
  echo "stopping ..." >&2
  stop_all
  echo "stopped; logs in $run_dir/logs" >&2
  exit "$1"
}
trap 'on_signal 130' INT
trap 'on_signal 143' TERM
