"""Training: the SVI step (eager and compiled), the loop, its options, checkpoints."""
