"""The shared training machinery: mesh, state, the one train step, loop, checkpoints, metrics."""
