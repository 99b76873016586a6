"""Model architectures the engine runs, written against the paged-attention interface."""
