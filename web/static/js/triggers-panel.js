// The trigger panel (web/templates/_triggers.html; docs/ui.md, "Triggers"), against
// "Triggers and effects" in docs/protocol.md and "Triggers" in docs/api.md.
//
// A connection listener: ``message(m)`` returns true only for the frames it
// consumes (``triggers.state`` and the answers to its own requests, ids "trig-N");
// everything else it reads (welcome, xp.update, level.up, trigger.fired,
// effect.flash, triggers.catalog, settings.state) goes on to the other listeners.
//
// - The toggle grid comes from GET /api/triggers, grouped by category, each with
//   its description; Save sends ``triggers.set`` and every tab follows the
//   ``triggers.state`` the server sends back.
// - Play selected / Random playlist feed the page's playback queue (playback.js)
//   as its "playlist" lane: a cue at a time, names flashed while they sound, a gap
//   between cues set by the speed (1-10, like the original); the continuous loop
//   starts a new pass (reshuffled when random) whenever one ends.
// - ``trigger.fired`` queues the trigger's cue in the queue's first lane (it plays
//   as soon as the clip being played ends, before the next sentence);
//   ``effect.flash`` flashes the name (unless its cue is about to sound: the cue
//   flashes it while it plays).
// - The loop, speed, cue volume and background loop (level 6, ``audio_playlist``)
//   are stored with ``settings.set {section: "audio"}``; ``settings.state`` from any
//   tab applies them.
// Everything the server sends is shown with textContent.

import { element as el } from "./chat-render.js";
import { levelTable } from "./levels.js";
import { BACKGROUNDS, background, flash, playback, sameSitePath } from "./playback.js";

const AUDIO_DEFAULTS = { volume: 0.8, speed: 5, loop: false, background: "", background_volume: 0.3 };
const NOTICE_MS = 8000;

/** The original's speed slider: 5 is 1.0; slower below (up to 3×), faster above (down to 0.5×). */
export function gapFactor(speed) {
  const v = Math.min(10, Math.max(1, Number(speed) || 5));
  return v <= 5 ? 1 + 0.5 * (5 - v) : 1 - 0.1 * (v - 5);
}

function shuffled(list) {
  const copy = [...list];
  for (let i = copy.length - 1; i > 0; i--) {
    const j = Math.floor(Math.random() * (i + 1));
    [copy[i], copy[j]] = [copy[j], copy[i]];
  }
  return copy;
}

function str(value) {
  return typeof value === "string" ? value : "";
}

function titleCase(text) {
  return text ? text.charAt(0).toUpperCase() + text.slice(1).replace(/[-_]/g, " ") : "Other";
}

function sameSet(a, b) {
  if (a.size !== b.size) return false;
  for (const item of a) if (!b.has(item)) return false;
  return true;
}

/** The catalog answer of /api/triggers, checked: {version, categories, triggers, byKey}. */
function readCatalog(found) {
  if (!found || typeof found !== "object" || !Array.isArray(found.triggers)) return null;
  const triggers = [];
  const byKey = new Map();
  for (const t of found.triggers) {
    if (!t || typeof t !== "object" || !str(t.key) || byKey.has(t.key)) continue;
    const trigger = {
      key: t.key,
      name: str(t.name) || t.key,
      description: str(t.description),
      category: str(t.category),
      url: sameSitePath(t.audio_url),
    };
    triggers.push(trigger);
    byKey.set(trigger.key, trigger);
  }
  const categories = [];
  for (const c of Array.isArray(found.categories) ? found.categories : []) {
    if (typeof c === "string" && !categories.includes(c)) categories.push(c);
  }
  for (const t of triggers) if (!categories.includes(t.category)) categories.push(t.category);
  return { version: Number.isInteger(found.version) ? found.version : 0, categories, triggers, byKey };
}

// --- the playlist: the queue's "playlist" lane ------------------------------------------------

/**
 * Play selected / Random playlist. ``next()`` (the playback source) gives one
 * cue at a time; after each one a gap (1-3 s, 0.1-0.3 s in a continuous loop,
 * times the speed factor) before the next. ``clipOf(key)`` makes the clip,
 * ``selection()`` the keys of a new pass, ``changed()`` is told of every change.
 */
class Playlist {
  constructor({ clipOf, selection, changed }) {
    this.clipOf = clipOf;
    this.selection = selection;
    this.changed = changed;
    this.mode = null; // "ordered" | "random" while running
    this.keys = []; // what is left of this pass
    this.loop = false;
    this.factor = 1;
    this.busy = false; // a cue of the playlist is in the queue, or a gap runs
    this.timer = null;
    this.clip = null; // the cue given to the queue
    this.passes = 0;
  }

  get running() {
    return this.mode !== null;
  }

  start(mode) {
    this.stop(false);
    this.mode = mode;
    this.passes = 0;
    if (!this.refill()) {
      this.mode = null;
      this.changed("empty");
      return;
    }
    this.changed("started");
    playback.pump();
  }

  refill() {
    const keys = this.selection();
    this.keys = this.mode === "random" ? shuffled(keys) : keys;
    if (this.keys.length) this.passes += 1;
    return this.keys.length > 0;
  }

  next() {
    if (!this.mode || this.busy) return null;
    if (!this.keys.length && !(this.loop && this.refill())) {
      this.finish();
      return null;
    }
    const key = this.keys.shift();
    const clip = this.clipOf(key);
    if (!clip) return this.next();
    this.busy = true;
    this.clip = clip;
    clip.finished = () => {
      if (this.clip === clip) this.clip = null;
      if (!this.mode) return;
      if (!this.keys.length && !this.loop) {
        this.busy = false;
        this.finish();
        return;
      }
      const base = this.loop ? 100 + Math.random() * 200 : 1000 + Math.random() * 2000;
      this.timer = window.setTimeout(() => {
        this.timer = null;
        this.busy = false;
        playback.pump();
      }, base * this.factor);
    };
    return clip;
  }

  finish() {
    if (!this.mode) return;
    this.mode = null;
    this.keys = [];
    this.changed("finished");
  }

  /** Ends the playlist (and its cue if it is sounding). */
  stop(tell = true) {
    const wasRunning = this.mode !== null;
    this.mode = null;
    this.keys = [];
    window.clearTimeout(this.timer);
    this.timer = null;
    this.busy = false;
    const clip = this.clip;
    this.clip = null;
    if (clip) playback.stop(clip);
    if (tell && wasRunning) this.changed("stopped");
  }
}

// --- the panel ----------------------------------------------------------------------------------

export class TriggersPanel {
  constructor(root, connection) {
    this.root = root;
    this.connection = connection;
    const $ = (id) => document.getElementById(id);
    this.ui = root
      ? {
          badge: $("trig-badge"),
          lock: $("trig-lock"),
          lockText: $("trig-lock-text"),
          lockProgress: $("trig-lock-progress"),
          lockMeta: $("trig-lock-meta"),
          body: $("trig-body"),
          all: $("trig-all"),
          save: $("trig-save"),
          saveState: $("trig-save-state"),
          grid: $("trig-grid"),
          empty: $("trig-empty"),
          play: $("trig-play"),
          random: $("trig-random"),
          stop: $("trig-stop"),
          now: $("trig-now"),
          audioLock: $("trig-audio-lock"),
          loop: $("trig-loop"),
          speed: $("trig-speed"),
          speedOut: $("trig-speed-out"),
          volume: $("trig-volume"),
          volumeOut: $("trig-volume-out"),
          background: $("trig-background"),
          backgroundState: $("trig-background-state"),
          backgroundVolume: $("trig-background-volume"),
          backgroundVolumeOut: $("trig-background-volume-out"),
          status: $("trig-status"),
        }
      : null;
    this.user = null;
    this.level = 0;
    this.xp = 0;
    this.next = null;
    // The level of each feature: the server's table (welcome.levels, kept by levels.js),
    // corrected by a level_required error or a level.up until the next table arrives.
    this.levels = levelTable.featureLevels();
    levelTable.addEventListener("change", () => {
      const was = this.unlocked;
      this.levels = levelTable.featureLevels();
      if (!was && this.unlocked) this.loadCatalog(false);
      this.render();
    });
    this.connected = false;
    this.unsupported = false; // the server has no triggers
    this.catalog = null;
    this.catalogState = "none"; // none | loading | ready | error
    this.saved = new Set(); // what the server has switched on
    this.checked = new Set(); // what the grid shows
    this.saving = null; // the id of a triggers.set awaiting its answer
    this.items = new Map(); // key -> {item, input}
    this.audio = { ...AUDIO_DEFAULTS }; // what the controls show and what applies
    this.audioSaved = { ...AUDIO_DEFAULTS }; // the server's
    this.requests = new Map(); // id -> {kind, ...}
    this.nextId = 1;
    this.fired = 0;
    this.cues = 0;
    this.noticeTimer = null;
    this.playing = null; // the key whose cue sounds, from the queue's events
    this.playlist = new Playlist({
      clipOf: (key) => this.clipOf(key, "playlist"),
      selection: () => this.selectionKeys(),
      changed: (why) => this.onPlaylist(why),
    });
    playback.addSource(this.playlist, "playlist");
    playback.addEventListener("start", (e) => this.onCueStart(e.detail));
    playback.addEventListener("end", (e) => this.onCueEnd(e.detail));
    playback.addEventListener("change", () => this.renderPlayer());
    background.addEventListener("change", () => this.renderBackground());
    if (this.ui) this.wire();
    this.applyAudio(AUDIO_DEFAULTS, false);
    this.render();
  }

  // --- connection listener -------------------------------------------------------------------

  state(state) {
    this.connected = state === "connected";
    this.renderToolbar();
  }

  closed() {
    this.requests.clear();
    if (this.saving) {
      this.saving = null;
      this.notice("Not saved: the connection was lost.");
    }
    this.render();
  }

  message(m) {
    switch (m.type) {
      case "welcome":
        this.onWelcome(m);
        return false;
      case "xp.update":
        this.onProgress(m);
        return false;
      case "level.up":
        this.onLevelUp(m);
        return false;
      case "triggers.state":
        if (m.id !== undefined) this.requests.delete(m.id);
        this.onState(m);
        return true;
      case "trigger.fired":
        this.onFired(m);
        return false;
      case "effect.flash":
        this.onFlash(m);
        return false;
      case "triggers.catalog":
        if (this.unlocked) this.loadCatalog(true);
        return false;
      case "settings.state":
        // Shared: the effect panels (and the trigger-mania page) read it too.
        if (m.id !== undefined) this.requests.delete(m.id);
        this.onSettings(m);
        return false;
      case "ack":
      case "error":
        if (!this.requests.has(m.id)) return false;
        if (m.type === "ack") this.onAck(m);
        else this.onError(m);
        return true;
      default:
        return false;
    }
  }

  request(kind, message, extra) {
    const id = "trig-" + this.nextId++;
    if (!this.connection.send({ ...message, id })) return null;
    this.requests.set(id, { kind, ...extra });
    return id;
  }

  get signedIn() {
    return this.user !== null;
  }

  /** The level ``feature`` needs (0: not gated on this server). */
  levelOf(feature) {
    return this.levels[feature] || 0;
  }

  get unlocked() {
    return this.signedIn && this.level >= this.levelOf("triggers");
  }

  get audioUnlocked() {
    return this.signedIn && this.level >= this.levelOf("audio_playlist");
  }

  // --- server messages -------------------------------------------------------------------------

  onWelcome(m) {
    levelTable.fromWelcome(m);
    this.user = m.user && typeof m.user === "object" ? m.user : null;
    this.connected = true;
    this.setProgress(this.user);
    if (this.user) {
      if (this.unlocked) this.loadCatalog(false);
      this.request("settings", { type: "settings.get" });
    } else {
      this.playlist.stop(); // signed out: nothing of theirs plays on
      background.stop();
    }
    this.render();
  }

  setProgress(data) {
    if (!data || typeof data !== "object") {
      this.level = 0;
      this.xp = 0;
      this.next = null;
      return;
    }
    if (Number.isInteger(data.level)) this.level = data.level;
    if (typeof data.xp === "number") this.xp = data.xp;
    if (typeof data.next === "number" || data.next === null) this.next = data.next;
  }

  onProgress(m) {
    const was = this.unlocked;
    this.setProgress(m);
    if (!was && this.unlocked) this.loadCatalog(false);
    this.render();
  }

  onLevelUp(m) {
    const was = this.unlocked;
    if (Number.isInteger(m.level)) {
      this.level = Math.max(this.level, m.level);
      // One feature unlocked: that is its level on this server.
      if (Array.isArray(m.unlocked) && m.unlocked.length === 1 && typeof m.unlocked[0] === "string") {
        this.levels[m.unlocked[0]] = m.level;
      }
    }
    if (!was && this.unlocked) this.loadCatalog(false);
    this.render();
  }

  /** Fetches the catalog (again when ``fresh``), then asks which triggers are on. */
  async loadCatalog(fresh) {
    if (this.catalogState === "loading") return;
    if (this.catalogState === "ready" && !fresh) {
      this.askState();
      return;
    }
    this.catalogState = "loading";
    this.render();
    try {
      const response = await fetch("/api/triggers", {
        credentials: "same-origin",
        headers: { Accept: "application/json" },
        cache: "no-store",
      });
      if (!response.ok) throw new Error("status " + response.status);
      const catalog = readCatalog(await response.json());
      if (!catalog) throw new Error("not a trigger list");
      this.catalog = catalog;
      this.catalogState = "ready";
      this.buildGrid();
    } catch (err) {
      this.catalogState = "error";
      this.notice("The trigger list could not be loaded. Reload the page to try again.");
    }
    this.render();
    if (this.catalogState === "ready") this.askState();
  }

  askState() {
    for (const req of this.requests.values()) if (req.kind === "get") return;
    this.request("get", { type: "triggers.get" });
  }

  onState(m) {
    const enabled = Array.isArray(m.enabled) ? m.enabled.filter((k) => typeof k === "string") : [];
    this.saved = new Set(enabled);
    this.checked = new Set(enabled); // the server's list, in every tab
    if (this.catalog && Number.isInteger(m.catalog_version) && m.catalog_version > this.catalog.version) {
      this.loadCatalog(true);
    }
    this.showChecks();
    this.render();
  }

  onAck(m) {
    const req = this.requests.get(m.id);
    this.requests.delete(m.id);
    if (req.kind === "set") {
      this.saving = null;
      this.clearNotice();
      this.renderToolbar();
    }
    // An audio change's ack is followed by settings.state with the whole section.
  }

  onError(m) {
    const req = this.requests.get(m.id);
    this.requests.delete(m.id);
    const says = str(m.message);
    if (m.code === "level_required" && typeof m.feature === "string" && Number.isInteger(m.level)) {
      this.levels[m.feature] = m.level;
    }
    switch (req.kind) {
      case "get":
        if (m.code === "bad_request") this.unsupported = true; // a server without triggers
        break;
      case "settings":
        break; // a server without stored settings: the defaults apply
      case "set":
        this.saving = null;
        if (m.code === "level_required") {
          this.notice("Not saved: triggers unlock at level " + this.levelOf("triggers") + ".");
        } else if (m.code === "rate_limited") {
          this.notice("Not saved: that was too quick. Try again in a moment.");
        } else {
          this.notice("Not saved" + (says ? ": " + says : "."));
        }
        break;
      case "audio":
        this.showAudio(this.audioSaved);
        this.applyAudio(this.audioSaved, false);
        if (m.code === "level_required") {
          this.notice(
            "The loop, pace, loudness and background sound unlock at level " +
              this.levelOf("audio_playlist") +
              ".",
          );
        } else {
          this.notice("Not changed" + (says ? ": " + says : "."));
        }
        break;
      default:
        break;
    }
    this.render();
  }

  onSettings(m) {
    let values = null;
    if (m.sections && typeof m.sections === "object") values = m.sections.audio;
    else if (m.section === "audio") values = m.values;
    if (!values || typeof values !== "object") return;
    this.audioSaved = this.readAudio(values, this.audioSaved);
    this.applyAudio(this.audioSaved, true);
  }

  // --- cues from the server ----------------------------------------------------------------------

  onFired(m) {
    const key = str(m.key);
    if (!key) return;
    const known = this.catalog ? this.catalog.byKey.get(key) : null;
    const name = str(m.name) || (known ? known.name : key);
    const url = sameSitePath(m.audio_url) || (known ? known.url : null);
    this.fired += 1;
    if (this.root) this.root.dataset.fired = String(this.fired);
    if (!url) {
      flash(name, key);
      return;
    }
    // The same trigger fired again while its cue still waits: one cue is enough.
    if (playback.waiting().some((clip) => clip.kind === "cue" && clip.key === key)) return;
    playback.enqueue({ kind: "cue", channel: "cues", key, label: name, url });
  }

  onFlash(m) {
    const text = str(m.text);
    const key = str(m.key);
    if (!text) return;
    if (key && !playback.blocked) {
      const current = playback.current;
      if (current && current.key === key && current.kind !== "speech") return; // flashing now
      if (playback.waiting().some((clip) => clip.key === key)) return; // flashes when it sounds
    }
    flash(text, key);
  }

  onCueStart(detail) {
    if (detail.kind === "speech") return;
    this.cues += 1;
    this.playing = detail.key || null;
    if (this.root) this.root.dataset.cues = String(this.cues);
    this.markPlaying();
    this.renderPlayer();
  }

  onCueEnd(detail) {
    if (detail.kind === "speech") return;
    if (this.playing === (detail.key || null)) this.playing = null;
    this.markPlaying();
    this.renderPlayer();
  }

  markPlaying() {
    for (const [key, { item }] of this.items) {
      if (key === this.playing) item.dataset.playing = "true";
      else delete item.dataset.playing;
    }
  }

  // --- the grid -----------------------------------------------------------------------------------

  buildGrid() {
    const ui = this.ui;
    if (!ui || !this.catalog) return;
    this.items.clear();
    const groups = [];
    let n = 0;
    for (const category of this.catalog.categories) {
      const triggers = this.catalog.triggers.filter((t) => t.category === category);
      if (!triggers.length) continue;
      const fieldset = el("fieldset", "trig-group");
      fieldset.dataset.category = category;
      fieldset.appendChild(el("legend", "trig-group-title", titleCase(category)));
      const list = el("div", "trig-items");
      for (const trigger of triggers) {
        n += 1;
        const id = "trig-item-" + n;
        const item = el("div", "trig-item");
        item.dataset.key = trigger.key;
        if (trigger.description) item.title = trigger.description;
        const input = el("input", "form-check-input trig-check");
        input.type = "checkbox";
        input.id = id;
        input.dataset.key = trigger.key;
        const text = el("div", "trig-item-text");
        const label = el("label", "trig-name", trigger.name);
        label.htmlFor = id;
        text.appendChild(label);
        if (trigger.description) {
          const description = el("span", "trig-desc", trigger.description);
          description.id = id + "-desc";
          input.setAttribute("aria-describedby", description.id);
          text.appendChild(description);
        }
        const hear = el("button", "btn btn-sm trig-hear");
        hear.type = "button";
        hear.setAttribute("aria-label", "Hear " + trigger.name);
        hear.title = "Hear it";
        hear.appendChild(playIcon());
        hear.disabled = !trigger.url;
        input.addEventListener("change", () => {
          if (input.checked) this.checked.add(trigger.key);
          else this.checked.delete(trigger.key);
          this.renderToolbar();
        });
        hear.addEventListener("click", () => this.hear(trigger.key));
        item.append(input, text, hear);
        list.appendChild(item);
        this.items.set(trigger.key, { item, input });
      }
      fieldset.appendChild(list);
      groups.push(fieldset);
    }
    ui.grid.replaceChildren(...groups);
    // Keys that left the catalog are dropped from the selection.
    for (const key of [...this.checked]) if (!this.catalog.byKey.has(key)) this.checked.delete(key);
    this.showChecks();
    this.markPlaying();
  }

  showChecks() {
    for (const [key, { input }] of this.items) input.checked = this.checked.has(key);
  }

  /** The switched-on keys in the grid's order. */
  selectionKeys() {
    if (!this.catalog) return [];
    return this.catalog.triggers.filter((t) => this.checked.has(t.key) && t.url).map((t) => t.key);
  }

  clipOf(key, kind) {
    const trigger = this.catalog ? this.catalog.byKey.get(key) : null;
    if (!trigger || !trigger.url) return null;
    return { kind, channel: "cues", key, label: trigger.name, url: trigger.url };
  }

  hear(key) {
    const clip = this.clipOf(key, "cue");
    if (clip) playback.enqueue(clip);
  }

  toggleAll() {
    if (!this.catalog) return;
    const all = this.catalog.triggers.every((t) => this.checked.has(t.key));
    this.checked = all ? new Set() : new Set(this.catalog.triggers.map((t) => t.key));
    this.showChecks();
    this.renderToolbar();
  }

  save() {
    if (!this.catalog || this.saving) return;
    const enabled = this.catalog.triggers.filter((t) => this.checked.has(t.key)).map((t) => t.key);
    const id = this.request("set", { type: "triggers.set", enabled });
    if (!id) {
      this.notice("Not saved: not connected.");
      return;
    }
    this.saving = id;
    this.renderToolbar();
  }

  // --- playing --------------------------------------------------------------------------------------

  startPlaylist(mode) {
    if (!this.selectionKeys().length) {
      this.notice("Switch on at least one trigger to play it.");
      return;
    }
    this.clearNotice();
    this.playlist.start(mode);
  }

  onPlaylist(why) {
    if (why === "empty") this.notice("Switch on at least one trigger to play it.");
    this.renderPlayer();
  }

  // --- audio settings -----------------------------------------------------------------------------

  readAudio(values, base) {
    const out = { ...base };
    const number = (v, lo, hi) => typeof v === "number" && Number.isFinite(v) && v >= lo && v <= hi;
    if (number(values.volume, 0, 1)) out.volume = values.volume;
    if (number(values.speed, 1, 10)) out.speed = values.speed;
    if (typeof values.loop === "boolean") out.loop = values.loop;
    if (values.background === "" || Object.prototype.hasOwnProperty.call(BACKGROUNDS, values.background)) {
      out.background = values.background;
    }
    if (number(values.background_volume, 0, 1)) out.background_volume = values.background_volume;
    return out;
  }

  /** Makes ``values`` what plays: cue volume, gaps, loop, the background loop. */
  applyAudio(values, showControls) {
    this.audio = { ...values };
    playback.setVolume("cues", values.volume);
    this.playlist.factor = gapFactor(values.speed);
    this.playlist.loop = values.loop;
    background.setVolume(values.background_volume);
    if (values.background) background.play(values.background);
    else if (background.name) background.stop();
    if (showControls) this.showAudio(values);
  }

  showAudio(values) {
    const ui = this.ui;
    if (!ui) return;
    ui.loop.checked = values.loop;
    ui.speed.value = String(values.speed);
    ui.volume.value = String(Math.round(values.volume * 100));
    ui.background.value = values.background;
    ui.backgroundVolume.value = String(Math.round(values.background_volume * 100));
    this.showAudioOutputs();
  }

  showAudioOutputs() {
    const ui = this.ui;
    const speed = Number(ui.speed.value);
    const factor = gapFactor(speed);
    ui.speedOut.textContent = speed + (speed === 5 ? " (normal)" : factor > 1 ? " (slower)" : " (faster)");
    // "Pace" on screen: the original's speed slider (the gaps between cues).
    ui.speed.setAttribute("aria-valuetext", ui.speedOut.textContent);
    for (const [input, out] of [
      [ui.volume, ui.volumeOut],
      [ui.backgroundVolume, ui.backgroundVolumeOut],
    ]) {
      out.textContent = input.value + " %";
      input.setAttribute("aria-valuetext", input.value + " percent");
    }
    this.renderBackground();
  }

  /** A control changed: apply it here at once and store it. */
  changeAudio(change) {
    const values = this.readAudio(change, this.audio);
    this.applyAudio(values, false);
    if (!this.request("audio", { type: "settings.set", section: "audio", values: change })) {
      this.notice("Not connected: the change applies on this page only.");
    }
  }

  // --- rendering ----------------------------------------------------------------------------------

  render() {
    const root = this.root;
    if (!root) return;
    const ui = this.ui;
    root.hidden = !this.signedIn || this.unsupported;
    root.dataset.level = String(this.level);
    let state = "locked";
    if (this.unlocked) state = this.catalogState === "ready" ? "open" : this.catalogState;
    root.dataset.state = state;
    ui.lock.hidden = this.unlocked;
    ui.body.hidden = !this.unlocked || this.catalogState !== "ready";
    if (!this.unlocked) this.renderLock();
    const on = this.saved.size;
    if (!this.unlocked) {
      ui.badge.textContent = "Level " + this.levelOf("triggers");
      ui.badge.dataset.kind = "locked";
    } else {
      ui.badge.textContent = on ? on + " on" : "";
      ui.badge.dataset.kind = "on";
    }
    const empty = this.catalogState === "ready" && this.catalog.triggers.length === 0;
    ui.empty.hidden = !empty;
    ui.empty.textContent = empty ? "This server has no triggers." : "";
    ui.audioLock.hidden = this.audioUnlocked;
    ui.audioLock.textContent = this.audioUnlocked
      ? ""
      : "The loop, pace, cue loudness and background sound unlock at level " +
        this.levelOf("audio_playlist") +
        ".";
    for (const control of [ui.loop, ui.speed, ui.volume, ui.background, ui.backgroundVolume]) {
      control.disabled = !this.audioUnlocked;
    }
    this.renderToolbar();
    this.renderPlayer();
  }

  renderLock() {
    const ui = this.ui;
    const needed = this.levelOf("triggers");
    ui.lockText.textContent = "Triggers unlock at level " + needed;
    const guest = Boolean(this.user && this.user.guest);
    ui.lockProgress.hidden = guest;
    if (guest) {
      ui.lockMeta.textContent = "Guests do not earn XP: create an account to unlock triggers.";
      return;
    }
    const next = typeof this.next === "number" && this.next > 0 ? this.next : null;
    ui.lockProgress.value = next ? Math.min(1, this.xp / next) : 0;
    ui.lockMeta.textContent =
      "You are level " + this.level + " · " + this.xp + (next ? " / " + next : "") + " XP" +
      (next ? " to level " + (this.level + 1) + "." : ".");
  }

  renderToolbar() {
    const ui = this.ui;
    if (!ui) return;
    const dirty = !sameSet(this.checked, this.saved);
    let state = "saved";
    let text = this.saved.size ? "Saved" : "";
    if (this.saving) {
      state = "saving";
      text = "Saving…";
    } else if (dirty) {
      state = "dirty";
      text = "Not saved yet";
    }
    ui.saveState.dataset.state = state;
    ui.saveState.textContent = text;
    ui.save.disabled = !dirty || Boolean(this.saving) || !this.connected;
    const all = this.catalog && this.catalog.triggers.length > 0 &&
      this.catalog.triggers.every((t) => this.checked.has(t.key));
    ui.all.textContent = all ? "Clear all" : "Select all";
    ui.all.disabled = !this.catalog || this.catalog.triggers.length === 0;
  }

  renderPlayer() {
    const ui = this.ui;
    if (!ui) return;
    const running = this.playlist.running;
    const current = playback.current;
    const cueNow = current && current.kind !== "speech";
    ui.stop.disabled = !running && !(cueNow && (current.kind === "playlist" || current.kind === "cue"));
    ui.play.setAttribute("aria-pressed", running && this.playlist.mode === "ordered" ? "true" : "false");
    ui.random.setAttribute("aria-pressed", running && this.playlist.mode === "random" ? "true" : "false");
    let state = "idle";
    let text = "";
    if (cueNow && playback.blocked) {
      state = "blocked";
      text = "Sound is blocked by the browser: tap anywhere on the page to allow it.";
    } else if (cueNow && current.label) {
      state = "playing";
      text = "Playing: " + current.label;
    } else if (running) {
      state = "waiting";
      text = this.playlist.loop ? "Continuous loop: the next cue follows." : "The next cue follows.";
    }
    ui.now.dataset.state = state;
    if (cueNow && current.key) ui.now.dataset.key = current.key;
    else delete ui.now.dataset.key;
    ui.now.textContent = text;
  }

  renderBackground() {
    const ui = this.ui;
    if (!ui) return;
    const state = background.state;
    ui.backgroundState.dataset.state = state;
    const says = {
      off: "",
      loading: "loading…",
      waiting: "starts when you tap the page",
      playing: "playing",
      error: "could not be played",
    };
    ui.backgroundState.textContent = says[state] || "";
    if (this.root) this.root.dataset.background = background.name ? background.name + ":" + state : "";
  }

  notice(text) {
    if (!this.ui) return;
    window.clearTimeout(this.noticeTimer);
    this.ui.status.textContent = text;
    this.noticeTimer = window.setTimeout(() => this.clearNotice(), NOTICE_MS);
  }

  clearNotice() {
    if (!this.ui) return;
    window.clearTimeout(this.noticeTimer);
    this.ui.status.textContent = "";
  }

  // --- events --------------------------------------------------------------------------------------

  wire() {
    const ui = this.ui;
    ui.all.addEventListener("click", () => this.toggleAll());
    ui.save.addEventListener("click", () => this.save());
    ui.play.addEventListener("click", () => this.startPlaylist("ordered"));
    ui.random.addEventListener("click", () => this.startPlaylist("random"));
    ui.stop.addEventListener("click", () => {
      // The playlist ends, and so does the cue sounding now (not the cues waiting).
      const current = playback.current;
      this.playlist.stop();
      if (current && current.kind === "cue") playback.stop(current);
      this.renderPlayer();
    });
    ui.loop.addEventListener("change", () => this.changeAudio({ loop: ui.loop.checked }));
    for (const [input, field, scale] of [
      [ui.speed, "speed", 1],
      [ui.volume, "volume", 100],
      [ui.backgroundVolume, "background_volume", 100],
    ]) {
      // Heard at once while dragging; stored when let go.
      input.addEventListener("input", () => {
        this.showAudioOutputs();
        const values = this.readAudio({ [field]: Number(input.value) / scale }, this.audio);
        this.applyAudio(values, false);
      });
      input.addEventListener("change", () => this.changeAudio({ [field]: Number(input.value) / scale }));
    }
    ui.background.addEventListener("change", () => this.changeAudio({ background: ui.background.value }));
    this.showAudio(this.audio);
  }
}

function playIcon() {
  const ns = "http://www.w3.org/2000/svg";
  const svg = document.createElementNS(ns, "svg");
  svg.setAttribute("viewBox", "0 0 16 16");
  svg.setAttribute("width", "14");
  svg.setAttribute("height", "14");
  svg.setAttribute("aria-hidden", "true");
  svg.setAttribute("focusable", "false");
  const path = document.createElementNS(ns, "path");
  path.setAttribute("d", "M4.5 2.5v11l9-5.5z");
  path.setAttribute("fill", "currentColor");
  svg.appendChild(path);
  return svg;
}
