"""Small helpers every layer may use: devices, checkpoints, memory, text, trust, version."""
