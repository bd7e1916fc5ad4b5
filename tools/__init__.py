"""The operator's commands: distdqn-monitor, distdqn-plot and distdqn-evaluate."""
