"""The browser helper (``openalgo-events-recovery.js``) run by Node.js against a stand-in for a
socket.io-client socket: it sends the cursor with the app's own auth, drops an event already
shown for every listener, adopts each status and sets ``socket.recovered``."""

from __future__ import annotations

import json
import shutil
import subprocess

import pytest

from openalgo_events.recovery import CLIENT_SCRIPT

# A socket as socket.io-client 4.x has it: auth read at each connect, emitEvent(args) handing
# each incoming event to the listeners.
SCRIPT = """
const recovery = require(process.argv[1]);
const seen = [];
const socket = {
  auth: (send) => send({ apikey: "k" }),
  emitEvent(args) { seen.push(args); },
};
const handle = recovery.attach(socket);
const statuses = [];
handle.onRecovery((status) => statuses.push(status));
const auths = [];
const connect = () => socket.auth((data) => auths.push(data));
const deliver = (event, payload) => socket.emitEvent([event, payload]);

connect();
deliver("openalgo_events_recovery", { recovered: false, count: 0, reason: "no_offset",
                                     offset: "k0123abcd:0:4,k0123abcd:1:-1" });
deliver("order_event", { orderid: "A", openalgo_events_offset: "k0123abcd:1:0" });
deliver("order_event", { orderid: "A", openalgo_events_offset: "k0123abcd:1:0" });
deliver("order_event", { orderid: "old", openalgo_events_offset: "k0123abcd:0:3" });
deliver("master_contract_download", { status: "success" });
connect();
deliver("openalgo_events_recovery", { recovered: true, count: 0,
                                     offset: "k0123abcd:0:2,k0123abcd:1:0" });
const recovered = socket.recovered;
socket.auth = { apikey: "k2" };  // the app replaces its auth, then attaches again
const again = recovery.attach(socket);
connect();
deliver("order_event", { orderid: "B", openalgo_events_offset: "k0123abcd:1:1" });
console.log(JSON.stringify({ seen, auths, statuses, recovered, dropped: handle.dropped,
                             offset: handle.offset, same: again === handle }));
"""


@pytest.mark.skipif(shutil.which("node") is None, reason="Node.js is not installed")
def test_the_browser_helper_sends_its_cursor_and_drops_what_it_has_shown():
    """After the first status the helper sends the cursor beside the app's auth, passes each
    new event (and events without offset) to the socket once, drops a repeat and an older
    offset, never moves its cursor back, and sets socket.recovered from the status; attached
    again after the app replaced its auth, it wraps the new auth and filters nothing twice."""
    done = subprocess.run(["node", "-e", SCRIPT, str(CLIENT_SCRIPT)], capture_output=True,
                          text=True, timeout=30, check=True)
    result = json.loads(done.stdout)
    assert [args[0] for args in result["seen"]] == [
        "openalgo_events_recovery", "order_event", "master_contract_download",
        "openalgo_events_recovery", "order_event"]
    assert result["auths"] == [
        {"apikey": "k"},
        {"apikey": "k", "openalgo_events_offset": "k0123abcd:0:4,k0123abcd:1:0"},
        {"apikey": "k2", "openalgo_events_offset": "k0123abcd:0:4,k0123abcd:1:0"}]
    assert result["same"] is True
    assert result["dropped"] == 2
    assert result["recovered"] is True
    assert [s["recovered"] for s in result["statuses"]] == [False, True]
    assert result["offset"] == "k0123abcd:0:4,k0123abcd:1:1"
