"""absl entry points: train, benchmark, reproductions."""
