# Sourced by launch_cluster.sh for --actor-hosts FILE, after scripts/lib/processes.sh and before the
# servers start: adds the hosts' actors to the population (actor.num_actors), so their epsilons take
# the global indices after the local actors', and starts scripts/lib/ssh_actors.py, which runs each
# host's block over ssh, logs it to RUN_DIR/logs/ssh-HOST.log, restarts it if its session dies and
# stops it with the run. Expects $PY, $ROOT, $run_dir, $actor_hosts, $num_actors, $local_actors, $learner_port,
# $curve_secret and the common/overrides arrays of the launcher. See docs/scaling.md.

_ssh_actors="$ROOT/scripts/lib/ssh_actors.py"
remote_actors="$("$PY" "$_ssh_actors" --hosts "$actor_hosts" --count)" || exit 2
_ssh_net="$("$PY" -m common.check_config --print net.public_host --print net.bind_host "${common[@]}" "${overrides[@]}")" \
  || exit 2
{ read -r _ssh_public; read -r _ssh_bind; } <<<"$_ssh_net"
case "$_ssh_bind" in
  127.*|::1|localhost) die "--actor-hosts: the servers listen on $_ssh_bind only; set net.bind_host to an address the hosts reach (with CurveZMQ, see docs/scaling.md)" ;;
esac
# The address the remote actors dial: DISTDQN_LEARNER_HOST, else net.public_host, else the bind address.
learner_host="${DISTDQN_LEARNER_HOST:-${_ssh_public:-$_ssh_bind}}"
case "$learner_host" in
  0.0.0.0|'*'|::) learner_host="$(hostname -f 2>/dev/null || hostname)" ;;
esac
# The hosts' blocks take the indices after the local actors' (none with --servers-only, where
# --num-actors still sets the least population).
_ssh_first=$((local_actors ? num_actors : 0))
_ssh_population=$((_ssh_first + remote_actors))
[ "$local_actors" -eq 0 ] && [ "$num_actors" -gt "$_ssh_population" ] && _ssh_population=$num_actors
overrides+=("actor.num_actors=$_ssh_population")
start ssh-actors "$PY" "$_ssh_actors" --hosts "$actor_hosts" --first-index "$_ssh_first" \
  --learner "$learner_host:$learner_port" --log-dir "$run_dir/logs" --run-name "$(basename "$run_dir")" --parent $$
echo "ssh: $remote_actors actor(s) on the hosts in $actor_hosts (indices $_ssh_first..$((_ssh_first + remote_actors - 1))), learner at $learner_host:$learner_port; logs in $run_dir/logs/ssh-*.log"
