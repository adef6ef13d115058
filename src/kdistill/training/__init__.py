"""Training: the pieces of a distillation run. Runtime (device, precision, Accelerator,
trackers), samplers, the step and epoch loop, the loss, checkpoints, and run folders."""
