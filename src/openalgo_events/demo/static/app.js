// The reference page: an order ticket posting to the demo's REST API, and a live feed of
// every Socket.IO event received, connected over long-polling like OpenAlgo's front end.
"use strict";

(function () {
  const apikey = document.body.dataset.apikey;
  const $ = (id) => document.getElementById(id);
  const feed = $("feed");
  const MAX_ROWS = 200;
  const META = "demo_event_meta";  // each event's id and timestamp, sent by the demo app
  const OFFSET = "openalgo_events_offset";  // each event's position, with recovery on
  const STATUS = "openalgo_events_recovery";  // after each connect: what was recovered
  const HEALTH_EVERY_MS = 2000;
  const SUMMARY_MAX = 240;  // characters of a feed row's one-line summary
  let received = 0;
  const pendingMeta = new Map();  // event key -> [meta, ...] that arrived before their event

  function setConnection(state, text) {
    const badge = $("connection");
    badge.dataset.state = state;
    badge.textContent = text;
  }

  function clock(date) {
    return date.toLocaleTimeString([], { hour12: false }) + "." +
      String(date.getMilliseconds()).padStart(3, "0");
  }

  // The event's own time (its envelope's timestamp) when known; the arrival time otherwise.
  function stamp(el, iso) {
    if (iso) {
      el.textContent = clock(new Date(iso));
      el.dateTime = iso;
      el.dataset.source = "event";
      el.title = `event timestamp ${iso}`;
    } else {
      const now = new Date();
      el.textContent = clock(now);
      el.dateTime = now.toISOString();
      el.dataset.source = "received";
      el.title = "received at (no event timestamp yet)";
    }
  }

  // An event and its meta match by name and payload; the offset is the event's alone.
  function eventKey(event, payload) {
    if (payload && typeof payload === "object" && OFFSET in payload) {
      const { [OFFSET]: _offset, ...rest } = payload;
      payload = rest;
    }
    return event + " " + JSON.stringify(payload);
  }

  function summary(event, payload) {
    if (event === "kafka_record" && payload && payload.envelope) {
      const env = payload.envelope;
      return `${env.event_type} → ${payload.topic}[${payload.partition}]@${payload.offset} key ${payload.key}`;
    }
    if (!payload || typeof payload !== "object") return "";
    const fields = event === "order_event"
      ? [["symbol"], ["action"], ["quantity"], ["exchange"], ["product_type", "product"],
         ["price"], ["orderid"], ["mode"]]
      : [["symbol"], ["action"], ["orderid"], ["mode"], ["status"], ["message"], ["user"],
         ["symbols_count"]];
    const parts = fields
      .filter(([k]) => payload[k] !== undefined && payload[k] !== null && payload[k] !== "")
      .map(([k, label]) => `${label || k}: ${payload[k]}`);
    if (event === "analyzer_update" && payload.request) {
      parts.unshift(`${payload.request.api_type} ${payload.request.action} ${payload.request.quantity} ${payload.request.symbol}`);
    }
    return parts.join(" · ");
  }

  function addRow(event, payload) {
    received += 1;
    $("feed-count").textContent = received;
    $("feed-empty").hidden = true;
    const row = document.createElement("li");
    row.className = "event";
    row.dataset.event = event;
    if (payload && typeof payload === "object" && payload[OFFSET]) row.dataset.offset = payload[OFFSET];
    const head = document.createElement("div");
    head.className = "event-head";
    const name = document.createElement("span");
    name.className = "event-name";
    name.textContent = event;
    const when = document.createElement("time");
    const env = event === "kafka_record" && payload && payload.envelope;
    stamp(when, env && env.timestamp);
    if (event !== "kafka_record") {
      const key = eventKey(event, payload);
      row.dataset.key = key;
      const waiting = pendingMeta.get(key);
      if (waiting && waiting.length) {
        const meta = waiting.shift();
        if (!waiting.length) pendingMeta.delete(key);
        stamp(when, meta.timestamp);
        row.dataset.eventId = meta.event_id;
      }
    }
    const text = document.createElement("span");
    text.className = "event-summary";
    const line = summary(event, payload);
    // One glance per row: a long value is cut here; the payload below keeps all of it.
    text.textContent = line.length > SUMMARY_MAX ? line.slice(0, SUMMARY_MAX - 1) + "…" : line;
    head.append(name, text, when);
    const details = document.createElement("details");
    const label = document.createElement("summary");
    label.textContent = "payload";
    const body = document.createElement("pre");
    body.textContent = JSON.stringify(payload, null, 2);
    details.append(label, body);
    row.append(head, details);
    feed.prepend(row);
    while (feed.children.length > MAX_ROWS) feed.lastElementChild.remove();
  }

  // The timestamp of an event whose row is already shown, or of one still on its way.
  function applyMeta(meta) {
    const key = eventKey(meta.event_type, meta.data);
    for (const row of feed.querySelectorAll("li.event")) {
      if (row.dataset.key === key && !row.dataset.eventId) {
        row.dataset.eventId = meta.event_id;
        stamp(row.querySelector("time"), meta.timestamp);
        return;
      }
    }
    if (!pendingMeta.has(key)) pendingMeta.set(key, []);
    pendingMeta.get(key).push(meta);
    if (pendingMeta.size > MAX_ROWS) pendingMeta.delete(pendingMeta.keys().next().value);
  }

  function showResult(id, ok, text) {
    const el = $(id);
    el.dataset.ok = ok ? "yes" : "no";
    el.textContent = text;
  }

  const UNREACHABLE = `Cannot reach the app at ${location.host}: is openalgo-events demo still running? Nothing was sent.`;

  async function post(path, body) {
    let response;
    try {
      response = await fetch(path, {
        method: "POST",
        headers: { "Content-Type": "application/json" },
        body: JSON.stringify({ apikey, ...body }),
      });
    } catch (_) {
      return { ok: false, data: { status: "error", message: UNREACHABLE } };
    }
    let data;
    try { data = await response.json(); } catch (_) {
      data = { status: "error", message: `The app answered ${response.status} ${response.statusText}` };
    }
    return { ok: response.ok && data.status === "success", data };
  }

  // One request at a time per button, and the button stays disabled for at least a double
  // click's span: a double click places one order, not two, even when the first answer comes
  // back between the two clicks (a fast server, a slow hand).
  const DOUBLE_CLICK_MS = 500;
  async function once(button, work) {
    if (button.disabled) return;
    button.disabled = true;
    button.setAttribute("aria-busy", "true");
    const started = performance.now();
    try { await work(); } finally {
      const left = DOUBLE_CLICK_MS - (performance.now() - started);
      if (left > 0) await new Promise((resolve) => setTimeout(resolve, left));
      button.disabled = false;
      button.removeAttribute("aria-busy");
    }
  }

  async function refreshPositions() {
    const { ok, data } = await post("/api/v1/positionbook", {});
    if (!ok) return;
    const tbody = $("positions");
    tbody.replaceChildren();
    if (!data.data.length) {
      tbody.innerHTML = '<tr class="empty"><td colspan="3">No positions yet</td></tr>';
      return;
    }
    for (const row of data.data) {
      const tr = document.createElement("tr");
      for (const [value, cls] of [[row.symbol, ""], [row.mode, "mode-" + row.mode], [row.quantity, "num"]]) {
        const td = document.createElement("td");
        td.textContent = value;
        if (cls) td.className = cls;
        tr.append(td);
      }
      if (row.quantity > 0) tr.classList.add("long");
      if (row.quantity < 0) tr.classList.add("short");
      tbody.append(tr);
    }
  }

  // The ticket.
  $("smart").addEventListener("change", (e) => {
    $("position_size").disabled = !e.target.checked;
    // A smart order may trade 0 (the position size decides); a plain order at least 1.
    $("quantity").min = e.target.checked ? "0" : "1";
    $("place").textContent = e.target.checked ? "Place smart order" : "Place order";
  });
  $("ticket").addEventListener("submit", (e) => {
    e.preventDefault();
    once($("place"), async () => {
      const form = new FormData(e.target);
      const smart = $("smart").checked;
      const order = {
        symbol: form.get("symbol"), exchange: form.get("exchange"), action: form.get("action"),
        quantity: form.get("quantity"), product: form.get("product"), pricetype: "MARKET",
        mode: form.get("mode"), strategy: "reference-page",
      };
      if (smart) order.position_size = form.get("position_size");
      showResult("ticket-result", true, "Placing…");
      const { ok, data } = await post(smart ? "/api/v1/placesmartorder" : "/api/v1/placeorder", order);
      const placed = data.mode === "analyze" ? `Sandbox order ${data.orderid} placed` : `Order ${data.orderid} placed`;
      showResult("ticket-result", ok, ok && data.orderid ? placed : data.message);
      if (ok) refreshPositions();
    });
  });

  // Platform actions.
  $("master-contract").addEventListener("click", (e) => {
    once(e.currentTarget, async () => {
      const { ok, data } = await post("/api/v1/demo/mastercontract", {});
      showResult("platform-result", ok, data.message);
    });
  });
  $("password-form").addEventListener("submit", (e) => {
    e.preventDefault();
    once($("change-password"), async () => {
      const { ok, data } = await post("/api/v1/demo/changepassword", { new_password: $("new_password").value });
      showResult("platform-result", ok, data.message);
      if (ok) $("new_password").value = "";
    });
  });

  // After a reconnect: how many missed events came back, or that they could not (the page
  // then refetches what it shows: here, the position book).
  function showRecovery(status) {
    const badge = $("recovery");
    badge.dataset.recovered = status.recovered ? "yes" : "no";
    badge.dataset.count = String(status.count);
    badge.dataset.reason = status.reason || "";
    if (status.recovered) {
      badge.textContent = status.count
        ? `recovered ${status.count} event${status.count === 1 ? "" : "s"}` : "nothing missed";
    } else if (status.reason !== "no_offset") {  // no_offset: a first connect, nothing to say
      badge.textContent = `missed events not recovered (${status.reason}): book refreshed`;
      refreshPositions();
    }
    badge.hidden = !status.recovered && status.reason === "no_offset";
  }

  // The status strip: the extension's health endpoint, polled.
  // The Kafka relay: a process of its own (the host's health reads its status file), or,
  // with KAFKA_SPOOL_PATH=:memory:, a thread inside this app (no relay_running field then).
  function relayText(kafka) {
    if (!kafka) return "not used";
    const flight = kafka.in_flight ? `, ${kafka.in_flight} in flight` : "";
    if (kafka.relay_running === true) {
      return `running${kafka.relay_pid ? ` (pid ${kafka.relay_pid})` : ""}${flight}`;
    }
    if (kafka.relay_running === false) {
      return kafka.spool_depth ? `not running, ${kafka.spool_depth} waiting`
        : "not running (the next event starts it)";
    }
    return `in-process${flight}`;
  }

  function brokerText(kafka, reachable) {
    if (reachable === true) return "reachable";
    if (reachable === false) return "unreachable";
    if (kafka && kafka.relay_running === false) return "unknown (no relay)";
    return "not used";
  }

  async function refreshStatus() {
    let health;
    try {
      const response = await fetch("/openalgo-events/health", { cache: "no-store" });
      health = await response.json();
    } catch (_) {
      $("status").dataset.state = "down";
      $("status-error").textContent = `App unreachable at ${location.host}`;
      return;
    }
    $("status").dataset.state = health.healthy ? "up" : "degraded";
    $("status-mode").textContent = health.mode + (health.rollout_percent < 100 ? ` (${health.rollout_percent}%)` : "");
    $("route-mode").textContent = `mode ${health.mode}`;
    // A switch made elsewhere (the CLI, SIGHUP) shows in the selector too, unless in use.
    if (document.activeElement !== $("mode-select")) $("mode-select").value = health.mode;
    const kafka = (health.transports || {}).kafka;
    const reachable = health.broker_reachable;
    const broker = $("status-broker");
    broker.textContent = brokerText(kafka, reachable);
    broker.dataset.ok = reachable === false ? "no" : "yes";
    $("status-spool").textContent = !kafka ? "not used"
      : health.spool_depth === null || health.spool_depth === undefined ? "unknown"
      : String(health.spool_depth);
    const relay = $("status-relay");
    relay.textContent = relayText(kafka);
    relay.dataset.ok = kafka && kafka.relay_running === false && kafka.spool_depth ? "no" : "yes";
    $("status-error").textContent = health.last_error ? `last error: ${health.last_error}` : "";
  }

  $("mode-form").addEventListener("submit", (e) => {
    e.preventDefault();
    once($("mode-apply"), async () => {
      const { ok, data } = await post("/api/v1/demo/mode", { mode: $("mode-select").value });
      showResult("ticket-result", ok, ok ? `Mode switched to ${data.mode}` : data.message);
      await refreshStatus();
    });
  });
  refreshStatus();
  setInterval(refreshStatus, HEALTH_EVERY_MS);
  $("clear-feed").addEventListener("click", () => {
    feed.replaceChildren();
    received = 0;
    $("feed-count").textContent = "0";
    $("feed-empty").hidden = false;
  });

  // The feed.
  if (typeof io === "undefined") {
    setConnection("error", "socket.io-client missing");
    $("feed-empty").textContent = "socket.io-client did not load (see /vendor/socket.io.min.js for why), so the feed is off.";
    return;
  }
  const socket = io({ transports: ["polling"], auth: { apikey } });
  // Recovery (when the server has it on): what this page missed while disconnected arrives
  // after a reconnect, before anything new, and nothing twice.
  const recovery = window.OpenAlgoEventsRecovery ? OpenAlgoEventsRecovery.attach(socket) : null;
  if (recovery) recovery.onRecovery(showRecovery);
  socket.on("connect", () => setConnection("up", "connected · polling"));
  socket.on("disconnect", () => setConnection("down", "disconnected"));
  socket.on("connect_error", () => setConnection("down", "cannot connect"));
  socket.onAny((event, payload) => {
    if (event === META) applyMeta(payload);
    else if (event !== STATUS) addRow(event, payload);
  });
  refreshPositions();
})();
