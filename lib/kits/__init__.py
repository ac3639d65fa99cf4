"""Kits: data sets, math data and evaluation, rewards, pass@k and statistics, Bayesian optimisation, PEFT adapters,
executors, shared plots, a weight-steering run folder and the variants of a trained weight delta. Each is importable
on its own; none imports the runner or an experiment."""
