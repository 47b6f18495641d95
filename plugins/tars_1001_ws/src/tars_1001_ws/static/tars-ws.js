// tars-ws.js: the TARS-1001 reconnecting WebSocket client for browsers (ES module, no dependencies).
//
// Served by the hub at /tars-ws/tars-ws.js and shipped in the tars-1001-ws package
// (tars_1001_ws/static/tars-ws.js). The same behaviour as the Python ReconnectingWebSocketClient:
//   * liveness: any inbound frame counts; otherwise a {"type":"ping"} frame every heartbeatInterval s
//     (a page cannot send WebSocket pings), and after maxMissedHeartbeats unanswered ones the connection
//     is given up at once: a silent drop is noticed within interval + missed x timeout;
//   * reconnect delays: full jitter on every attempt, uniform(0, min(backoffMax, backoffInitial x 2^n)),
//     reset only after a connection stayed up stableAfter s; close 1012 restarts the backoff, 1013 keeps
//     escalating, and "retry-after=N" in a close reason adds N s;
//   * resubscription in one frame from the last (epoch, seq) received on every channel, so the hub
//     replays the gap and handlers see each message exactly once, in order; what the hub cannot replay
//     is surfaced as a "resync" event (ResyncRequired), never skipped silently;
//   * publishes wait in a bounded outbox until acknowledged and are resent with the same idempotency key;
//   * it offers tars.ws.v1.0.1 and tars.ws.v1.0.0 and speaks whichever the hub selects, so a dashboard
//     still connects while the hub's flag is off (v1.0.0 has no replay: each reconnect is then a resync).
// Times are in seconds, as in the Python client. See the plugin README ("The browser client").

export const PROTOCOL_V101 = "tars.ws.v1.0.1";
export const PROTOCOL_V100 = "tars.ws.v1.0.0";

export const State = Object.freeze({
  CONNECTING: "connecting",
  CONNECTED: "connected",
  RECOVERING: "recovering",
  RECOVERED: "recovered",
  RESYNC_REQUIRED: "resync_required",
  DISCONNECTED: "disconnected",
  CLOSED: "closed",
});

const MAX_CHANNEL_NAME = 200;

export const DEFAULTS = Object.freeze({
  // 10 s / 5 s / 3: a silent drop is noticed within 25 s, under the 30 s after which a person would
  // reach for the refresh button (the Python client's server-side defaults are 30 s / 10 s).
  heartbeatInterval: 10,
  heartbeatTimeout: 5,
  maxMissedHeartbeats: 3,
  backoffInitial: 1,
  backoffMax: 30,
  stableAfter: null, // default: heartbeatInterval
  openTimeout: 10,
  requestTimeout: 10,
  outboxMaxMessages: 1000,
  outboxMaxBytes: 1 << 20,
  outboxOverflow: "reject", // or "drop_oldest"
  protocols: [PROTOCOL_V101, PROTOCOL_V100], // [] talks to a v1.0.0 hub build, which knows no subprotocol
  clientId: null,
  random: Math.random,
});

export class ClientError extends Error {
  constructor(message) {
    super(message);
    this.name = new.target.name;
  }
}
export class ClientClosed extends ClientError {}
export class OutboxFull extends ClientError {}
export class HubRefused extends ClientError {}

// A gap the hub could not replay: everything after (lastEpoch, lastSeq) up to (epoch, firstSeq - 1).
// reason: "epoch_changed" (the hub restarted), "evicted" (the gap outlived the replay buffer) or
// "no_replay" (this connection or the one before spoke v1.0.0). Reload the channel's state.
export class ResyncRequired {
  constructor(channel, lastEpoch, lastSeq, epoch, firstSeq, reason) {
    Object.assign(this, { channel, lastEpoch, lastSeq, epoch, firstSeq, reason });
    Object.freeze(this);
  }
  get missing() {
    if (this.reason === "no_replay") {
      return `${this.channel}: whatever was published while disconnected (v1.0.0 has no replay)`;
    }
    if (this.reason === "evicted") {
      return `${this.channel}: seq ${this.lastSeq + 1}..${this.firstSeq - 1} of epoch ${this.epoch}`;
    }
    const tail = this.firstSeq > 1 ? ` and seq 1..${this.firstSeq - 1} of epoch ${this.epoch}` : "";
    return `${this.channel}: everything after seq ${this.lastSeq} of epoch ${this.lastEpoch}${tail}`;
  }
}

const now = () => performance.now() / 1000;

function wsUrl(url) {
  const base = typeof location === "undefined" ? undefined : location.href;
  let parsed;
  try {
    parsed = new URL(url, base);
  } catch {
    throw new TypeError(`invalid WebSocket URL ${JSON.stringify(url)}`);
  }
  if (parsed.protocol === "http:") parsed.protocol = "ws:";
  if (parsed.protocol === "https:") parsed.protocol = "wss:";
  if (parsed.protocol !== "ws:" && parsed.protocol !== "wss:") {
    throw new TypeError(`invalid WebSocket URL ${JSON.stringify(url)}: use ws://, wss:// or a path`);
  }
  return parsed.href;
}

function retryAfterHint(reason) {
  const m = /retry-after=([0-9.]+)/i.exec(reason || "");
  return m ? Math.max(0, Number(m[1])) || 0 : null;
}

function checkChannel(channel) {
  if (typeof channel !== "string" || channel.length === 0 || channel.length > MAX_CHANNEL_NAME) {
    throw new TypeError(`channel must be a non-empty string of at most ${MAX_CHANNEL_NAME} characters`);
  }
}

// A string the hub would refuse: a lone UTF-16 surrogate (an emoji cut in half) is not valid Unicode.
const LONE_SURROGATE = /[\uD800-\uDBFF](?![\uDC00-\uDFFF])|(?<![\uD800-\uDBFF])[\uDC00-\uDFFF]/;

export class TarsWebSocket extends EventTarget {
  constructor(url, options = {}) {
    super();
    const unknown = Object.keys(options).filter((k) => !(k in DEFAULTS));
    if (unknown.length) throw new TypeError(`unknown option(s): ${unknown.join(", ")}`);
    this.options = { ...DEFAULTS, ...options };
    const o = this.options;
    if (!(o.heartbeatInterval > 0 && o.heartbeatTimeout > 0 && o.maxMissedHeartbeats >= 1)) {
      throw new RangeError("heartbeatInterval and heartbeatTimeout must be > 0, maxMissedHeartbeats >= 1");
    }
    if (!(o.backoffInitial > 0 && o.backoffMax >= o.backoffInitial)) {
      throw new RangeError("need 0 < backoffInitial <= backoffMax");
    }
    if (!["reject", "drop_oldest"].includes(o.outboxOverflow)) {
      throw new RangeError('outboxOverflow is "reject" or "drop_oldest"');
    }
    this.url = wsUrl(url);
    this.stableAfter = o.stableAfter ?? o.heartbeatInterval;
    this.clientId = o.clientId || Math.random().toString(16).slice(2, 14);
    this.state = State.CLOSED;
    this.protocol = null; // what the hub selected for the current (or last) connection
    this.resyncs = [];
    this.stats = { connections: 0, duplicatesDropped: 0, gapsDetected: 0, pingsSent: 0, heartbeatsMissed: 0 };
    this._subs = new Map();
    this._outbox = [];
    this._outboxBytes = 0;
    this._keys = 0;
    this._reqIds = 0;
    this._requests = new Map();
    this._inbox = [];
    this._draining = false;
    this._ws = null;
    this._live = false; // connected and past recovery: new requests may be sent
    this._connNo = 0;
    this._closing = false;
    this._started = null;
    this._wake = null;
    this.lastError = null;
  }

  get connected() {
    return this._ws !== null && this._live;
  }

  // Start connecting; resolves at the first successful connection (subscriptions restored).
  // A dashboard keeps trying for as long as it is open, so this never gives up by itself: use close().
  start() {
    if (!this._started) {
      this._started = new Promise((resolve, reject) => {
        this._ready = { resolve, reject };
      });
      this._started.catch(() => {}); // closed before connecting: only a caller that awaits it hears of it
      this._run();
    }
    return this._started;
  }

  // Deliver every message of `channel` from now on to handler(msg) (msg.channel, .seq, .epoch, .data),
  // in order, one at a time (a handler returning a promise is awaited). onResync(resync) is called when
  // a gap cannot be replayed (besides the "resync" event).
  async subscribe(channel, handler, { onResync = null } = {}) {
    checkChannel(channel);
    if (typeof handler !== "function") throw new TypeError("handler must be a function");
    const existing = this._subs.get(channel);
    if (existing) {
      existing.handler = handler;
      existing.onResync = onResync;
      return;
    }
    this._subs.set(channel, {
      handler, onResync, epoch: null, received: 0, delivered: [null, 0], confirmed: false,
    });
    if (this._ws) {
      // also during recovery: the recovery's subscribe frame was made before this channel was added
      try {
        await this._request({ type: "subscribe", channels: [{ channel, epoch: null, seq: null }] });
      } catch (err) {
        if (err instanceof HubRefused) throw err; // the next reconnect restores it otherwise
      }
    }
  }

  async unsubscribe(channel) {
    if (this._subs.delete(channel) && this._ws) {
      try {
        await this._request({ type: "unsubscribe", channels: [channel] });
      } catch {
        // the hub forgets it with the connection anyway
      }
    }
  }

  // channel -> [epoch, last seq a handler has returned from]
  get subscriptions() {
    return Object.fromEntries([...this._subs].map(([name, sub]) => [name, sub.delivered]));
  }

  // Queue `data` for `channel`; sent now if connected, else right after the next reconnect. Returns a
  // promise of the hub's sequence number (null from a v1.0.0 hub), with .key the idempotency key.
  // Throws OutboxFull (policy "reject"), ClientClosed, or TypeError for data that is not standard JSON.
  publish(channel, data, { key = null } = {}) {
    if (this._closing) throw new ClientClosed("client is closed");
    checkChannel(channel);
    key = key ?? `${this.clientId}-${++this._keys}`;
    const text = JSON.stringify({ type: "publish", id: key, channel, data, key }, (k, v) => {
      if (typeof v === "number" && !Number.isFinite(v)) {
        throw new TypeError(`${v} is not standard JSON`);
      }
      if (typeof v === "string" && LONE_SURROGATE.test(v)) {
        throw new TypeError("a string holds a lone UTF-16 surrogate (an emoji cut in half?)");
      }
      return v;
    });
    const size = new TextEncoder().encode(text).length;
    const o = this.options;
    if (size > o.outboxMaxBytes) {
      throw new OutboxFull(`publication of ${size} bytes exceeds outboxMaxBytes=${o.outboxMaxBytes}`);
    }
    while (this._outbox.length >= o.outboxMaxMessages || this._outboxBytes + size > o.outboxMaxBytes) {
      if (o.outboxOverflow === "reject") {
        throw new OutboxFull(`outbox full (${this._outbox.length} messages, ${this._outboxBytes} bytes)`);
      }
      const dropped = this._outbox.shift();
      this._outboxBytes -= dropped.size;
      dropped.reject(new OutboxFull("dropped from a full outbox (drop_oldest)"));
    }
    let pub;
    const promise = new Promise((resolve, reject) => {
      pub = { key, channel, text, size, resolve, reject, sentOn: -1 };
    });
    promise.catch(() => {}); // a caller that never awaits it gets no unhandled-rejection noise
    promise.key = key;
    this._outbox.push(pub);
    this._outboxBytes += size;
    if (this._ws && this._live) this._flush(this._ws);
    return promise;
  }

  get outboxSize() {
    return this._outbox.length;
  }

  // Stop reconnecting and close; idempotent. Unacknowledged publications fail with ClientClosed.
  async close() {
    if (this._closing) return;
    this._closing = true;
    if (this._wake) this._wake();
    if (this._endSession) this._endSession({ reason: "closed by the page", closing: true });
    for (const pub of this._outbox.splice(0)) pub.reject(new ClientClosed("client closed before the hub acknowledged"));
    this._outboxBytes = 0;
    if (this._ready) this._ready.reject(new ClientClosed("closed before connecting"));
    this._emit({ state: State.CLOSED });
  }

  backoffDelay(attempt) {
    const o = this.options;
    return o.random() * Math.min(o.backoffMax, o.backoffInitial * 2 ** Math.min(attempt, 30));
  }

  // -- connection loop ---------------------------------------------------------------------------
  async _run() {
    let attempt = 0;
    while (!this._closing) {
      this._emit({ state: State.CONNECTING, attempt });
      const outcome = await this._session();
      if (this._closing) return;
      if (outcome.restart) attempt = 0;
      else if (outcome.upFor !== null && outcome.upFor >= this.stableAfter) attempt = 0;
      let delay = this.backoffDelay(attempt);
      if (outcome.retryAfter !== null && outcome.retryAfter !== undefined) delay += outcome.retryAfter;
      attempt += 1;
      this.lastError = outcome.reason;
      this._emit({ state: State.DISCONNECTED, attempt, reason: outcome.reason, delay });
      await new Promise((resolve) => {
        const timer = setTimeout(resolve, delay * 1000);
        this._wake = () => {
          clearTimeout(timer);
          resolve();
        };
      });
      this._wake = null;
    }
  }

  // One connection, from the handshake until it ends; resolves with why it ended.
  _session() {
    return new Promise((resolve) => {
      const o = this.options;
      let ws;
      try {
        ws = o.protocols.length ? new WebSocket(this.url, o.protocols) : new WebSocket(this.url);
      } catch (err) {
        resolve({ reason: `cannot open ${this.url}: ${err.message}`, upFor: null, retryAfter: null });
        return;
      }
      let openedAt = null;
      let ended = false;
      let lastRx = now();
      let pingSentAt = null;
      let missed = 0;
      let heartbeat = null;
      const openTimer = setTimeout(
        () => end({ reason: `no handshake within ${o.openTimeout} s` }),
        o.openTimeout * 1000,
      );
      const end = (info) => {
        if (ended) return;
        ended = true;
        clearTimeout(openTimer);
        clearTimeout(heartbeat);
        ws.onopen = ws.onmessage = ws.onclose = ws.onerror = null;
        // a dead or unwanted connection is left at once; the browser finishes closing it on its own
        if (ws.readyState === WebSocket.CONNECTING || ws.readyState === WebSocket.OPEN) {
          try {
            ws.close(info.closing ? 1000 : 4000, info.closing ? "client closing" : "client gave up");
          } catch {
            // already closing
          }
        }
        if (this._ws === ws) {
          this._ws = null;
          this._live = false;
        }
        this._endSession = null;
        for (const [id, req] of this._requests) {
          clearTimeout(req.timer);
          req.reject(new ClientError(`connection lost: ${info.reason}`));
          this._requests.delete(id);
        }
        resolve({
          reason: info.reason,
          retryAfter: info.retryAfter ?? null,
          restart: Boolean(info.restart),
          upFor: openedAt === null ? null : now() - openedAt,
        });
      };
      this._endSession = end;

      const tick = () => {
        // Python client's rule: idle for an interval -> ping; each timeout without any inbound frame is
        // a missed heartbeat (then ping again at once); maxMissedHeartbeats misses -> the link is dead.
        if (ended) return;
        const t = now();
        if (pingSentAt !== null) {
          if (lastRx > pingSentAt) {
            pingSentAt = null;
            missed = 0;
          } else if (t - pingSentAt >= o.heartbeatTimeout) {
            missed += 1;
            this.stats.heartbeatsMissed += 1;
            if (missed >= o.maxMissedHeartbeats) {
              end({ reason: `${missed} heartbeats unanswered: connection is dead` });
              return;
            }
            pingSentAt = null;
          }
        }
        if (pingSentAt === null && t - lastRx >= o.heartbeatInterval) {
          pingSentAt = t;
          this.stats.pingsSent += 1;
          try {
            ws.send(JSON.stringify({ type: "ping", id: `hb-${this.stats.pingsSent}` }));
          } catch {
            // a closing socket: its close event ends the session
          }
        }
        const next = pingSentAt !== null ? pingSentAt + o.heartbeatTimeout : lastRx + o.heartbeatInterval;
        heartbeat = setTimeout(tick, Math.max(10, (next - now()) * 1000));
      };

      ws.onopen = () => {
        clearTimeout(openTimer);
        openedAt = now();
        lastRx = openedAt;
        const offered = o.protocols;
        if (offered.length && !offered.includes(ws.protocol)) {
          end({ reason: `the hub selected no protocol of ${offered.join(", ")}` });
          return;
        }
        this._ws = ws;
        this._connNo += 1;
        this.stats.connections += 1;
        this.protocol = ws.protocol || PROTOCOL_V100;
        this._emit({ state: State.CONNECTED, protocol: this.protocol });
        tick();
        this._recover(ws).catch((err) => end({ reason: `session failed: ${err.message}` }));
      };
      ws.onmessage = (event) => {
        lastRx = now();
        let frame;
        try {
          frame = JSON.parse(event.data);
        } catch {
          console.warn(`tars-ws: ignoring a frame that is not JSON from ${this.url}`);
          return;
        }
        if (frame === null || typeof frame !== "object" || typeof frame.type !== "string") return;
        try {
          this._onFrame(ws, frame);
        } catch (err) {
          end({ reason: err.message });
        }
      };
      ws.onclose = (event) => {
        if (openedAt === null) {
          end({ reason: `handshake failed (hub unreachable, refused, or no protocol in common; code ${event.code})` });
          return;
        }
        const hinted = event.code === 1012 || event.code === 1013;
        const reason = event.code === 1006 ? "connection lost (no close frame)" : `closed by hub: ${event.code} ${event.reason}`.trim();
        end({
          reason,
          retryAfter: hinted ? retryAfterHint(event.reason) : null,
          restart: event.code === 1012,
        });
      };
      ws.onerror = () => {}; // a close event always follows, with more to say
    });
  }

  async _recover(ws) {
    if (this._subs.size) {
      this._emit({ state: State.RECOVERING });
      const v101 = this.protocol === PROTOCOL_V101;
      const channels = [...this._subs].map(([channel, sub]) =>
        v101 && sub.epoch ? { channel, epoch: sub.epoch, seq: sub.received } : { channel, epoch: null, seq: null },
      );
      const before = this.resyncs.length;
      await this._request({ type: "subscribe", channels }, ws);
      if (this._ws !== ws) return;
      this._live = true;
      this._emit({ state: State.RECOVERED, complete: this.resyncs.length === before });
    } else {
      this._live = true;
      this._emit({ state: State.RECOVERED, complete: true });
    }
    if (this._ready) {
      this._ready.resolve();
      this._ready = null;
    }
    this._flush(ws);
  }

  _request(frame, ws = this._ws) {
    return new Promise((resolve, reject) => {
      if (!ws) {
        reject(new ClientError("not connected"));
        return;
      }
      const id = ++this._reqIds;
      const timer = setTimeout(() => {
        this._requests.delete(id);
        reject(new ClientError(`hub did not answer ${frame.type} within ${this.options.requestTimeout} s`));
      }, this.options.requestTimeout * 1000);
      this._requests.set(id, { resolve, reject, timer });
      ws.send(JSON.stringify({ ...frame, id }));
    });
  }

  _flush(ws) {
    for (const pub of this._outbox) {
      if (pub.sentOn !== this._connNo) {
        pub.sentOn = this._connNo;
        ws.send(pub.text);
      }
    }
  }

  _onFrame(ws, frame) {
    switch (frame.type) {
      case "msg":
        this._onMsg(frame);
        break;
      case "subscribed":
        this._onSubscribed(frame); // before the replayed msg frames behind it
        this._resolve(frame);
        break;
      case "ack":
        this._onAck(frame);
        break;
      case "unsubscribed":
        this._resolve(frame);
        break;
      case "error":
        console.warn(`tars-ws: hub error ${frame.code}: ${frame.message}`);
        if (!this._resolve(frame)) this._failPublication(frame);
        break;
      default: // welcome, pong: liveness only
    }
  }

  _resolve(frame) {
    const req = this._requests.get(frame.id);
    if (!req) return false;
    this._requests.delete(frame.id);
    clearTimeout(req.timer);
    if (frame.type === "error") req.reject(new HubRefused(`hub refused: ${frame.code}: ${frame.message}`));
    else req.resolve(frame);
    return true;
  }

  _onSubscribed(frame) {
    const v101 = this.protocol === PROTOCOL_V101;
    for (const entry of frame.channels || []) {
      const sub = this._subs.get(entry.channel);
      if (!sub) continue;
      let epoch = null;
      let first = 0;
      let reason = null;
      if (!v101) {
        reason = sub.confirmed ? "no_replay" : null;
      } else {
        epoch = entry.epoch;
        first = Number(entry.first);
        if (sub.epoch === null) reason = sub.confirmed ? "no_replay" : null;
        else if (!entry.recovered) reason = entry.reason || "unknown";
      }
      if (reason !== null) {
        const resync = new ResyncRequired(entry.channel, sub.epoch, sub.received, epoch, first, reason);
        this.resyncs.push(resync);
        console.warn(`tars-ws: resync required, missing ${resync.missing}`);
        this._emit({ state: State.RESYNC_REQUIRED, resync });
        this.dispatchEvent(new CustomEvent("resync", { detail: resync }));
        if (sub.onResync) {
          try {
            sub.onResync(resync);
          } catch (err) {
            console.error("tars-ws: onResync failed", err);
          }
        }
      }
      sub.epoch = epoch;
      sub.received = Math.max(0, first - 1);
      sub.confirmed = true;
    }
  }

  _onMsg(frame) {
    const sub = this._subs.get(frame.channel);
    if (!sub) return; // unsubscribed meanwhile
    if (this.protocol !== PROTOCOL_V101) {
      this._deliver(sub, { channel: frame.channel, seq: null, epoch: null, data: frame.data });
      return;
    }
    if (frame.epoch !== sub.epoch) return; // from before a resync
    const seq = frame.seq;
    if (seq <= sub.received) {
      this.stats.duplicatesDropped += 1;
      return;
    }
    if (seq !== sub.received + 1) {
      this.stats.gapsDetected += 1; // a correct hub never does this: reconnect and replay
      throw new Error(`gap on ${frame.channel}: expected seq ${sub.received + 1}, got ${seq}`);
    }
    sub.received = seq;
    this._deliver(sub, { channel: frame.channel, seq, epoch: sub.epoch, data: frame.data });
  }

  _onAck(frame) {
    const key = frame.key ?? frame.id; // a v1.0.0 ack echoes only the id (= the key)
    const i = this._outbox.findIndex((pub) => pub.key === key);
    if (i < 0) return;
    const [pub] = this._outbox.splice(i, 1);
    this._outboxBytes -= pub.size;
    pub.resolve(frame.seq ?? null);
  }

  _failPublication(frame) {
    const i = this._outbox.findIndex((pub) => pub.key === frame.id);
    if (i < 0) return;
    const [pub] = this._outbox.splice(i, 1);
    this._outboxBytes -= pub.size;
    pub.reject(new HubRefused(`hub refused publish: ${frame.message}`));
  }

  // Handlers run one message at a time, outside the socket's event handler.
  _deliver(sub, msg) {
    this._inbox.push([sub, Object.freeze(msg)]);
    if (!this._draining) this._drain();
  }

  async _drain() {
    this._draining = true;
    try {
      while (this._inbox.length) {
        const [sub, msg] = this._inbox.shift();
        if (this._subs.get(msg.channel) !== sub) continue;
        try {
          const result = sub.handler(msg);
          if (result && typeof result.then === "function") await result;
        } catch (err) {
          console.error(`tars-ws: handler for ${msg.channel} failed on seq ${msg.seq}`, err);
        }
        sub.delivered = [msg.epoch, msg.seq];
      }
    } finally {
      this._draining = false;
    }
  }

  // A "state" CustomEvent; detail: {state, attempt, reason, delay, complete, resync, protocol}.
  _emit(detail) {
    this.state = detail.state;
    this.dispatchEvent(new CustomEvent("state", { detail: Object.freeze({ attempt: 0, ...detail }) }));
  }
}

export default TarsWebSocket;
