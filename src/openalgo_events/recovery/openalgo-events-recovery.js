// openalgo-events: Socket.IO connection state recovery, the browser's side (socket.io-client 4.x).
//
//   const socket = io(url, options);
//   const recovery = OpenAlgoEventsRecovery.attach(socket);   // right after io()
//   recovery.onRecovery((status) => {
//     if (!status.recovered && status.reason !== "no_offset") refetchEverything();
//   });
//
// With ORDER_EVENT_SOCKETIO_RECOVERY=TRUE on the server, every event openalgo-events emits
// carries its offset in its payload ("openalgo_events_offset": "<stream>:<partition>:<offset>").
// This helper keeps the cursor (for each partition, the offset of the last event shown), sends
// it as auth.openalgo_events_offset on every connect and reconnect (next to the app's own auth),
// drops an event it has already shown, and when the server's "openalgo_events_recovery" status
// arrives (after the missed events, before anything new) adopts its cursor, sets
// socket.recovered (true: nothing was missed) and calls the onRecovery callbacks with it:
// {recovered, count, offset, reason}. Events without an offset pass through untouched, so it
// is harmless against a server with recovery off.
"use strict";

(function (root) {
  const KEY = "openalgo_events_offset";
  const STATUS = "openalgo_events_recovery";
  const POSITION = /^([a-z][0-9a-f]{8}):(\d{1,10}):(-1|\d{1,19})$/;

  function parse(text) {
    const match = typeof text === "string" ? POSITION.exec(text) : null;
    return match ? { stream: match[1], partition: match[2], offset: Number(match[3]) } : null;
  }

  // For each partition of one stream, the offset of the last event seen (-1: none yet).
  class Cursor {
    constructor() {
      this.stream = null;
      this.offsets = new Map();
    }

    // false when the event at `text` was already seen; true (and recorded) otherwise. An
    // offset of another stream (the server restarted, or its mode changed) starts over.
    accept(text) {
      const position = parse(text);
      if (position === null) return true;
      if (position.stream !== this.stream) {
        this.stream = position.stream;
        this.offsets = new Map();
      }
      const last = this.offsets.get(position.partition);
      if (last !== undefined && position.offset <= last) return false;
      this.offsets.set(position.partition, position.offset);
      return true;
    }

    // The cursor a status sends: another stream replaces this one; the same stream moves each
    // partition forward only.
    adopt(text) {
      if (typeof text !== "string" || text === "") return;
      const items = text.split(",").map(parse);
      if (items.some((item) => item === null)) return;
      if (items[0].stream !== this.stream) {
        this.stream = items[0].stream;
        this.offsets = new Map();
      }
      for (const item of items) {
        if (item.stream !== this.stream) continue;
        const last = this.offsets.get(item.partition);
        if (last === undefined || item.offset > last) this.offsets.set(item.partition, item.offset);
      }
    }

    toString() {
      return [...this.offsets.entries()].sort((a, b) => Number(a[0]) - Number(b[0]))
        .map(([partition, offset]) => `${this.stream}:${partition}:${offset}`).join(",");
    }
  }

  // Each connect reads socket.auth (an object or a function): keep the app's, add the cursor.
  function wrapAuth(socket, cursor) {
    const own = socket.auth;
    const auth = (send) => {
      const add = (data) => {
        const body = Object.assign({}, data || {});
        if (cursor.stream !== null) body[KEY] = cursor.toString();
        send(body);
      };
      if (typeof own === "function") own(add); else add(own);
    };
    auth.openalgoEvents = true;
    socket.auth = auth;
  }

  // Attaching again (after the app replaced socket.auth) wraps the new auth and returns the
  // same handle: events are never filtered twice.
  function attach(socket) {
    const attached = socket.openalgoEventsRecovery;
    if (attached) {
      if (!(socket.auth && socket.auth.openalgoEvents)) wrapAuth(socket, attached.cursor);
      return attached;
    }
    const cursor = new Cursor();
    const callbacks = [];
    const state = { dropped: 0, last: null };
    wrapAuth(socket, cursor);

    // socket.io-client hands every incoming event to emitEvent(args) before any listener (onAny
    // included): the one place where an event already shown can be dropped for all of them.
    const dispatch = socket.emitEvent;
    if (typeof dispatch !== "function") {
      console.warn("openalgo-events recovery: this socket.io-client has no emitEvent; offsets " +
                   "are kept and sent, but duplicates are not dropped");
    } else {
      socket.emitEvent = function (args) {
        const [event, payload] = args;
        if (event === STATUS && payload && typeof payload === "object") {
          cursor.adopt(payload.offset);
          socket.recovered = payload.recovered === true;
          state.last = payload;
          for (const callback of callbacks) callback(payload);
        } else if (payload && typeof payload === "object" && !Array.isArray(payload) &&
                   !cursor.accept(payload[KEY])) {
          state.dropped += 1;
          return undefined;
        }
        return dispatch.call(this, args);
      };
    }

    const handle = {
      cursor,
      get offset() { return cursor.toString(); },
      get dropped() { return state.dropped; },
      get status() { return state.last; },
      onRecovery(callback) { callbacks.push(callback); return this; },
    };
    socket.openalgoEventsRecovery = handle;
    return handle;
  }

  const api = { attach, Cursor, KEY, STATUS };
  root.OpenAlgoEventsRecovery = api;
  if (typeof module === "object" && module && module.exports) module.exports = api;
})(typeof globalThis !== "undefined" ? globalThis : this);
