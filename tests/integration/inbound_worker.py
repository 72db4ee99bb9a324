"""A consumer process for the crash test: handles ``note`` events slowly, appending each
handled event id to a file, until SIGTERM (or kill -9).

Usage: python inbound_worker.py BOOTSTRAP TOPIC GROUP STATE_PATH OUT_FILE DELAY_SECONDS
"""

from __future__ import annotations

import os
import sys
import time

from openalgo_events import Settings
from openalgo_events.inbound import EsbConsumer, run_until_signalled


def main(bootstrap: str, topic: str, group: str, state: str, out: str, delay: str) -> None:
    settings = Settings.from_env({
        "KAFKA_BOOTSTRAP_SERVERS": bootstrap, "KAFKA_ESB_EVENTS_TOPIC": topic,
        "KAFKA_CONSUMER_GROUP": group, "KAFKA_CONSUMER_AUTO_OFFSET_RESET": "earliest",
        "KAFKA_CONSUMER_STATE_PATH": state,
    })
    fd = os.open(out, os.O_WRONLY | os.O_APPEND | os.O_CREAT)

    def note(envelope, context):  # type: ignore[no-untyped-def]
        time.sleep(float(delay))
        os.write(fd, envelope.event_id.encode() + b"\n")

    run_until_signalled(EsbConsumer(settings, handlers={"note": note}))


if __name__ == "__main__":
    main(*sys.argv[1:])
