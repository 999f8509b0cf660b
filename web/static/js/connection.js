// The bambid WebSocket: says hello (with the rooms to resume), hands every
// message to the page, shows the connection state, and reconnects with capped
// exponential backoff and jitter. See docs/protocol.md.

export const PROTOCOL = 1;

const MAX_DELAY_MS = 30000;
const BASE_DELAY_MS = 500;

function socketUrl() {
  const scheme = window.location.protocol === "https:" ? "wss:" : "ws:";
  return scheme + "//" + window.location.host + "/ws";
}

/** Why a close happened, and whether and how soon to try again. */
export function closePolicy(code, reason) {
  const text = typeof reason === "string" ? reason : "";
  switch (code) {
    case 1001:
      return { why: "server restarting", retry: true, minDelay: 0 };
    case 1008:
      if (/^banned\b/i.test(text)) {
        const reason = reasonOf(text, "banned");
        return { why: "you are banned" + (reason ? ": " + reason : ""), retry: false, minDelay: 0 };
      }
      if (/^kicked\b/i.test(text)) {
        const reason = reasonOf(text, "kicked");
        return {
          why: "you were removed from the chat" + (reason ? " (" + reason + ")" : ""),
          retry: true,
          minDelay: 15000,
        };
      }
      return { why: "closed by the server: " + (text || "policy"), retry: true, minDelay: 5000 };
    case 1009:
      return { why: "a message was too big", retry: true, minDelay: 0 };
    case 1011:
      return { why: "server error", retry: true, minDelay: 2000 };
    default:
      return { why: "connection lost", retry: true, minDelay: 0 };
  }
}

function reasonOf(text, word) {
  return text.slice(word.length).replace(/^\s*:\s*/, "").trim();
}

/**
 * ``handlers``: ``state(state, label, detail)`` for the connection badge,
 * ``hello()`` returning extra hello fields (``resume``), ``message(msg)`` for
 * every parsed server message, ``closed(policy)`` after each close.
 *
 * Other parts of the page (the companion panel) share the socket through
 * ``addListener``.
 */
export class Connection {
  constructor(handlers) {
    this.handlers = handlers;
    this.socket = null;
    this.ready = false;
    this.attempt = 0;
    this.timer = null;
    this.stopped = false;
    this.problem = "";
    this.helloCount = 0;
    this.listeners = [];
  }

  /**
   * Another part of the page that uses this socket: ``listener.message(msg)``
   * sees every server message before ``handlers.message`` and returns true for
   * the ones it handled alone (its own requests' answers); ``state(state)`` and
   * ``closed(policy)`` follow the connection. Each is optional.
   */
  addListener(listener) {
    this.listeners.push(listener);
  }

  report(state, label, detail) {
    this.handlers.state(state, label, detail);
    for (const listener of this.listeners) if (listener.state) listener.state(state, label, detail);
  }

  dispatch(message) {
    for (const listener of this.listeners) {
      if (listener.message && listener.message(message) === true) return;
    }
    this.handlers.message(message);
  }

  start() {
    window.addEventListener("online", () => this.retryNow());
    this.connect();
  }

  /** Stop for good (banned): no more reconnects. */
  stop(why) {
    this.stopped = true;
    window.clearTimeout(this.timer);
    this.problem = why;
    if (this.socket) this.socket.close(1000, "bye");
    this.report("disconnected", "disconnected", why);
  }

  retryNow() {
    if (this.stopped || this.socket) return;
    window.clearTimeout(this.timer);
    this.connect();
  }

  /** Sends one request; false when not connected (the caller shows it). */
  send(message) {
    if (!this.socket || !this.ready) return false;
    this.socket.send(JSON.stringify(message));
    return true;
  }

  connect() {
    this.timer = null;
    if (this.stopped) return;
    this.report(
      "connecting",
      "connecting…",
      this.problem ? this.problem + "; reconnecting…" : "",
    );
    let socket;
    try {
      socket = new WebSocket(socketUrl());
    } catch (err) {
      this.scheduleRetry(closePolicy(0, ""));
      return;
    }
    this.socket = socket;
    this.ready = false;
    let opened = false;
    socket.addEventListener("open", () => {
      opened = true;
      this.helloCount += 1;
      const hello = { type: "hello", protocol: PROTOCOL, id: "hello-" + this.helloCount };
      Object.assign(hello, this.handlers.hello());
      socket.send(JSON.stringify(hello));
    });
    socket.addEventListener("message", (event) => {
      if (socket !== this.socket) return;
      let message;
      try {
        message = JSON.parse(event.data);
      } catch (err) {
        return;
      }
      if (!message || typeof message !== "object" || typeof message.type !== "string") return;
      if (message.type === "welcome") {
        this.ready = true;
        this.attempt = 0;
        this.problem = "";
        this.report(
          "connected",
          "connected",
          "bambid " + message.version + " · protocol " + message.protocol,
        );
      }
      this.dispatch(message);
    });
    socket.addEventListener("close", (event) => {
      if (socket !== this.socket) return;
      this.socket = null;
      this.ready = false;
      let policy = closePolicy(event.code, event.reason);
      if (!opened && this.problem) {
        // The server is still unreachable: keep saying why we lost it.
        policy = { why: this.problem, retry: true, minDelay: 0 };
      }
      this.handlers.closed(policy);
      for (const listener of this.listeners) if (listener.closed) listener.closed(policy);
      if (this.stopped) return;
      if (!policy.retry) {
        this.stop(policy.why);
        return;
      }
      this.scheduleRetry(policy);
    });
  }

  scheduleRetry(policy) {
    const backoff = Math.min(MAX_DELAY_MS, BASE_DELAY_MS * Math.pow(2, this.attempt));
    const delay = Math.max(policy.minDelay, backoff * (0.5 + Math.random() / 2));
    this.attempt += 1;
    this.problem = policy.why;
    this.report(
      "disconnected",
      "disconnected",
      policy.why + "; retrying in " + Math.max(1, Math.round(delay / 1000)) + " s",
    );
    this.timer = window.setTimeout(() => this.connect(), delay);
  }
}
