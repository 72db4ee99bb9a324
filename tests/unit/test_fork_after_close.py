"""A forked child publishes from its own journal even when the parent closed publishers before
the fork (a host that rebuilt its publisher, a test suite): nothing of a closed publisher is
touched again in the child, so no descriptor number it once held and that was reused since
is closed under a live publisher."""

from __future__ import annotations

import json
import os
import subprocess
import sys

CHILD_AFTER_CLOSED_PUBLISHERS = r'''
import json, os, sys, traceback
from openalgo_events import KafkaEventPublisher, Settings

root = sys.argv[1]

def publisher(name):
    return KafkaEventPublisher("127.0.0.1:1", "orders", settings=Settings.from_env(
        {"KAFKA_SPOOL_PATH": os.path.join(root, name)}))

for name in ("first", "second"):
    closed = publisher(name)
    closed.publish_order_event("alice", "SBIN", "BUY", "1", "live")
    closed.close(1)
live = publisher("live")
live.publish_order_event("alice", "SBIN", "BUY", "1", "live")
parent_journal = live.transport._journal.name
read, write = os.pipe()
pid = os.fork()
if pid == 0:
    try:
        live.publish_order_event("bob", "SBIN", "BUY", "2", "live")
        report = {"journal": live.transport._journal.name}
    except BaseException:
        report = {"error": traceback.format_exc()}
    os.write(write, json.dumps(report).encode())
    os._exit(0)
os.close(write)
os.waitpid(pid, 0)
report = json.loads(os.fdopen(read).read())
report["parent_journal"] = parent_journal
live.publish_order_event("alice", "SBIN", "BUY", "3", "live")  # the parent's still works
live.close(1)
print(json.dumps(report))
'''


def test_a_child_forked_after_publishers_were_closed_publishes_from_its_own_journal(tmp_path):
    done = subprocess.run(
        [sys.executable, "-c", CHILD_AFTER_CLOSED_PUBLISHERS, str(tmp_path)],
        capture_output=True, text=True, timeout=60,
        env={**os.environ, "OPENALGO_EVENTS_RELAY_AUTOSTART": "FALSE"})
    assert done.returncode == 0, done.stderr[-3000:]
    report = json.loads(done.stdout.strip().splitlines()[-1])
    assert "error" not in report, report.get("error")
    assert report["journal"] != report["parent_journal"]
