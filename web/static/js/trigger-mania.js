// The trigger-mania page (/psychodelic-trigger-mania; web/templates/trigger-mania.html;
// docs/ui.md, "Trigger mania"): full-screen spirals (spirals.js), the trigger panel
// (triggers-panel.js: select, play and loop triggers), and a .txt file read aloud
// sentence by sentence (``voice.read``), the sentence being spoken shown over the
// spirals, with a stop (``voice.stop``). Its own WebSocket (connection.js).
//
// The reading is the playback queue's "speech" source (playback.js): its sentences
// play one after another, trigger cues between two of them, never over one. Only the
// reading this page started is spoken here (the chat page ignores readings).
// Everything the server sends is shown with textContent.

import { Connection } from "./connection.js";
import { playback, sameSitePath } from "./playback.js";
import { Spirals, mergeSettings } from "./spirals.js";
import { TriggersPanel } from "./triggers-panel.js";

const $ = (id) => document.getElementById(id);
const root = $("mania");
const DEFAULT_MAX_BYTES = 30720;
const STORE_VOLUME = "bambid.voice.volume"; // the voice volume chosen on the chat page

/** Why a sentence was not spoken (voice.error codes), in plain words. */
const ERRORS = {
  unavailable: "the voice service is not answering",
  timeout: "the voice service took too long",
  bad_request: "the voice service refused it",
  too_long: "the sentence was too long",
  bad_response: "the voice service sent something that is not audio",
  internal: "something went wrong on the server",
};

function readStore(key) {
  try {
    return window.localStorage.getItem(key);
  } catch (err) {
    return null;
  }
}

/** "64 KB", "1.5 KB", "300 bytes". */
export function sizeLabel(bytes) {
  if (bytes < 1024) return bytes + (bytes === 1 ? " byte" : " bytes");
  const kb = bytes / 1024;
  return (kb >= 10 || Number.isInteger(kb) ? Math.round(kb) : kb.toFixed(1)) + " KB";
}

/** Whether ``file`` may be read aloud: a .txt (or text/plain) file of at most ``max`` bytes. */
export function checkFile(file, max) {
  if (!file) return "Choose a text file first.";
  const name = typeof file.name === "string" ? file.name : "";
  const textual = /\.txt$/i.test(name) || file.type === "text/plain";
  if (!textual) return "Only plain text files (.txt) can be read aloud; “" + name + "” is not one.";
  if (file.size > max) {
    return "“" + name + "” is " + sizeLabel(file.size) + ": the limit is " + sizeLabel(max) + ".";
  }
  if (file.size === 0) return "“" + name + "” is empty.";
  return null;
}

// --- the reader --------------------------------------------------------------------------------

class Reader {
  constructor(connection, maxBytes) {
    this.connection = connection;
    this.maxBytes = maxBytes;
    this.ui = {
      form: $("mania-reader-form"),
      signin: $("mania-signin"),
      file: $("mania-file"),
      info: $("mania-file-info"),
      limit: $("mania-limit"),
      read: $("mania-read"),
      stop: $("mania-stop"),
      status: $("mania-status"),
      caption: $("mania-caption"),
      captionText: $("mania-caption-text"),
      captionMeta: $("mania-caption-meta"),
    };
    this.user = null;
    this.connected = false;
    this.text = null; // the chosen file's text, checked
    this.fileName = "";
    this.requests = new Map(); // id -> {kind}
    this.nextId = 1;
    this.pendingRead = null; // the id of a voice.read awaiting its ack
    this.replyId = null; // the reading being spoken
    this.dropped = new Set(); // readings stopped here: their late clips are ignored
    this.queue = []; // [{index, url, text}]
    this.lastIndex = -1;
    this.current = null;
    this.done = false; // voice.done came for the reading
    this.stopped = false;
    this.played = 0;
    this.skipped = 0;
    this.ui.limit.textContent = sizeLabel(maxBytes);
    playback.addSource(this, "speech");
    playback.addEventListener("change", () => this.render());
    const volume = parseFloat(readStore(STORE_VOLUME));
    if (Number.isFinite(volume) && volume >= 0 && volume <= 1) playback.setVolume("speech", volume);
    this.wire();
    this.render();
  }

  // --- connection listener ---------------------------------------------------------------------

  state(state) {
    this.connected = state === "connected";
    this.render();
  }

  closed() {
    this.requests.clear();
    if (this.pendingRead) {
      this.pendingRead = null;
      this.say("Not started: the connection was lost.", "error");
    }
    this.render();
  }

  message(m) {
    switch (m.type) {
      case "welcome":
        this.user = m.user && typeof m.user === "object" ? m.user : null;
        this.connected = true;
        this.render();
        return false;
      case "voice.audio":
        this.onAudio(m);
        return true;
      case "voice.error":
        this.onSentenceError(m);
        return true;
      case "voice.done":
        if (m.reply_id === this.replyId) {
          this.done = true;
          this.render();
        }
        return true;
      case "ack":
      case "error":
        if (!this.requests.has(m.id)) return false;
        if (m.type === "ack") this.onAck(m);
        else this.onError(m);
        return true;
      default:
        return m.type.startsWith("voice.");
    }
  }

  request(kind, message) {
    const id = "mania-" + this.nextId++;
    if (!this.connection.send({ ...message, id })) return null;
    this.requests.set(id, { kind });
    return id;
  }

  /** Is ``replyId`` the reading of this page (adopting it while our voice.read awaits its ack)? */
  ours(replyId) {
    if (typeof replyId !== "string" || this.dropped.has(replyId)) return false;
    if (replyId === this.replyId) return true;
    if (this.pendingRead && !this.replyId && replyId.startsWith("read-")) {
      this.replyId = replyId;
      return true;
    }
    return false;
  }

  onAck(m) {
    const req = this.requests.get(m.id);
    this.requests.delete(m.id);
    if (req.kind !== "read") return;
    this.pendingRead = null;
    if (typeof m.reply_id === "string") {
      if (this.replyId && this.replyId !== m.reply_id) this.dropped.add(this.replyId);
      this.replyId = m.reply_id;
    }
    this.say("Reading “" + this.fileName + "”.", "info");
    this.render();
  }

  onError(m) {
    const req = this.requests.get(m.id);
    this.requests.delete(m.id);
    if (req.kind !== "read") return;
    this.pendingRead = null;
    const says = typeof m.message === "string" && m.message ? m.message : "";
    let text;
    switch (m.code) {
      case "unauthenticated":
        text = "Sign in or continue as guest to have a text read aloud.";
        break;
      case "rate_limited":
        text = "Too many readings at once: try again in a moment.";
        break;
      case "unavailable":
        text = "The voice service is not available right now.";
        break;
      case "bad_request":
        text = "The server refused the text" + (says ? ": " + says : ".");
        break;
      default:
        text = "The text could not be read" + (says ? ": " + says : ".");
    }
    this.say(text, "error");
    this.render();
  }

  onAudio(m) {
    if (!this.ours(m.reply_id) || !Number.isInteger(m.index) || m.index <= this.lastIndex) return;
    const url = sameSitePath(m.url);
    if (!url) return;
    this.lastIndex = m.index;
    this.queue.push({ index: m.index, url, text: typeof m.text === "string" ? m.text : "" });
    playback.pump();
    this.render();
  }

  onSentenceError(m) {
    if (!this.ours(m.reply_id)) return;
    if (Number.isInteger(m.index) && m.index > this.lastIndex) this.lastIndex = m.index;
    const code = typeof m.code === "string" ? m.code : "";
    const why = Object.prototype.hasOwnProperty.call(ERRORS, code) ? ERRORS[code] : "it failed";
    this.skipped += 1;
    this.say("A sentence was skipped: " + why + ".", "info");
    this.render();
  }

  // --- the playback queue's "speech" source ----------------------------------------------------

  next() {
    if (this.current || !this.queue.length) return null;
    const clip = this.queue.shift();
    const replyId = this.replyId;
    return {
      kind: "speech",
      channel: "speech",
      url: clip.url,
      key: replyId + "/" + clip.index,
      text: clip.text,
      loaded: () => {
        this.current = { ...clip, replyId };
        this.render();
      },
      finished: (_, reason) => {
        this.current = null;
        if (reason === "ended") this.played += 1;
        if (reason === "failed") {
          this.skipped += 1;
          this.say("A sentence could not be played and was skipped.", "info");
        }
        this.render();
      },
    };
  }

  // --- the person's actions --------------------------------------------------------------------

  async choose(file) {
    this.text = null;
    this.fileName = "";
    this.ui.info.textContent = "";
    const problem = checkFile(file, this.maxBytes);
    if (problem) {
      this.ui.file.value = "";
      this.say(problem, "error");
      this.render();
      return;
    }
    let text;
    try {
      text = await file.text();
    } catch (err) {
      this.ui.file.value = "";
      this.say("“" + file.name + "” could not be read.", "error");
      this.render();
      return;
    }
    text = text.replace(/^\uFEFF/, "");
    const bytes = new TextEncoder().encode(text).length;
    if (text.includes("\u0000")) {
      this.ui.file.value = "";
      this.say("“" + file.name + "” does not look like a text file.", "error");
    } else if (!text.trim()) {
      this.ui.file.value = "";
      this.say("“" + file.name + "” has no words to read.", "error");
    } else if (bytes > this.maxBytes) {
      this.ui.file.value = "";
      this.say("“" + file.name + "” is " + sizeLabel(bytes) + " of text: the limit is " +
        sizeLabel(this.maxBytes) + ".", "error");
    } else {
      this.text = text;
      this.fileName = file.name;
      const words = text.trim().split(/\s+/).length;
      this.ui.info.textContent = "“" + file.name + "” · " + sizeLabel(file.size) + " · " +
        words + (words === 1 ? " word" : " words");
      this.say("", "info");
    }
    this.render();
  }

  read() {
    if (!this.text) return;
    this.silence(false);
    const id = this.request("read", { type: "voice.read", text: this.text });
    if (!id) {
      this.say("Not connected: try again when the page has reconnected.", "error");
      return;
    }
    this.pendingRead = id;
    this.replyId = null;
    this.lastIndex = -1;
    this.done = false;
    this.stopped = false;
    this.say("Starting…", "info");
    this.render();
  }

  stop() {
    const replyId = this.replyId;
    this.silence(true);
    if (replyId) this.request("stop", { type: "voice.stop", reply_id: replyId });
    this.say("Reading stopped.", "info");
    this.render();
  }

  /** Ends the reading here: its waiting sentences go, the one sounding stops. */
  silence(stopped) {
    if (this.replyId) this.dropped.add(this.replyId);
    this.replyId = null;
    this.pendingRead = null;
    this.queue = [];
    this.stopped = stopped;
    const current = playback.current;
    if (this.current && current && current.kind === "speech") playback.stop(current);
    this.current = null;
  }

  // --- what the page shows ----------------------------------------------------------------------

  get reading() {
    return Boolean(this.pendingRead || this.current || this.queue.length ||
      (this.replyId && !this.done));
  }

  render() {
    const ui = this.ui;
    const signedIn = this.user !== null;
    ui.form.hidden = !signedIn;
    ui.signin.hidden = signedIn;
    ui.read.disabled = !this.text || !this.connected;
    ui.stop.disabled = !this.reading;
    const caption = ui.caption;
    let state = "idle";
    if (this.current && playback.blocked) state = "blocked";
    else if (this.current && playback.paused) state = "paused";
    else if (this.current) state = "reading";
    else if (this.reading) state = "waiting";
    else if (this.replyId && this.done) state = "done";
    caption.dataset.state = state;
    caption.dataset.played = String(this.played);
    caption.dataset.queued = String(this.queue.length);
    if (this.replyId) caption.dataset.replyId = this.replyId;
    else delete caption.dataset.replyId;
    ui.captionMeta.textContent = "";
    if (this.current) {
      caption.dataset.index = String(this.current.index);
      ui.captionText.textContent = this.current.text;
      if (state === "blocked") ui.captionMeta.textContent = "Tap anywhere to allow sound.";
    } else {
      delete caption.dataset.index;
      let hint = "Choose a text file to have it read aloud, or play your triggers.";
      if (state === "waiting") hint = "…";
      else if (state === "done") hint = "Finished reading “" + this.fileName + "”.";
      else if (this.stopped) hint = "Reading stopped.";
      else if (this.text) hint = "Press Read aloud to hear “" + this.fileName + "”.";
      ui.captionText.textContent = hint;
    }
  }

  say(text, tone) {
    this.ui.status.textContent = text;
    this.ui.status.dataset.tone = tone;
  }

  wire() {
    const ui = this.ui;
    ui.file.addEventListener("change", () => {
      const file = ui.file.files && ui.file.files[0];
      this.choose(file || null);
    });
    ui.read.addEventListener("click", () => this.read());
    ui.stop.addEventListener("click", () => this.stop());
  }
}

// --- the spirals -------------------------------------------------------------------------------

/** Follows the stored spiral settings; turns faster while a trigger cue sounds. */
class Stage {
  constructor(canvas) {
    this.spirals = new Spirals(canvas, { enabled: true });
    this.base = this.spirals.settings.rotation;
    this.spirals.addEventListener("statechange", (e) => {
      canvas.dataset.animating = e.detail.animating ? "true" : "false";
    });
    this.spirals.start();
    canvas.dataset.animating = this.spirals.animating ? "true" : "false";
    playback.addEventListener("start", (e) => {
      if (e.detail.kind !== "speech") this.spirals.update({ rotation: Math.min(12, this.base * 2.5) });
    });
    playback.addEventListener("end", (e) => {
      if (e.detail.kind !== "speech") this.spirals.update({ rotation: this.base });
    });
  }

  message(m) {
    if (m.type !== "settings.state") return false;
    let values = null;
    if (m.sections && typeof m.sections === "object") values = m.sections.spirals;
    else if (m.section === "spirals") values = m.values;
    if (values && typeof values === "object") {
      // This page always shows them: "enabled" is the chat page's switch.
      const settings = mergeSettings(this.spirals.settings, { ...values, enabled: true });
      this.base = settings.rotation;
      this.spirals.update(settings);
    }
    return false;
  }
}

// --- the page ------------------------------------------------------------------------------------

function wireControls() {
  const toggle = $("mania-toggle");
  const panel = $("mania-panel");
  toggle.addEventListener("click", () => {
    const open = panel.hidden;
    panel.hidden = !open;
    toggle.setAttribute("aria-expanded", open ? "true" : "false");
    toggle.textContent = open ? "Hide controls" : "Show controls";
  });
  const full = $("mania-fullscreen");
  if (document.fullscreenEnabled) {
    full.hidden = false;
    full.addEventListener("click", () => {
      if (document.fullscreenElement) document.exitFullscreen().catch(() => {});
      else document.documentElement.requestFullscreen().catch(() => {});
    });
    document.addEventListener("fullscreenchange", () => {
      full.textContent = document.fullscreenElement ? "Leave full screen" : "Full screen";
    });
  }
}

if (root) {
  const maxBytes = parseInt(root.dataset.readMax, 10);
  const dot = $("mania-dot");
  const label = $("mania-connection");
  const connection = new Connection({
    state(state, text) {
      dot.className = "connection-dot connection-dot--" + state;
      label.dataset.state = state;
      label.textContent = text;
    },
    hello: () => ({}),
    message() {},
    closed() {},
  });
  const reader = new Reader(connection, Number.isInteger(maxBytes) && maxBytes > 0 ? maxBytes : DEFAULT_MAX_BYTES);
  connection.addListener(reader);
  connection.addListener(new TriggersPanel($("triggers-panel"), connection));
  connection.addListener(new Stage($("mania-spirals")));
  wireControls();
  connection.start();
}
