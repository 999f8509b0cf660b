// Opens the bambid WebSocket, says hello and shows the connection state.
// Reconnects with capped exponential backoff and jitter.
"use strict";

(function () {
  const stateEl = document.getElementById("connection-state");
  const detailEl = document.getElementById("connection-detail");
  const dotEl = document.getElementById("connection-dot");
  const PROTOCOL = 1;
  let attempt = 0;

  function show(state, label, detail) {
    stateEl.dataset.state = state;
    stateEl.textContent = label;
    detailEl.textContent = detail || "";
    dotEl.className = "connection-dot connection-dot--" + state;
  }

  function socketUrl() {
    const scheme = window.location.protocol === "https:" ? "wss:" : "ws:";
    return scheme + "//" + window.location.host + "/ws";
  }

  function connect() {
    show("connecting", "connecting…");
    const socket = new WebSocket(socketUrl());
    socket.addEventListener("open", function () {
      socket.send(JSON.stringify({ type: "hello", protocol: PROTOCOL, id: "hello-1" }));
    });
    socket.addEventListener("message", function (event) {
      let message;
      try {
        message = JSON.parse(event.data);
      } catch (err) {
        return;
      }
      if (message.type === "welcome") {
        attempt = 0;
        show("connected", "connected", "bambid " + message.version + " · protocol " + message.protocol);
      } else if (message.type === "error") {
        detailEl.textContent = "server said: " + message.message;
      }
    });
    socket.addEventListener("close", function (event) {
      const delay = Math.min(30000, 500 * Math.pow(2, attempt)) * (0.5 + Math.random() / 2);
      attempt += 1;
      const why = event.code === 1001 ? "server restarting" : "connection lost";
      show("disconnected", "disconnected", why + "; retrying in " + Math.round(delay / 1000) + " s");
      window.setTimeout(connect, delay);
    });
  }

  connect();
})();
