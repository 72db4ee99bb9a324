"""``openalgo-events consume``: the inbound consumer as its own process.

There is no Socket.IO server here, so acknowledgements and rejections are logged only (relaying
them to browsers from a separate process would need a Socket.IO message queue shared with the
app; that is not provided). Replay requests need the publishing process's spool, which one
process holds at a time: they are served only when this process can open it (ORDER_EVENT_MODE
KAFKA and the app not running on the same spool); otherwise they are dead-lettered with reason
``no_trail``. Run the consumer inside the app (KAFKA_CONSUMER_ENABLED) to serve both.
"""

from __future__ import annotations

import logging

from ..config import Mode, Settings
from ..errors import SpoolError
from ..publisher import EventPublisher, build_publisher
from .consumer import EsbConsumer, run_until_signalled

log = logging.getLogger("openalgo_events.inbound")


def replay_publisher(settings: Settings) -> EventPublisher | None:
    """A Kafka publisher over the configured spool, when this process may open it."""
    if settings.mode is not Mode.KAFKA:
        log.info("ORDER_EVENT_MODE is %s: replay requests are dead-lettered (no_trail)",
                 settings.mode.value)
        return None
    try:
        return build_publisher(settings)
    except SpoolError as exc:
        log.warning("replay requests are dead-lettered (no_trail): %s", exc)
        return None


def consume(settings: Settings) -> EsbConsumer:
    """Run the consumer in the foreground until SIGINT or SIGTERM; returns it, stopped."""
    publisher = replay_publisher(settings)
    consumer = EsbConsumer(settings, publisher=publisher)
    try:
        run_until_signalled(consumer)
    finally:
        if publisher is not None:
            publisher.close(settings.close_timeout_seconds)
    return consumer
