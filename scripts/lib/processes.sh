# Shared by the launchers: start background processes, restart supervised ones that die, and stop
# every one of them on exit or signal. Expects $run_dir (logs go to $run_dir/logs/ROLE.log).
# Source it; do not run it.

MAX_RESTARTS="${DISTDQN_MAX_RESTARTS:-5}"   # per supervised process, then it is given up on, loudly

pids=()          # every PID ever started, so stop_all reaches restarted processes too
stopping=0
supervised=()    # roles restarted when they die with a non-zero status
declare -A pid_of cmd_of restarts_of restart_at

start() {  # start ROLE COMMAND...: run in the background, stderr appended to the role's log
  local role="$1"; shift
  cmd_of[$role]="$(printf '%q ' "$@")"
  restarts_of[$role]=0
  _launch "$role"
}

start_supervised() {  # like start, and restarted with backoff (1, 2, 4, ... s) when it dies
  start "$@"
  supervised+=("$1")
}

_launch() {
  # Rebuild the argument array from its quoted form; the command itself runs as a simple command, so
  # $! is the process itself and not a subshell that a signal would stop without reaching it.
  local -a cmd
  eval "cmd=(${cmd_of[$1]})"
  "${cmd[@]}" 2>>"$run_dir/logs/$1.log" &
  pid_of[$1]=$!
  pids+=("$!")
}

supervise() {  # one pass: notice dead supervised processes, restart those whose backoff has passed
  local role pid code n
  for role in "${supervised[@]}"; do
    pid="${pid_of[$role]}"
    [ -z "$pid" ] && continue
    if [ -n "${restart_at[$role]:-}" ]; then
      if [ $SECONDS -ge "${restart_at[$role]}" ]; then
        unset "restart_at[$role]"
        echo "restarting $role (restart ${restarts_of[$role]} of $MAX_RESTARTS)" >&2
        _launch "$role"
      fi
      continue
    fi
    kill -0 "$pid" 2>/dev/null && continue
    wait "$pid"; code=$?
    if [ $code -eq 0 ]; then pid_of[$role]=""; continue; fi   # finished normally: the run is over
    n="${restarts_of[$role]}"
    if [ "$n" -ge "$MAX_RESTARTS" ]; then
      echo "error: $role died (status $code) after $n restarts; giving up on it (see $run_dir/logs/$role.log)" >&2
      pid_of[$role]=""
      continue
    fi
    restarts_of[$role]=$((n + 1))
    restart_at[$role]=$((SECONDS + (1 << n)))
    echo "$role died (status $code); restarting in $((1 << n)) s" >&2
  done
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
