"""Layer 0: small utilities every layer may use (devices, checkpoints, memory, text, trust)."""
