"""Where a run lives on disk: the results contract, checkpoints, node state, start-up marks, provenance, reuse rules."""
