"""The training / evaluation / export runtime: the loop, the modes, checkpoints and logs."""
