// The reference page: an order ticket posting to the demo's REST API, and a live feed of
// every Socket.IO event received, connected over long-polling like OpenAlgo's front end.
"use strict";

(function () {
  const apikey = document.body.dataset.apikey;
  const $ = (id) => document.getElementById(id);
  const feed = $("feed");
  const MAX_ROWS = 200;
  let received = 0;

  function setConnection(state, text) {
    const badge = $("connection");
    badge.dataset.state = state;
    badge.textContent = text;
  }

  function time() {
    return new Date().toLocaleTimeString([], { hour12: false }) + "." +
      String(new Date().getMilliseconds()).padStart(3, "0");
  }

  function summary(event, payload) {
    if (event === "kafka_record" && payload && payload.envelope) {
      const env = payload.envelope;
      return `${env.event_type} → ${payload.topic}[${payload.partition}]@${payload.offset} key ${payload.key}`;
    }
    if (!payload || typeof payload !== "object") return "";
    const parts = ["symbol", "action", "orderid", "mode", "status", "message", "user", "symbols_count"]
      .filter((k) => payload[k] !== undefined && payload[k] !== "")
      .map((k) => `${k}: ${payload[k]}`);
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
    const head = document.createElement("div");
    head.className = "event-head";
    const name = document.createElement("span");
    name.className = "event-name";
    name.textContent = event;
    const when = document.createElement("time");
    when.textContent = time();
    const text = document.createElement("span");
    text.className = "event-summary";
    text.textContent = summary(event, payload);
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

  function showResult(id, ok, text) {
    const el = $(id);
    el.dataset.ok = ok ? "yes" : "no";
    el.textContent = text;
  }

  async function post(path, body) {
    const response = await fetch(path, {
      method: "POST",
      headers: { "Content-Type": "application/json" },
      body: JSON.stringify({ apikey, ...body }),
    });
    let data;
    try { data = await response.json(); } catch (_) { data = { status: "error", message: response.statusText }; }
    return { ok: response.ok && data.status === "success", data };
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
    $("place").textContent = e.target.checked ? "Place smart order" : "Place order";
  });
  $("ticket").addEventListener("submit", async (e) => {
    e.preventDefault();
    const form = new FormData(e.target);
    const smart = $("smart").checked;
    const order = {
      symbol: form.get("symbol"), exchange: form.get("exchange"), action: form.get("action"),
      quantity: form.get("quantity"), product: form.get("product"), pricetype: "MARKET",
      mode: form.get("mode"), strategy: "reference-page",
    };
    if (smart) order.position_size = form.get("position_size");
    const { ok, data } = await post(smart ? "/api/v1/placesmartorder" : "/api/v1/placeorder", order);
    const placed = data.mode === "analyze" ? `Sandbox order ${data.orderid} placed` : `Order ${data.orderid} placed`;
    showResult("ticket-result", ok, ok && data.orderid ? placed : data.message);
    refreshPositions();
  });

  // Platform actions.
  $("master-contract").addEventListener("click", async () => {
    const { ok, data } = await post("/api/v1/demo/mastercontract", {});
    showResult("platform-result", ok, data.message);
  });
  $("password-form").addEventListener("submit", async (e) => {
    e.preventDefault();
    const { ok, data } = await post("/api/v1/demo/changepassword", { new_password: $("new_password").value });
    showResult("platform-result", ok, data.message);
    if (ok) $("new_password").value = "";
  });
  $("clear-feed").addEventListener("click", () => {
    feed.replaceChildren();
    received = 0;
    $("feed-count").textContent = "0";
    $("feed-empty").hidden = false;
  });

  // The feed.
  if (typeof io === "undefined") {
    setConnection("error", "socket.io-client missing");
    $("feed-empty").textContent = "socket.io-client did not load: run `npm ci` in the openalgo-events repository and reload.";
    return;
  }
  const socket = io({ transports: ["polling"], auth: { apikey } });
  socket.on("connect", () => setConnection("up", "connected · polling"));
  socket.on("disconnect", () => setConnection("down", "disconnected"));
  socket.on("connect_error", () => setConnection("down", "cannot connect"));
  socket.onAny((event, payload) => addRow(event, payload));
  refreshPositions();
})();
