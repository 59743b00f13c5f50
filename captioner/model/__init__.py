"""Model: configuration, network, checkpoints, named models (no serving, no training)."""
