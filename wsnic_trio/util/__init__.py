"""Small helpers every layer may use: fair checkpoints, safe paths, logging set-up."""
