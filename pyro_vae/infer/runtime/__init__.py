"""Where code runs: devices, data placement and threads; torch.distributed process groups."""
