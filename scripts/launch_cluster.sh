#!/usr/bin/env bash
# Run a whole distdqn cluster on this machine: a replay server, a learner, an evaluator and N actors.
#
#   scripts/launch_cluster.sh [--num-actors N] [--servers-only] [--preset NAME|FILE] [--run-dir DIR]
#                             [--seed S] [--port-base P] [--no-eval] [--monitor] [--actor-hosts FILE]
#                             [SECTION.KEY=VALUE ...]
#
# N (default: the preset's actor.num_actors) is the whole actor population; N actors start here unless
# --servers-only, which starts replay, learner and evaluator only (actors join from elsewhere, e.g.
# scripts/launch_actors.sh). Ports P..P+3: learner control, weights, replay ingest, replay sampling.
# The learner's progress lines stream here (with --monitor, to RUN_DIR/logs/progress.log, and the live
# dashboard distdqn-monitor shows instead); every process's log goes to RUN_DIR/logs/ROLE.log.
# Replay, learner, evaluator and actors that die are restarted with backoff (replay from its snapshot,
# the learner from its checkpoint), up to 5 times each; RUN_DIR/logs/launcher.log says what happened.
# A finished run's learning curves are drawn to RUN_DIR/curves.png.
# Without net.curve_* keys, RUN_DIR/keys holds per-run CURVE keys (docs/security.md), so other local
# users cannot reach the run's ports.
# Exit status: 0 when the preset's stop condition was met (solved), 1 when the run ended otherwise,
# 2 for bad arguments, 130/143 when interrupted. Ctrl-C or SIGTERM stops every process it started.
set -uo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"

usage() { sed -n '2,19p' "$0" | sed 's/^# \{0,1\}//'; }
die() { echo "error: $*" >&2; exit 2; }

num_actors=""
preset=cartpole
run_dir=""
seed=""
port_base=""
evaluator=1
local_actors=1
monitor=0
actor_hosts=""
overrides=()
while [ $# -gt 0 ]; do
  case "$1" in
    --num-actors) [ $# -ge 2 ] || die "--num-actors needs a value"; num_actors="$2"; shift 2 ;;
    --preset) [ $# -ge 2 ] || die "--preset needs a value"; preset="$2"; shift 2 ;;
    --run-dir) [ $# -ge 2 ] || die "--run-dir needs a value"; run_dir="$2"; shift 2 ;;
    --seed) [ $# -ge 2 ] || die "--seed needs a value"; seed="$2"; shift 2 ;;
    --port-base) [ $# -ge 2 ] || die "--port-base needs a value"; port_base="$2"; shift 2 ;;
    --no-eval) evaluator=0; shift ;;
    --servers-only) local_actors=0; shift ;;
    --monitor) monitor=1; shift ;;
    --actor-hosts) [ $# -ge 2 ] || die "--actor-hosts needs a file"; actor_hosts="$(realpath -m -- "$2")"; shift 2 ;;
    -h|--help) usage; exit 0 ;;
    --*) die "unknown flag $1 (see $0 --help)" ;;
    *=*) overrides+=("$1"); shift ;;
    *) die "unexpected argument '$1': overrides look like SECTION.KEY=VALUE (see $0 --help)" ;;
  esac
done
[ -z "$num_actors" ] || { [[ "$num_actors" =~ ^[0-9]+$ ]] && [ "$num_actors" -ge 1 ]; } \
  || die "--num-actors must be a positive integer (the whole population; --servers-only starts none here), got '$num_actors'"
[ -z "$seed" ] || [[ "$seed" =~ ^[0-9]+$ ]] || die "--seed must be a non-negative integer, got '$seed'"
[ -z "$port_base" ] || [[ "$port_base" =~ ^[0-9]+$ ]] || die "--port-base must be a port number, got '$port_base'"

"$ROOT/scripts/setup_env.sh" || die "could not set up the Python environment"
PY="${DISTDQN_VENV:-$ROOT/.venv}/bin/python"
export PYTHONUNBUFFERED=1
cd "$ROOT"

if [ -z "$run_dir" ]; then
  name="$(basename "$preset" .toml)"
  run_dir="runs/${name}-s${seed:-0}-$(date +%Y%m%d-%H%M%S)"
fi

common=(--preset "$preset")
[ -n "$seed" ] && common+=(--seed "$seed")
[ -n "$port_base" ] && common+=(--port-base "$port_base")
[ -n "$num_actors" ] && overrides+=("actor.num_actors=$num_actors")

# A bad hosts file, then a bad config value, is one line before anything starts.
if [ -n "$actor_hosts" ]; then
  "$PY" "$ROOT/scripts/lib/ssh_actors.py" --hosts "$actor_hosts" --count >/dev/null || exit 2
fi
resolved="$("$PY" -m common.check_config --print net.learner_port --print actor.num_actors \
  --print net.curve_secret_key --print net.curve_server_key --print replay.shards "${common[@]}" "${overrides[@]}")" \
  || exit 2
{ read -r learner_port; read -r num_actors; read -r curve_secret; read -r curve_server; read -r shards; } <<<"$resolved"
# With CurveZMQ on, local actors and the evaluator use the servers' own key pair (always authorized).
actor_args=(--learner "127.0.0.1:$learner_port")
[ -n "$curve_secret" ] && actor_args+=(--curve-secret-key "$curve_secret" --curve-server-key "$curve_server")

mkdir -p "$run_dir/logs" || die "cannot create run directory $run_dir"
# Without the user's own CURVE keys, a per-run set (RUN_DIR/keys, mode 0700) keeps other users of this
# machine out of the run's loopback ports: every process started here uses its role's pair from it.
if [ -z "$curve_secret" ]; then
  "$PY" -m common.keys run "$run_dir/keys" >/dev/null || exit 2
  export DISTDQN_RUN_KEYS="$(realpath -- "$run_dir/keys")"
fi
. "$ROOT/scripts/lib/processes.sh"
[ -n "$actor_hosts" ] && . "$ROOT/scripts/lib/ssh_actors.sh"  # actor blocks on other hosts, over ssh

echo "run directory: $run_dir"
learner_done() {  # the learner's work is done when it wrote this run's summary (solved or not)
  [ "$2" -eq 0 ] && return 0
  local summary="$run_dir/summary.json"
  [ -f "$summary" ] && [ "$(stat -c %Y "$summary")" -ge "${launched_at[learner]}" ]
}
# With --monitor, what would print here goes to a file, and the dashboard gets the terminal (fds 3, 4).
[ $monitor -eq 1 ] && exec 3>&1 4<&0 >>"$run_dir/logs/progress.log"
# One replay server per shard (replay.shards): replay, replay-1, ..., each restarted from its own snapshot.
replays=()
for ((k = 0; k < shards; k++)); do
  name=replay; [ "$k" -gt 0 ] && name="replay-$k"
  replays+=("$name")
  start_supervised "$name" "$PY" -m replay --shard "$k" "${common[@]}" --run-dir "$run_dir" "${overrides[@]}"
  restart_with "$name" --restore
done
start_supervised learner "$PY" -m learner "${common[@]}" --run-dir "$run_dir" "${overrides[@]}"
restart_with learner --resume
finished_of[learner]=learner_done
if [ $evaluator -eq 1 ]; then
  start_supervised evaluator "$PY" -m actor --evaluate "${actor_args[@]}"
fi
started=$((local_actors ? num_actors : 0))
for ((i = 0; i < started; i++)); do
  start_supervised "actor-$i" "$PY" -m actor --actor-index "$i" "${actor_args[@]}"
done
replay_started=replay; [ "$shards" -gt 1 ] && replay_started="$shards replay shards"
if [ $local_actors -eq 1 ]; then
  echo "started $replay_started, learner, $([ $evaluator -eq 1 ] && echo "evaluator, ")$num_actors actor(s); Ctrl-C stops them all"
else
  echo "started $replay_started, learner$([ $evaluator -eq 1 ] && echo ", evaluator") for $num_actors actor(s) to join at" \
    "127.0.0.1:$learner_port (e.g. scripts/launch_actors.sh); Ctrl-C stops them all"
  # Loopback with per-run keys: actors on this host join with the run's actor keys, found through this.
  [ -n "${DISTDQN_RUN_KEYS:-}" ] && echo "actors on this host: DISTDQN_RUN_KEYS=$DISTDQN_RUN_KEYS scripts/launch_actors.sh --learner 127.0.0.1:$learner_port --num-actors K"
fi
if [ $monitor -eq 1 ]; then
  "$PY" -m tools.monitor "$run_dir" <&4 >&3 2>>"$run_dir/logs/monitor.log" &
  pids+=("$!")
fi

# Supervise everything while the learner runs; the end of its work (its summary) ends the run.
while [ -n "${pid_of[learner]}" ]; do
  supervise
  # A shard that gave up leaves the others serving (the learner samples what is left); none ends the run.
  live=0
  for name in "${replays[@]}"; do [ -n "${pid_of[$name]}" ] && live=$((live + 1)); done
  if [ "$live" -eq 0 ] && [ -n "${pid_of[learner]}" ]; then
    note "error: no replay server any more; stopping the run"
    break
  fi
  sleep 0.5
done
status="${exit_of[learner]:-1}"
stopping=1
stop_all
[ $monitor -eq 1 ] && exec >&3 3>&- 4<&-
if learner_done learner "$status" 2>/dev/null; then
  "$PY" -m tools.plot "$run_dir" -o "$run_dir/curves.png" >/dev/null 2>>"$run_dir/logs/plot.log" \
    || echo "warning: no curves.png (see $run_dir/logs/plot.log)" >&2
  "$PY" -m common.summary "$run_dir"
else
  echo "the learner exited with status $status before writing a summary; see $run_dir/logs/learner.log" >&2
  tail -n 5 "$run_dir/logs/learner.log" >&2
  [ "$status" -eq 0 ] && status=1
fi
exit "$status"
