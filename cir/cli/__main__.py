"""``python -m cir.cli``."""

from cir.cli import main

main()
