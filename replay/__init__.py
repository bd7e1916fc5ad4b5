"""Replay server: prioritized experience storage and sampling for distributed DQN."""
