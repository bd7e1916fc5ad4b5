"""The learner process: trains the Q-network from replay and publishes its weights to the actors."""
