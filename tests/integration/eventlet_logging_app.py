"""A real OS thread logs through handlers made after eventlet's monkey-patching while a green
thread holds a handler's (green) lock: what OpenAlgo's worker does to the package's threads.

Usage: python eventlet_logging_app.py guarded|unguarded
Prints one JSON line: whether the real thread finished, its errors, the lines written.
"""

import eventlet

eventlet.monkey_patch()

import io  # noqa: E402
import json  # noqa: E402
import logging  # noqa: E402
import sys  # noqa: E402
import time  # noqa: E402

from eventlet import patcher  # noqa: E402

from openalgo_events._hostlog import guard  # noqa: E402

real_threading = patcher.original("threading")
real_time = patcher.original("time")


def main(mode: str) -> None:
    out = io.StringIO()
    handler = logging.StreamHandler(out)  # made after patching: its lock is green
    root = logging.getLogger()
    root.addHandler(handler)
    root.setLevel(logging.INFO)
    if mode == "guarded":
        guard()
    log = logging.getLogger("openalgo_events.test")

    def holder() -> None:
        with handler.lock:  # the host's handler busy on the hub (a slow write, say)
            eventlet.sleep(0.5)

    errors: list[str] = []

    def real() -> None:
        try:
            for i in range(20):
                log.info("from a real thread %s", i)
        except BaseException as exc:  # greenlet.error is not an Exception subclass everywhere
            errors.append(repr(exc))

    eventlet.spawn(holder)
    eventlet.sleep(0)  # the holder takes the lock
    thread = real_threading.Thread(target=real, daemon=True)
    thread.start()
    deadline = time.monotonic() + 5
    while thread.is_alive() and time.monotonic() < deadline:
        eventlet.sleep(0.01)
    eventlet.sleep(1.0)  # the hand-off's task forwards what waited
    lines = [line for line in out.getvalue().splitlines() if "from a real thread" in line]
    print(json.dumps({"finished": not thread.is_alive(), "errors": errors, "lines": lines}),
          flush=True)
    real_time.sleep(0)


if __name__ == "__main__":
    main(sys.argv[1])
