"""A consumer process for the outcome test: ``fails`` events always fail (so they are
dead-lettered), a ``crash`` event kills the process with SIGKILL the first time (after the
messages before it in its batch were settled, before the batch's offsets are committed) and is
handled the next time. Every handler call appends "<event_type> <event_id>" to OUT_FILE.

Usage: python inbound_outcome_worker.py BOOTSTRAP TOPIC GROUP STATE_PATH OUT_FILE MARKER_FILE
"""

from __future__ import annotations

import os
import signal
import sys

from openalgo_events import Settings
from openalgo_events.inbound import EsbConsumer, run_until_signalled


def main(bootstrap: str, topic: str, group: str, state: str, out: str, marker: str) -> None:
    settings = Settings.from_env({
        "KAFKA_BOOTSTRAP_SERVERS": bootstrap, "KAFKA_ESB_EVENTS_TOPIC": topic,
        "KAFKA_CONSUMER_GROUP": group, "KAFKA_CONSUMER_AUTO_OFFSET_RESET": "earliest",
        "KAFKA_CONSUMER_STATE_PATH": state, "KAFKA_CONSUMER_MAX_ATTEMPTS": "2",
        "KAFKA_CONSUMER_RETRY_BACKOFF_MS": "10",
    }, env_file=None)
    fd = os.open(out, os.O_WRONLY | os.O_APPEND | os.O_CREAT)

    def record(envelope):  # type: ignore[no-untyped-def]
        os.write(fd, f"{envelope.event_type} {envelope.event_id}\n".encode())

    def fails(envelope, context):  # type: ignore[no-untyped-def]
        record(envelope)
        raise RuntimeError("this handler always fails")

    def crash(envelope, context):  # type: ignore[no-untyped-def]
        record(envelope)
        if not os.path.exists(marker):
            open(marker, "w").close()
            os.kill(os.getpid(), signal.SIGKILL)

    run_until_signalled(EsbConsumer(settings, handlers={"fails": fails, "crash": crash}))


if __name__ == "__main__":
    main(*sys.argv[1:])
