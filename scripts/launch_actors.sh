#!/usr/bin/env bash
# Start actors on this machine for a learner running elsewhere (or here), and keep them until stopped.
#
#   scripts/launch_actors.sh --learner HOST:PORT [--num-actors N] [--first-index I] [--log-dir DIR]
#                            [--curve-secret-key PATH --curve-server-key PATH] [--relay]
#
# Each actor gets its config from the learner. Without --first-index the learner assigns each actor a
# free global index (and so its Ape-X epsilon); with it, this machine takes the block I..I+N-1 (keep
# blocks apart across machines). Servers off loopback require CurveZMQ: pass this machine's secret
# key file and the servers' public key file (see docs/security.md). --relay also starts one weight relay
# (python -m actor.relay): the learner then sends each weights version once to this host, and the actors
# read it from shared memory (they use the learner directly while the relay is down). Its socket lies in
# $DISTDQN_RUN_KEYS, or else in LOG_DIR/relay (mode 0700). The relay is restarted like the actors.
set -uo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"

usage() { sed -n '2,13p' "$0" | sed 's/^# \{0,1\}//'; }
die() { echo "error: $*" >&2; exit 2; }

learner=""
num_actors=1
first_index=""
run_dir="runs/actors-$(date +%Y%m%d-%H%M%S)"
curve=()
relay=0
while [ $# -gt 0 ]; do
  case "$1" in
    --learner) [ $# -ge 2 ] || die "--learner needs HOST:PORT"; learner="$2"; shift 2 ;;
    --num-actors) [ $# -ge 2 ] || die "--num-actors needs a value"; num_actors="$2"; shift 2 ;;
    --first-index) [ $# -ge 2 ] || die "--first-index needs a value"; first_index="$2"; shift 2 ;;
    --log-dir) [ $# -ge 2 ] || die "--log-dir needs a value"; run_dir="$2"; shift 2 ;;
    --curve-secret-key|--curve-server-key) [ $# -ge 2 ] || die "$1 needs a path"; curve+=("$1" "$2"); shift 2 ;;
    --relay) relay=1; shift ;;
    -h|--help) usage; exit 0 ;;
    *) die "unknown argument $1 (see $0 --help)" ;;
  esac
done
[ -n "$learner" ] || die "--learner HOST:PORT is required"
[[ "$num_actors" =~ ^[0-9]+$ ]] && [ "$num_actors" -ge 1 ] || die "--num-actors must be a positive integer"
[ -z "$first_index" ] || [[ "$first_index" =~ ^[0-9]+$ ]] || die "--first-index must be a non-negative integer"

"$ROOT/scripts/setup_env.sh" || die "could not set up the Python environment"
PY="${DISTDQN_VENV:-$ROOT/.venv}/bin/python"
export PYTHONUNBUFFERED=1
mkdir -p "$run_dir/logs" || die "cannot create $run_dir"
. "$ROOT/scripts/lib/processes.sh"

relay_flags=()
if [ $relay -eq 1 ]; then
  relay_dir="${DISTDQN_RUN_KEYS:-}"
  if [ -z "$relay_dir" ]; then
    relay_dir="$run_dir/relay"
    mkdir -p -m 700 "$relay_dir" && chmod 700 "$relay_dir" || die "cannot create $relay_dir"
  fi
  relay_dir="$(cd "$relay_dir" && pwd)"
  # Never a finished job: the relay exits 0 only after the learner's stop, like the actors.
  start_supervised "relay" "$PY" -m actor.relay --learner "$learner" --socket-dir "$relay_dir" "${curve[@]}"
  note "started the weight relay (socket $relay_dir/relay.sock; log $run_dir/logs/relay.log)"
  relay_flags=(--relay "$relay_dir/relay.sock")
fi
for ((k = 0; k < num_actors; k++)); do
  if [ -z "$first_index" ]; then   # -1: the learner assigns an index
    start_supervised "actor-$k" "$PY" -m actor --actor-index -1 --learner "$learner" "${curve[@]}" "${relay_flags[@]}"
  else
    i=$((first_index + k))
    start_supervised "actor-$i" "$PY" -m actor --actor-index "$i" --learner "$learner" "${curve[@]}" "${relay_flags[@]}"
  fi
done
if [ -z "$first_index" ]; then blocks="indices assigned by the learner"; else
  blocks="indices $first_index..$((first_index + num_actors - 1))"; fi
echo "started $num_actors actor(s) for $learner ($blocks); logs in $run_dir/logs"
# Restart actors that die; finish when every actor has exited normally (the run's stop) or been given up.
while :; do
  supervise
  alive=0
  for role in "${supervised[@]}"; do [ -n "${pid_of[$role]}" ] && alive=1; done
  [ $alive -eq 0 ] && break
  sleep 0.5
done
stopping=1
echo "all actors have exited; logs in $run_dir/logs"
