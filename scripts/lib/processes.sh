# Shared by the launchers: start background processes, restart supervised ones that die, and stop
# every one of them on exit or signal. Expects $run_dir (logs go to $run_dir/logs/ROLE.log; what the
# supervisor does is said on stderr and kept in $run_dir/logs/launcher.log).
# Source it; do not run it.

MAX_RESTARTS="${DISTDQN_MAX_RESTARTS:-5}"   # per supervised process, then it is given up on, loudly

pids=()          # every PID ever started, so stop_all reaches restarted processes too
stopping=0
supervised=()    # roles restarted when they die before their work is done
# cmd_of: how to start; restart_cmd_of: how to restart (e.g. with --resume); finished_of: a function
# `F ROLE STATUS` that says whether an exit ended the role's work (default: status 0); exit_of: last status.
declare -A pid_of cmd_of restart_cmd_of finished_of exit_of restarts_of restart_at launched_at

note() {  # note MESSAGE: on stderr and, with a time stamp, in the run's launcher log
  echo "$*" >&2
  echo "$(date '+%Y-%m-%d %H:%M:%S') $*" >>"$run_dir/logs/launcher.log"
}

start() {  # start ROLE COMMAND...: run in the background, stderr appended to the role's log
  local role="$1"; shift
  cmd_of[$role]="$(printf '%q ' "$@")"
  restarts_of[$role]=0
  _launch "$role" "${cmd_of[$role]}"
}

start_supervised() {  # like start, and restarted with backoff (1, 2, 4, ... s) when it dies
  start "$@"
  supervised+=("$1")
}

restart_with() {  # restart_with ROLE ARG...: restarts of ROLE add these arguments to its command
  local role="$1"; shift
  restart_cmd_of[$role]="${cmd_of[$role]}$(printf '%q ' "$@")"
}

_launch() {
  # Rebuild the argument array from its quoted form; the command itself runs as a simple command, so
  # $! is the process itself and not a subshell that a signal would stop without reaching it.
  local -a cmd
  eval "cmd=($2)"
  "${cmd[@]}" 2>>"$run_dir/logs/$1.log" &
  pid_of[$1]=$!
  pids+=("$!")
  launched_at[$1]=$(date +%s)
}

_finished() {  # _finished ROLE STATUS: did this exit end the role's work?
  local check="${finished_of[$1]:-}"
  if [ -n "$check" ]; then "$check" "$1" "$2"; else [ "$2" -eq 0 ]; fi
}

supervise() {  # one pass: notice dead supervised processes, restart those whose backoff has passed
  local role pid code n
  for role in "${supervised[@]}"; do
    pid="${pid_of[$role]}"
    [ -z "$pid" ] && continue
    if [ -n "${restart_at[$role]:-}" ]; then
      if [ $SECONDS -ge "${restart_at[$role]}" ]; then
        unset "restart_at[$role]"
        note "restarting $role (restart ${restarts_of[$role]} of $MAX_RESTARTS)"
        _launch "$role" "${restart_cmd_of[$role]:-${cmd_of[$role]}}"
      fi
      continue
    fi
    kill -0 "$pid" 2>/dev/null && continue
    wait "$pid"; code=$?
    exit_of[$role]=$code
    if _finished "$role" "$code"; then pid_of[$role]=""; continue; fi   # its work is done
    n="${restarts_of[$role]}"
    if [ "$n" -ge "$MAX_RESTARTS" ]; then
      note "error: $role died (status $code) after $n restarts; giving up on it (see $run_dir/logs/$role.log)"
      pid_of[$role]=""
      continue
    fi
    restarts_of[$role]=$((n + 1))
    restart_at[$role]=$((SECONDS + (1 << n)))
    note "$role died (status $code); restarting in $((1 << n)) s (see $run_dir/logs/$role.log)"
    echo "[launcher] $(date '+%Y-%m-%d %H:%M:%S') died with status $code; restarting in $((1 << n)) s" \
      >>"$run_dir/logs/$role.log"
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
