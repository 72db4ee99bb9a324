"""Operators' tools behind the ``openalgo-events`` command: one module per command family.

``cli.py`` only parses options and prints; the work is here, importable and testable:
``broker`` (reaching the cluster), ``topics`` (create and describe), ``tail`` (follow a topic),
``trail`` (the spool's delivered events, read-only: status and replay), ``when`` (time options).
"""
