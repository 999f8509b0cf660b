// The /health dashboard: asks /health/api every 10 seconds and re-renders the rows the
// server rendered first (web/templates/health.html: keep the two in step). A 503 is still
// a report (storage down) and is shown; a failed request keeps the last rows and says so.
// Polling pauses while the tab is hidden and resumes, at once, when it is shown again.
// Everything from the report goes in as textContent.

import { element as el } from "./chat-render.js";

const INTERVAL_MS = 10_000;

const root = document.getElementById("health");
const ui = {
  status: document.getElementById("health-status"),
  problem: document.getElementById("health-problem"),
  rows: document.getElementById("health-rows"),
  updated: document.getElementById("health-updated"),
};

function duration(seconds) {
  const s = Math.max(0, Math.floor(Number(seconds) || 0));
  if (s >= 86400) return `${Math.floor(s / 86400)} d ${Math.floor((s % 86400) / 3600)} h`;
  if (s >= 3600) return `${Math.floor(s / 3600)} h ${Math.floor((s % 3600) / 60)} min`;
  if (s >= 60) return `${Math.floor(s / 60)} min ${s % 60} s`;
  return `${s} s`;
}

function mib(bytes, digits = 1) {
  return `${(Number(bytes || 0) / 1048576).toFixed(digits)} MiB`;
}

function good(text) {
  return el("span", "text-success", text);
}

function bad(text) {
  return el("span", "text-danger", text);
}

function pending(text) {
  return el("span", "text-body-secondary", text);
}

/** A row: a header cell and a data cell holding ``parts`` (strings or nodes). */
function row(name, label, ...parts) {
  const tr = el("tr");
  tr.dataset.row = name;
  const th = el("th", null, label);
  th.scope = "row";
  const td = el("td");
  for (const part of parts) {
    if (part === null || part === undefined || part === "") continue;
    td.append(part);
  }
  tr.append(th, td);
  return { tr, td };
}

function storageRow(storage) {
  const state = storage.ok ? good("ok") : bad(`down: ${storage.error ?? "unknown error"}`);
  return row("storage", "Storage", `${storage.backend} — `, state, ` (${storage.latency_ms} ms)`).tr;
}

function backendRows(ai) {
  const backends = Array.isArray(ai.backends) ? ai.backends : [];
  if (!backends.length) {
    const { tr, td } = row("ai-backend", "AI backend", "none configured");
    td.className = "text-body-secondary";
    return [tr];
  }
  return backends.map((backend) => {
    let state;
    if (backend.reachable && !backend.error) state = [good("ok"), `, ${backend.model}`];
    else if (backend.reachable === null || backend.reachable === undefined)
      state = [pending("not checked yet")];
    else state = [bad(backend.error || "unreachable")];
    const latency =
      typeof backend.latency_ms === "number" ? ` (${backend.latency_ms} ms)` : "";
    return row("ai-backend", "AI backend", `${backend.url} — `, ...state, latency).tr;
  });
}

function voiceRows(voice) {
  let state;
  if (voice.reachable) {
    state = [good("ok"), typeof voice.voices === "number" ? `, ${voice.voices} voices` : ""];
  } else if (voice.reachable === null || voice.reachable === undefined) {
    state = [pending("not checked yet")];
  } else {
    state = [bad(voice.error || "unreachable")];
  }
  const fallbackBadge = voice.speaking_with_fallback
    ? el("span", "badge text-bg-warning ms-1", "Kokoro down: espeak-ng speaks")
    : null;
  const rows = [
    row(
      "voice",
      "Voice",
      `${voice.backend} (${voice.format}, voice ${voice.default_voice}) — `,
      ...state,
      fallbackBadge,
    ).tr,
  ];
  if (voice.fallback) {
    const fb = voice.fallback;
    const fbState = fb.reachable ? good("ok") : bad(fb.error || "unreachable");
    rows.push(row("voice-fallback", "Voice fallback", `${fb.backend} — `, fbState).tr);
  }
  const cache = voice.cache || {};
  rows.push(
    row(
      "audio-cache",
      "Audio cache",
      `${cache.entries} clips, ${mib(cache.bytes)} of ${mib(cache.max_bytes, 0)}; ` +
        `${cache.hits} hits, ${cache.misses} misses, ${cache.evictions} evictions`,
    ).tr,
  );
  return rows;
}

function render(report) {
  const ok = report.status === "ok";
  ui.status.className = `badge ${ok ? "text-bg-success" : "text-bg-danger"}`;
  ui.status.textContent = String(report.status);
  const rows = [
    row("version", "Version", `${report.version} (protocol ${report.protocol})`).tr,
    row("uptime", "Uptime", duration(report.uptime_s)).tr,
    storageRow(report.storage || {}),
  ];
  if (report.ai) {
    rows.push(...backendRows(report.ai));
    const queue = report.ai.queue || {};
    rows.push(
      row("ai-queue", "AI queue", `${queue.running} generating, ${queue.waiting} waiting`).tr,
    );
  }
  if (report.voice) rows.push(...voiceRows(report.voice));
  const connections = row("connections", "WebSocket connections", String(report.connections));
  connections.td.id = "health-connections";
  rows.push(connections.tr);
  const mode = report.fanout ? String(report.fanout.mode) : "local";
  rows.push(row("fanout", "Fan-out", mode === "local" ? "local (this process only)" : mode).tr);
  rows.push(row("memory", "Memory (RSS)", mib(report.memory_rss_bytes)).tr);
  ui.rows.replaceChildren(...rows);
}

function showProblem(text) {
  ui.problem.textContent = text;
  ui.problem.classList.toggle("d-none", !text);
}

let timer = 0;
let busy = false;

async function refresh() {
  if (busy) return;
  busy = true;
  clearTimeout(timer);
  try {
    const response = await fetch(root.dataset.api, {
      cache: "no-store",
      headers: { Accept: "application/json" },
    });
    const report = await response.json();
    if (typeof report !== "object" || report === null || !("status" in report)) {
      throw new Error(`unexpected answer (HTTP ${response.status})`);
    }
    render(report);
    showProblem("");
    ui.updated.textContent = `Updated ${new Date().toLocaleTimeString()}.`;
    ui.updated.dataset.updated = String(Date.now());
  } catch (error) {
    showProblem(`Cannot reach bambid (${error.message}); the values below are from before.`);
  } finally {
    busy = false;
    schedule();
  }
}

function schedule() {
  clearTimeout(timer);
  if (!document.hidden) timer = setTimeout(refresh, INTERVAL_MS);
}

document.addEventListener("visibilitychange", () => {
  if (document.hidden) clearTimeout(timer);
  else refresh();
});

if (root && ui.rows) schedule();
