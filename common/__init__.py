"""Pieces shared by every distdqn process: config, wire codec, sockets, networks, envs, logs."""
