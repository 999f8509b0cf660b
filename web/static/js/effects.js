// The effect panels under the chat (issue 6): the collar, session history, spirals and binaural
// beats, against "Levels and gated features" and "Triggers and effects" in docs/protocol.md;
// docs/ui.md, "Effect panels".
//
// ``Effects`` is a connection listener (chat.js registers it). It keeps what every panel needs
// (who is signed in, their level, which level unlocks which feature, the requests in flight)
// and hands each panel the frames it cares about. The panels live in their own modules and
// talk to the server only through the ``host`` API below (``request``, ``settings``,
// ``unlocked``, ``describeError``…).
//
// Order of listeners: the companion panel keeps every ``ai.*`` frame, so the answer to our own
// ``ai.conversations`` would never reach a listener registered after it. Once chat.js has
// registered it, ``Effects`` moves itself to the front of the connection's listeners; it only
// ever keeps frames that answer its own requests (ids "fx-N") and passes everything else on,
// so the others see exactly what they saw before.

import { BinauralPanel } from "./binaural-panel.js";
import { CollarPanel } from "./collar-panel.js";
import { HistoryPanel } from "./history-panel.js";
import { levelTable } from "./levels.js";
import { SpiralsPanel } from "./spirals-panel.js";

/** Labels that take a plural verb. */
const PLURAL = new Set(["triggers", "spirals", "binaural", "advanced_binaural"]);

const STORE_OPEN = "bambid.effects.open";
const SETTINGS_DELAY_MS = 400;

function readStore(key) {
  try {
    return window.localStorage.getItem(key);
  } catch (err) {
    return null; // storage unavailable (private mode): the default applies
  }
}

function writeStore(key, value) {
  try {
    window.localStorage.setItem(key, value);
  } catch (err) {
    // not kept: the choice lasts as long as the page
  }
}

function plural(n, one, many) {
  return n + " " + (n === 1 ? one : many);
}

/**
 * One section of ``settings.*`` ("spirals", "binaural"), synced across tabs.
 *
 * ``change(values)`` queues changes and sends them with ``settings.set`` after a short pause
 * (one request in flight at a time; what changes meanwhile goes in the next one).
 * ``receive(values)`` takes the server's ``settings.state``. ``apply(values)`` is called with
 * the whole section as this tab should show it: the server's values with the changes not yet
 * confirmed on top, so a slider being dragged never jumps back to an older value.
 */
export class SettingsSection {
  constructor(host, section, handlers) {
    this.host = host;
    this.section = section;
    this.handlers = handlers; // {apply(values), failed(text, m)}
    this.server = null; // the last values the server sent
    this.outbox = {}; // changed here, not sent yet
    this.inflight = null; // sent, not acknowledged yet
    this.timer = 0;
  }

  get known() {
    return this.server !== null;
  }

  /** The section as shown: the server's values under the changes not yet confirmed. */
  get values() {
    return { ...(this.server || {}), ...(this.inflight || {}), ...this.outbox };
  }

  change(values) {
    Object.assign(this.outbox, values);
    window.clearTimeout(this.timer);
    this.timer = window.setTimeout(() => this.flush(), SETTINGS_DELAY_MS);
  }

  /** Send what is queued now (e.g. before the page goes away). */
  flush() {
    window.clearTimeout(this.timer);
    this.timer = 0;
    if (this.inflight || Object.keys(this.outbox).length === 0) return;
    const values = this.outbox;
    const id = this.host.request(
      { type: "settings.set", section: this.section, values },
      {
        ack: () => {
          this.inflight = null;
          this.flush();
        },
        error: (m) => {
          this.inflight = null;
          this.handlers.failed(this.host.describeError(m, "Not saved"), m);
          this.host.refreshSettings(); // back to what the server has
          this.flush();
        },
        lost: () => {
          // The connection went: send it again after the next welcome.
          this.outbox = { ...values, ...this.outbox };
          this.inflight = null;
        },
      },
    );
    if (id === null) return; // not connected: stays queued until the next welcome
    this.outbox = {};
    this.inflight = values;
  }

  receive(values) {
    if (!values || typeof values !== "object") return;
    this.server = { ...(this.server || {}), ...values };
    this.handlers.apply(this.values);
  }
}

/**
 * The effect panels. ``root`` is ``#effects``; ``connection`` the page's Connection.
 * ``message(m)`` returns true only for the answers to its own requests.
 */
export class Effects {
  constructor(root, connection) {
    this.root = root;
    this.connection = connection;
    this.user = null; // welcome.user
    this.progress = { xp: 0, level: 0, next: null };
    // The level of each feature: the server's table (welcome.levels, kept by levels.js),
    // corrected by a level_required error until the next table arrives.
    this.featureLevels = levelTable.featureLevels();
    this.connected = false;
    this.requests = new Map(); // id -> handlers {ack, error, answer, lost}
    this.nextId = 1;
    this.settingsAsked = false;
    this.sections = new Map(); // section name -> SettingsSection
    this.cards = root ? [...root.querySelectorAll(".fx-card")] : [];
    this.panels = [];
    if (!root) return;
    const $ = (id) => document.getElementById(id);
    this.panels = [
      new CollarPanel(this, $("fx-collar")),
      new HistoryPanel(this, $("fx-history")),
      new SpiralsPanel(this, $("fx-spirals")),
      new BinauralPanel(this, $("fx-binaural")),
    ];
    this.restoreOpen();
    levelTable.addEventListener("change", () => {
      this.featureLevels = levelTable.featureLevels();
      this.render();
      for (const panel of this.panels) if (panel.levelChanged) panel.levelChanged();
    });
    this.render();
    // See the comment at the top: after chat.js has registered us, go first.
    queueMicrotask(() => this.moveToFront());
    window.addEventListener("pagehide", () => {
      for (const section of this.sections.values()) section.flush();
    });
  }

  moveToFront() {
    const list = this.connection && this.connection.listeners;
    if (!Array.isArray(list)) return;
    const at = list.indexOf(this);
    if (at > 0) {
      list.splice(at, 1);
      list.unshift(this);
    }
  }

  // --- the host API, for the panels -----------------------------------------------------

  get signedIn() {
    return this.user !== null;
  }

  get guest() {
    return Boolean(this.user && this.user.guest);
  }

  get level() {
    return this.progress.level;
  }

  levelOf(feature) {
    return this.featureLevels[feature] || 0;
  }

  /** The person has reached ``feature``'s level (as far as this page knows). */
  unlocked(feature) {
    return this.signedIn && this.level >= this.levelOf(feature);
  }

  label(feature) {
    return levelTable.label(feature);
  }

  /** "The collar unlocks at level 2", "Spirals unlock at level 4". */
  lockText(feature) {
    const verb = PLURAL.has(feature) ? " unlock at level " : " unlocks at level ";
    return this.label(feature) + verb + this.levelOf(feature);
  }

  /**
   * Send ``message`` with a new id; ``handlers`` ``{ack(m), error(m), answer(m), lost()}`` get
   * its answers (``lost`` when the connection closes first). The id, or null when not
   * connected (nothing was sent).
   */
  request(message, handlers = {}) {
    const id = "fx-" + this.nextId++;
    if (!this.connection.send({ ...message, id })) return null;
    this.requests.set(id, handlers);
    return id;
  }

  /** A panel's section of ``settings.*`` (see ``SettingsSection``). */
  settings(section, handlers) {
    const found = new SettingsSection(this, section, handlers);
    this.sections.set(section, found);
    return found;
  }

  /** Ask ``settings.get`` again (after a refused change, or a welcome). */
  refreshSettings() {
    if (this.settingsAsked || !this.signedIn) return;
    const id = this.request(
      { type: "settings.get" },
      {
        answer: (m) => {
          this.settingsAsked = false;
          this.onSettings(m);
        },
        error: () => {
          this.settingsAsked = false; // an older server, or a guest: the panels keep their defaults
        },
        lost: () => {
          this.settingsAsked = false;
        },
      },
    );
    this.settingsAsked = id !== null;
  }

  /** What an error frame means for the person, in plain words. */
  describeError(m, doing = "") {
    const code = typeof m.code === "string" ? m.code : "error";
    const says = typeof m.message === "string" ? m.message.trim() : "";
    const lead = doing ? doing + ": " : "";
    switch (code) {
      case "level_required": {
        const feature = typeof m.feature === "string" ? m.feature : "";
        const level = Number.isInteger(m.level) ? m.level : this.levelOf(feature);
        let what = says || "This unlocks at level " + level;
        if (feature) what = this.lockText(feature);
        return what.replace(/\.$/, "") + ". You are level " + this.level + ".";
      }
      case "rate_limited": {
        const wait = typeof m.retry_after === "number" ? Math.max(1, Math.ceil(m.retry_after)) : 0;
        return (
          lead +
          "you are going too fast." +
          (wait ? " Try again in " + plural(wait, "second", "seconds") + "." : "")
        );
      }
      case "bad_request":
        return lead + (says || "the server did not accept it") + ".";
      case "unauthenticated":
        return "Sign in or continue as guest to use this.";
      case "not_found":
        return "That conversation no longer exists.";
      case "unavailable":
        return lead + (says || "the server cannot do that right now") + ".";
      case "internal":
        return lead + "something went wrong on the server. Please try again.";
      default:
        return lead + (says || "something went wrong (" + code + ")") + ".";
    }
  }

  // --- connection listener --------------------------------------------------------------

  state(state) {
    this.connected = state === "connected";
    for (const panel of this.panels) if (panel.connection) panel.connection(this.connected);
  }

  closed() {
    const lost = [...this.requests.values()];
    this.requests.clear();
    this.settingsAsked = false;
    for (const handlers of lost) if (handlers.lost) handlers.lost();
    for (const panel of this.panels) if (panel.closed) panel.closed();
  }

  message(m) {
    if (typeof m.id === "string" && this.requests.has(m.id)) {
      this.onAnswer(m);
      return true;
    }
    switch (m.type) {
      case "welcome":
        this.onWelcome(m);
        break;
      case "xp.update":
        this.onProgress(m);
        break;
      case "level.up":
        this.onLevelUp(m);
        break;
      case "settings.state":
        this.onSettings(m);
        break;
      default:
        break;
    }
    // Everything else is passed to the panels to look at, and on to the other listeners.
    for (const panel of this.panels) if (panel.frame) panel.frame(m);
    return false;
  }

  onAnswer(m) {
    const handlers = this.requests.get(m.id);
    this.requests.delete(m.id);
    if (m.type === "error" && m.code === "level_required") this.learnLevel(m.feature, m.level);
    if (m.type === "ack") {
      if (handlers.ack) handlers.ack(m);
    } else if (m.type === "error") {
      if (handlers.error) handlers.error(m);
    } else if (handlers.answer) {
      handlers.answer(m);
    }
  }

  onWelcome(m) {
    levelTable.fromWelcome(m); // before the panels ask for anything gated
    const user = m.user && typeof m.user === "object" ? m.user : null;
    this.user = user;
    this.progress = { xp: 0, level: 0, next: null };
    if (user) this.onProgress(user);
    this.render();
    for (const panel of this.panels) if (panel.welcome) panel.welcome();
    if (user) {
      this.refreshSettings();
      for (const section of this.sections.values()) section.flush(); // queued while away
    }
  }

  onProgress(m) {
    if (Number.isInteger(m.xp)) this.progress.xp = m.xp;
    if (Number.isInteger(m.level)) this.setLevel(m.level);
    if (Number.isInteger(m.next) || m.next === null) this.progress.next = m.next;
    this.render();
  }

  onLevelUp(m) {
    // With one feature unlocked we also learn that feature's level on this server.
    if (Array.isArray(m.unlocked) && m.unlocked.length === 1 && Number.isInteger(m.level)) {
      this.featureLevels[m.unlocked[0]] = m.level;
    }
    if (Number.isInteger(m.level)) this.setLevel(m.level);
    this.render();
  }

  setLevel(level) {
    const before = this.progress.level;
    this.progress.level = level;
    if (level !== before) {
      for (const panel of this.panels) if (panel.levelChanged) panel.levelChanged();
    }
  }

  /** A level_required error names the feature's level on this server. */
  learnLevel(feature, level) {
    if (typeof feature !== "string" || !Number.isInteger(level)) return;
    if (this.featureLevels[feature] === level) return;
    this.featureLevels[feature] = level;
    this.render();
    for (const panel of this.panels) if (panel.levelChanged) panel.levelChanged();
  }

  onSettings(m) {
    if (typeof m.section === "string") {
      const section = this.sections.get(m.section);
      if (section) section.receive(m.values);
      return;
    }
    if (m.sections && typeof m.sections === "object") {
      for (const [name, section] of this.sections) section.receive(m.sections[name]);
    }
  }

  // --- locks and cards ------------------------------------------------------------------

  render() {
    if (!this.root) return;
    this.root.hidden = !this.signedIn;
    for (const card of this.cards) this.renderLock(card);
    for (const panel of this.panels) if (panel.render) panel.render();
  }

  /** Show the card's lock or its content; the badge in its summary says which. */
  renderLock(card) {
    const feature = card.dataset.feature;
    const open = this.unlocked(feature);
    card.dataset.locked = open ? "false" : "true";
    const content = card.querySelector("[data-content]");
    const lock = card.querySelector("[data-lock]");
    if (content) content.hidden = !open;
    if (lock) {
      lock.hidden = open;
      if (!open) this.fillLock(lock, feature);
    }
    const badge = card.querySelector("[data-badge]");
    if (badge && !open) {
      badge.textContent = "Level " + this.levelOf(feature);
      badge.dataset.kind = "locked";
    }
  }

  fillLock(lock, feature) {
    const text = lock.querySelector("[data-lock-text]");
    const bar = lock.querySelector("[data-lock-progress]");
    const meta = lock.querySelector("[data-lock-meta]");
    const { xp, level, next } = this.progress;
    text.textContent = this.lockText(feature) + ".";
    if (this.guest) {
      bar.hidden = true;
      meta.textContent = "Guests stay at level 0: create an account to earn XP and unlock it.";
      return;
    }
    bar.hidden = next === null;
    if (next !== null) {
      bar.max = Math.max(1, next);
      bar.value = Math.min(xp, next);
      bar.setAttribute("aria-label", "Progress to level " + (level + 1));
      meta.textContent =
        "You are level " + level + " · " + xp + " / " + next + " XP to level " + (level + 1) + ".";
    } else {
      meta.textContent = "You are level " + level + ".";
    }
  }

  restoreOpen() {
    let stored = {};
    try {
      stored = JSON.parse(readStore(STORE_OPEN) || "{}") || {};
    } catch (err) {
      stored = {};
    }
    for (const card of this.cards) {
      if (typeof stored[card.id] === "boolean") card.open = stored[card.id];
      card.addEventListener("toggle", () => {
        let now = {};
        try {
          now = JSON.parse(readStore(STORE_OPEN) || "{}") || {};
        } catch (err) {
          now = {};
        }
        now[card.id] = card.open;
        writeStore(STORE_OPEN, JSON.stringify(now));
      });
    }
  }
}
