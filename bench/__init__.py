"""Benchmarks of openalgo-events against the design's reference publisher and the raw clients.

Run ``bench/run`` (or ``python -m bench``); see bench/README.md for the method.
"""
