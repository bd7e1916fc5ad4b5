#!/usr/bin/env bash
# Run a whole distdqn cluster on this machine: a replay server, a learner, an evaluator and N actors.
#
#   scripts/launch_cluster.sh [--num-actors N] [--preset NAME|FILE] [--run-dir DIR] [--seed S]
#                             [--port-base P] [--no-eval] [--actor-hosts FILE] [SECTION.KEY=VALUE ...]
#
# N defaults to the preset's actor.num_actors. The learner's progress lines stream here; every
# process's log goes to RUN_DIR/logs/ROLE.log.
# Exit status: 0 when the preset's stop condition was met (solved), 1 when the run ended otherwise,
# 2 for bad arguments, 130/143 when interrupted. Ctrl-C or SIGTERM stops every process it started.
set -uo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"

usage() { sed -n '2,10p' "$0" | sed 's/^# \{0,1\}//'; }
die() { echo "error: $*" >&2; exit 2; }

num_actors=""
preset=cartpole
run_dir=""
seed=""
port_base=""
evaluator=1
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
    --actor-hosts) [ $# -ge 2 ] || die "--actor-hosts needs a file"; actor_hosts="$(realpath -m -- "$2")"; shift 2 ;;
    -h|--help) usage; exit 0 ;;
    --*) die "unknown flag $1 (see $0 --help)" ;;
    *=*) overrides+=("$1"); shift ;;
    *) die "unexpected argument '$1': overrides look like SECTION.KEY=VALUE (see $0 --help)" ;;
  esac
done
[ -z "$num_actors" ] || { [[ "$num_actors" =~ ^[0-9]+$ ]] && [ "$num_actors" -ge 1 ]; } \
  || die "--num-actors must be a positive integer, got '$num_actors'"
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

# Check the config once, here, so a bad value is one line before anything starts.
resolved="$("$PY" -m common.check_config --print net.learner_port --print actor.num_actors \
  --print net.curve_secret_key --print net.curve_server_key "${common[@]}" "${overrides[@]}")" || exit 2
{ read -r learner_port; read -r num_actors; read -r curve_secret; read -r curve_server; } <<<"$resolved"
# With CurveZMQ on, local actors and the evaluator use the servers' own key pair (always authorized).
actor_args=(--learner "127.0.0.1:$learner_port")
[ -n "$curve_secret" ] && actor_args+=(--curve-secret-key "$curve_secret" --curve-server-key "$curve_server")

mkdir -p "$run_dir/logs" || die "cannot create run directory $run_dir"
. "$ROOT/scripts/lib/processes.sh"
[ -n "$actor_hosts" ] && . "$ROOT/scripts/lib/ssh_actors.sh"  # actor blocks on other hosts, over ssh

echo "run directory: $run_dir"
start replay "$PY" -m replay "${common[@]}" --run-dir "$run_dir" "${overrides[@]}"
start learner "$PY" -m learner "${common[@]}" --run-dir "$run_dir" "${overrides[@]}"
learner_pid="${pid_of[learner]}"
if [ $evaluator -eq 1 ]; then
  start_supervised evaluator "$PY" -m actor --evaluate "${actor_args[@]}"
fi
for ((i = 0; i < num_actors; i++)); do
  start_supervised "actor-$i" "$PY" -m actor --actor-index "$i" "${actor_args[@]}"
done
echo "started replay, learner, $([ $evaluator -eq 1 ] && echo "evaluator, ")$num_actors actor(s); Ctrl-C stops them all"

# Supervise the actors while the learner runs; its exit ends the run.
while kill -0 "$learner_pid" 2>/dev/null; do
  supervise
  sleep 0.5
done
wait "$learner_pid"
status=$?
stopping=1
stop_all
if [ -f "$run_dir/summary.json" ]; then
  "$PY" -m common.summary "$run_dir"
else
  echo "the learner exited with status $status before writing a summary; see $run_dir/logs/learner.log" >&2
  tail -n 5 "$run_dir/logs/learner.log" >&2
  [ $status -eq 0 ] && status=1
fi
exit $status
