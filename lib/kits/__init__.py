"""Kits: data sets, math data and evaluation, rewards, pass@k and statistics, Bayesian optimisation, PEFT adapters,
executors and shared plots. Each is importable on its own; none imports the runner or an experiment."""
