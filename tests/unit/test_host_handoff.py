"""The hand-off from any thread to the host's loop, the catalog's browser payloads, and the
zero-edit routes' mount: the pieces that keep our code off the host's objects."""

from __future__ import annotations

import threading

from flask import Flask

from openalgo_events import EventPublisher, Settings
from openalgo_events._handoff import Handoff
from openalgo_events.catalog import CATALOG
from openalgo_events.integrations.flask import OpenAlgoEvents, mount_operations
from openalgo_events.testing import MemoryTransport
from tests.support import wait_for


def test_handoff_delivers_puts_from_many_threads_in_put_order():
    """Items put from eight threads at once arrive once each, in the order of the put calls."""
    got: list[int] = []
    box: Handoff[int] = Handoff(got.append, green=False)
    runner = threading.Thread(target=box.run, daemon=True)
    runner.start()
    order: list[int] = []
    lock = threading.Lock()

    def put_many(base: int) -> None:
        for i in range(500):
            with lock:  # the put order, recorded with the put
                order.append(base + i)
                box.put(base + i)

    threads = [threading.Thread(target=put_many, args=(k * 1000,)) for k in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    wait_for(lambda: box.pending == 0, 10, message="drained")
    box.stop()
    runner.join(5)
    assert got == order and len(got) == 4000


def test_handoff_bounds_its_backlog_and_survives_a_failing_delivery():
    """Beyond ``maxlen`` a put is refused and counted; a delivery that raises goes to
    ``on_error`` and the next item is still delivered."""
    failed: list[str] = []
    got: list[str] = []

    def deliver(item: str) -> None:
        if item == "bad":
            raise ValueError(item)
        got.append(item)

    box: Handoff[str] = Handoff(deliver, green=False, maxlen=3, on_error=failed.append)
    assert [box.put(x) for x in ("a", "bad", "c", "d")] == [True, True, True, False]
    assert box.dropped == 1
    assert box.drain() == 3
    assert got == ["a", "c"] and failed == ["bad"] and box.pending == 0


def test_password_change_browser_payload_leaves_out_ip_and_user_agent():
    """The catalog keeps ``ip_address`` and ``user_agent`` off Socket.IO; other events keep
    every field, unknown ones included."""
    data = {"user": "bob", "status": "success", "message": "changed",
            "ip_address": "203.0.113.7", "user_agent": "curl/8"}
    assert CATALOG["password_change"].socketio_payload(data) == {
        "user": "bob", "status": "success", "message": "changed"}
    order = {"symbol": "SBIN-EQ", "action": "BUY", "orderid": "1", "mode": "live", "x": 1}
    assert CATALOG["order_event"].socketio_payload(order) == order


def test_mount_operations_adds_the_routes_once():
    """On an app without the extension the routes appear; on an app that already uses it
    nothing is registered twice and its own state stays."""
    bare = Flask("bare")
    publisher = EventPublisher(MemoryTransport())
    state = mount_operations(bare, Settings(), publisher)
    assert state is not None
    assert bare.test_client().get("/openalgo-events/health").status_code == 200
    assert mount_operations(bare, Settings(), publisher) is None

    extended = Flask("extended")
    own = OpenAlgoEvents().init_app(extended, settings=Settings(),
                                    publisher=EventPublisher(MemoryTransport()))
    try:
        assert mount_operations(extended, Settings(), publisher) is None
        assert OpenAlgoEvents.state(extended) is own
        rules = [r.rule for r in extended.url_map.iter_rules()]
        assert rules.count("/openalgo-events/health") == 1
    finally:
        own.close(1)


def test_socketio_transport_publishes_again_after_close():
    """After ``close`` a publish starts a new emit task: nothing is left queued forever."""
    from flask_socketio import SocketIO

    from openalgo_events.transports.socketio import SocketIOTransport

    emitted: list[str] = []
    socketio = SocketIO(Flask("closing"), async_mode="threading")
    socketio.emit = lambda event, data, **kw: emitted.append(data["message"])  # type: ignore
    transport = SocketIOTransport(socketio)
    publisher = EventPublisher(transport)
    publisher.publish("order_notification", "alice", symbol="S", status="info", message="1")
    assert transport.close(5) == 0
    publisher.publish("order_notification", "alice", symbol="S", status="info", message="2")
    assert transport.flush(5) == 0
    assert emitted == ["1", "2"]
    transport.close(5)


def test_hub_log_handler_queues_real_thread_records_and_reports_drops(caplog, monkeypatch):
    """Records from another thread wait, formatted, for the hub's drain; beyond the backlog
    bound they are dropped and one warning says how many."""
    import logging

    from openalgo_events import _hostlog

    monkeypatch.setattr(_hostlog, "MAX_BACKLOG", 3)
    handler = _hostlog.HubLogHandler()
    made: list[logging.LogRecord] = []

    def log_from_a_thread() -> None:
        for i in range(5):
            record = logging.LogRecord("openalgo_events.x", logging.INFO, __file__, 1,
                                       "record %s of %s", (i, 5), None)
            made.append(record)
            handler.emit(record)

    thread = threading.Thread(target=log_from_a_thread)
    thread.start()
    thread.join()
    assert handler.handoff.pending == 3 and handler.handoff.dropped == 2
    assert made[0].msg == "record 0 of 5" and made[0].args == ()  # formatted on its thread
    caplog.set_level(logging.INFO)
    assert handler.drain() == 3
    messages = [r.getMessage() for r in caplog.records]
    assert messages[0].startswith("openalgo-events dropped 2 log records")
    assert messages[1:] == ["record 0 of 5", "record 1 of 5", "record 2 of 5"]


FORKED_WORKER = r'''
import eventlet
eventlet.monkey_patch()  # as gunicorn's eventlet worker class does at import, in the master

import io, json, logging, os, sys, time
from eventlet import hubs, patcher
from openalgo_events._hostlog import forward_directly_here, guard

real_threading = patcher.original("threading")
real_time = patcher.original("time")
out = io.StringIO()
root = logging.getLogger()
root.addHandler(logging.StreamHandler(out))
root.setLevel(logging.INFO)
log = logging.getLogger("openalgo_events.test")


def from_a_real_thread(text, hub=True):
    thread = real_threading.Thread(target=log.info, args=("%s", text), daemon=True)
    thread.start()
    deadline = time.monotonic() + 5
    while text not in out.getvalue() and time.monotonic() < deadline:
        if hub:
            eventlet.sleep(0.01)  # the hub runs the hand-off's task, as in a worker's loop
        else:
            real_time.sleep(0.01)  # gunicorn's master: its own loop, never the hub
    return text in out.getvalue()


guard()  # the master: its relay supervisor starts a real thread
master_before = from_a_real_thread("master before the fork")
pid = os.fork()
if pid == 0:  # the worker
    hubs.use_hub()  # a hub of its own, as gunicorn's worker does after the fork
    guard()
    ok = from_a_real_thread("worker's record")
    os.write(1, (json.dumps({"worker": ok}) + "\n").encode())
    os._exit(0)
os.waitpid(pid, 0)
master_after = from_a_real_thread("master after the fork")
forward_directly_here()  # what the hook's when_ready does in gunicorn's master
print(json.dumps({"master_before": master_before, "master_after": master_after,
                  "master_without_hub": from_a_real_thread("no hub here", hub=False)}),
      flush=True)
'''


def test_hub_log_hand_off_works_in_a_worker_forked_from_a_patched_master(tmp_path):
    """A worker forked from a monkey-patched master that had the hand-off installed (gunicorn's
    eventlet worker class patches the master at import) forwards its real threads' records on
    its own hub while it runs, not only at exit; the master's hand-off still works, and once
    the master is declared hub-less (the hook's ``when_ready``) its real threads' records reach
    the handlers while the hub never runs."""
    import json
    import subprocess
    import sys

    done = subprocess.run([sys.executable, "-c", FORKED_WORKER], capture_output=True, text=True,
                          timeout=60, cwd=tmp_path)
    results: dict[str, bool] = {}
    for line in done.stdout.splitlines():
        if line.startswith("{"):
            results.update(json.loads(line))
    assert results == {"master_before": True, "worker": True, "master_after": True,
                       "master_without_hub": True}, (
        done.stdout[-2000:] + done.stderr[-2000:])


GREEN_BURST = r'''
import json
import eventlet
from openalgo_events._handoff import YIELD_EVERY, Handoff

seen = []
box = Handoff(lambda item: seen.append(item), green=True)
for i in range(10 * YIELD_EVERY):  # a burst, queued before the drainer runs
    box.put(i)


def request():  # another green thread of the worker, ready to run during the burst
    seen.append("request")


eventlet.spawn(request)
box.drain()
eventlet.sleep(0)
items = [x for x in seen if x != "request"]
print(json.dumps({"request_at": seen.index("request"), "in_order": items == list(range(
    10 * YIELD_EVERY)), "yield_every": YIELD_EVERY}))
'''


def test_green_drain_of_a_burst_lets_other_green_threads_run_and_keeps_order():
    """A green hand-off draining a burst of 160 items yields to the hub after at most
    ``YIELD_EVERY`` deliveries (a request waiting on the worker runs within them, not after the
    whole burst), and the items still arrive in put order."""
    import json
    import subprocess
    import sys

    done = subprocess.run([sys.executable, "-c", GREEN_BURST], capture_output=True, text=True,
                          timeout=60)
    lines = [line for line in done.stdout.splitlines() if line.startswith("{")]
    assert lines, done.stdout[-2000:] + done.stderr[-2000:]
    result = json.loads(lines[-1])
    assert result["in_order"] is True
    assert result["request_at"] <= result["yield_every"], result
