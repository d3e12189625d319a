"""``python -m diffbench``: the diffbench command line."""

from diffbench.cli import main

main()
