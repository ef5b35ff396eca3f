"""The training loop and what it owns: the config, options, the trainer, checkpoints, run logs, optimisers,
monitors, speed defaults, evaluation on frozen features."""
