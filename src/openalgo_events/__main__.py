"""``python -m openalgo_events``: the same command line as ``openalgo-events``."""

from .cli import main

main(prog_name="openalgo-events")
