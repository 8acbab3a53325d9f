"""The model, its losses and returns, rollouts, envs and evaluation: what every update rule and schedule is made of."""
