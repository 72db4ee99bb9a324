"""The inbound side: commands and notifications from the ESB topic to handlers.

>>> from openalgo_events.inbound import EsbConsumer, handler
>>> @handler("margin_call")
... def on_margin_call(envelope, context):
...     context.notify("margin_call", envelope.user_id, envelope.data)
>>> EsbConsumer(settings, socketio=socketio).start()  # doctest: +SKIP
"""

from __future__ import annotations

from .consumer import EsbConsumer, run_until_signalled
from .dedupe import HandledStore
from .handlers import DeadLetterError, Handler, HandlerContext, handler

__all__ = [
    "DeadLetterError",
    "EsbConsumer",
    "HandledStore",
    "Handler",
    "HandlerContext",
    "handler",
    "run_until_signalled",
]
