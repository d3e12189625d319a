"""Layer 4: reading run directories (compare, report, plots, history)."""
