"""Reading run directories: compare, report, plots (history when present)."""
