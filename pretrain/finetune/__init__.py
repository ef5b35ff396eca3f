"""Fine-tuning a pretrained backbone with labels (and SimCLRv2's semi-supervised steps): the run, its CLI, labels."""
