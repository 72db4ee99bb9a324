"""The relay process: everything of the Kafka path that does not run in the host app.

``openalgo-events relay`` (or ``python -m openalgo_events.relay``) runs it in the foreground;
the gunicorn hook starts and supervises one; a publisher starts one detached when none runs.
See ``process`` for what it does and ``spooldir`` for the format it reads.
"""

from .process import Relay

__all__ = ["Relay"]
