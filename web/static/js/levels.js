// The levels made visible (docs/ui.md, "Levels"): the XP badge in the chat bar, the Levels
// panel it opens (web/templates/_levels.html), and the celebration of a level reached; against
// "XP" and "Levels and gated features" in docs/protocol.md.
//
// ``levelTable`` is the page's one copy of the server's level table: the XP each level needs
// and the feature it unlocks, with the feature's label and description. The page assumes no
// table of its own: this module asks ``GET /api/levels`` as it loads (a top-level await, so
// that the modules importing it, chat.js and the panels, start with the server's table), and
// every ``welcome`` with ``levels`` replaces it; whoever sees a welcome first hands it over
// (``fromWelcome``), and the trigger and effect panels read their locks from it and re-render
// on its ``change`` event. If the request fails (no answer within 5 s, an error status, not a
// table) the table stays empty (nothing shown as gated; the server still enforces its levels)
// until a welcome brings one.
//
// ``Levels`` is a connection listener (chat.js registers it) that never keeps a frame. It
// reads ``welcome``, ``xp.update`` and ``level.up``; the server alone decides XP and levels.
// ``level.up`` is celebrated with a banner that never takes the focus, unless a
// ``bambid:preferences`` event on ``window`` said ``{notifications: {level_up: false}}``.
// Everything from the server is shown with textContent.

import { element as el } from "./chat-render.js";

const MAX_LEVELS = 200;
const MAX_TEXT = 200;
const CELEBRATION_MS = 10000;
const LOAD_TIMEOUT_MS = 5000;

/** "my_garden" → "My garden" (as the server's ``gates.describe``). */
export function featureLabel(feature) {
  const words = String(feature).replace(/[_-]/g, " ").trim().split(/\s+/).join(" ");
  return words ? words.charAt(0).toUpperCase() + words.slice(1) : "A new feature";
}

function text(value, fallback) {
  return typeof value === "string" && value.trim() ? value.trim().slice(0, MAX_TEXT) : fallback;
}

/** The rows of a ``levels`` array, or null if it is not a level table (levels 1..n, XP rising). */
function readLevels(list) {
  if (!Array.isArray(list) || list.length > MAX_LEVELS) return null;
  const rows = [];
  for (const item of list) {
    if (!item || typeof item !== "object") return null;
    const { level, xp, feature } = item;
    if (!Number.isInteger(level) || !Number.isInteger(xp) || xp < 0) return null;
    if (typeof feature !== "string" || !feature) return null;
    rows.push({
      level,
      xp,
      feature,
      label: text(item.label, featureLabel(feature)),
      description: text(item.description, ""),
    });
  }
  rows.sort((a, b) => a.level - b.level);
  for (let i = 0; i < rows.length; i++) {
    if (rows[i].level !== i + 1 || (i > 0 && rows[i].xp <= rows[i - 1].xp)) return null;
  }
  return rows;
}

/** The level table; dispatches ``change`` when a different one arrives. */
export class LevelTable extends EventTarget {
  constructor() {
    super();
    this.rows = [];
  }

  /** Ask the server for its table (``GET /api/levels``); false (the table unchanged) if that fails. */
  async load() {
    const abort = new AbortController();
    const timer = window.setTimeout(() => abort.abort(), LOAD_TIMEOUT_MS);
    try {
      const response = await fetch("/api/levels", {
        headers: { Accept: "application/json" },
        credentials: "same-origin",
        signal: abort.signal,
      });
      if (!response.ok) return false;
      const body = await response.json();
      if (!body || !readLevels(body.levels)) return false;
      this.set(body.levels);
      return true;
    } catch {
      return false;
    } finally {
      window.clearTimeout(timer);
    }
  }

  /** Take ``welcome.levels`` if the welcome has a table. */
  fromWelcome(m) {
    if (m && Array.isArray(m.levels)) this.set(m.levels);
  }

  set(list) {
    const rows = readLevels(list);
    if (!rows || JSON.stringify(rows) === JSON.stringify(this.rows)) return false;
    this.rows = rows;
    this.dispatchEvent(new Event("change"));
    return true;
  }

  /** The level that unlocks ``feature`` (0: not gated on this server). */
  levelOf(feature) {
    const row = this.rows.find((r) => r.feature === feature);
    return row ? row.level : 0;
  }

  /** ``{feature: level}`` for every gated feature. */
  featureLevels() {
    const found = Object.create(null); // feature names are data: no prototype to shadow
    for (const row of this.rows) if (!(row.feature in found)) found[row.feature] = row.level;
    return found;
  }

  label(feature) {
    const row = this.rows.find((r) => r.feature === feature);
    return row ? row.label : featureLabel(feature);
  }

  description(feature) {
    const row = this.rows.find((r) => r.feature === feature);
    return row ? row.description : "";
  }

  /** The XP at which ``level`` starts (0 for level 0). */
  threshold(level) {
    if (level <= 0) return 0;
    const row = this.rows[Math.min(level, this.rows.length) - 1];
    return row ? row.xp : 0;
  }
}

export const levelTable = new LevelTable();
await levelTable.load();

/**
 * Where ``{xp, level, next}`` stands inside its level: ``from`` is this level's threshold,
 * ``share`` (0..1) the way from it to ``next`` (1 at the top), ``toGo`` the XP still needed.
 */
export function standing(progress, table = levelTable) {
  const xp = Math.max(0, Number(progress.xp) || 0);
  const level = Number.isInteger(progress.level) ? progress.level : 0;
  const next = typeof progress.next === "number" ? progress.next : null;
  const from = Math.min(table.threshold(level), xp);
  if (next === null) return { xp, level, next, from, share: 1, toGo: 0 };
  const span = next - from;
  const share = span > 0 ? Math.max(0, Math.min(1, (xp - from) / span)) : xp >= next ? 1 : 0;
  return { xp, level, next, from, share, toGo: Math.max(0, next - xp) };
}

/** "a", "a and b", "a, b and c". */
function listing(words) {
  if (words.length < 2) return words.join("");
  return words.slice(0, -1).join(", ") + " and " + words[words.length - 1];
}

function plural(n, one, many) {
  return n.toLocaleString() + " " + (n === 1 ? one : many);
}

/** The badge, the Levels panel and the celebration. */
export class Levels {
  constructor() {
    const $ = (id) => document.getElementById(id);
    this.ui = {
      button: $("levels-button"),
      buttonText: $("levels-button-text"),
      badge: $("xp-badge"),
      level: $("xp-level"),
      fill: $("xp-fill"),
      points: $("xp-points"),
      panel: $("levels-panel"),
      summary: $("levels-summary"),
      progress: $("levels-progress"),
      progressBar: $("levels-progress-bar"),
      progressText: $("levels-progress-text"),
      noteGuest: $("levels-note-guest"),
      noteAnon: $("levels-note-anon"),
      list: $("levels-list"),
      banner: $("level-up"),
      bannerTitle: $("level-up-title"),
      bannerDetail: $("level-up-detail"),
      bannerClose: $("level-up-close"),
      bannerSee: $("level-up-see"),
      announce: $("levels-announce"),
    };
    this.welcomed = false;
    this.user = null; // welcome.user
    this.progress = { xp: 0, level: 0, next: null };
    this.celebrations = true; // preferences.notifications.level_up
    this.hideTimer = null;
    this.paused = false;
    levelTable.addEventListener("change", () => this.render());
    window.addEventListener("bambid:preferences", (event) => this.onPreferences(event.detail));
    if (this.ui.banner) this.wireBanner();
    if (this.ui.panel) {
      this.ui.panel.addEventListener("show.bs.offcanvas", () => this.hideBanner());
    }
    this.render();
  }

  get earns() {
    return Boolean(this.user && !this.user.guest);
  }

  // --- connection listener ------------------------------------------------------------------

  message(m) {
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
      default:
        break;
    }
    return false;
  }

  onWelcome(m) {
    levelTable.fromWelcome(m);
    this.welcomed = true;
    this.user = m.user && typeof m.user === "object" ? m.user : null;
    this.progress = { xp: 0, level: 0, next: levelTable.threshold(1) || null };
    if (this.earns) this.setProgress(this.user);
    this.render();
  }

  setProgress(data) {
    if (typeof data.xp === "number") this.progress.xp = data.xp;
    if (Number.isInteger(data.level)) this.progress.level = data.level;
    if (typeof data.next === "number" || data.next === null) this.progress.next = data.next;
  }

  onProgress(m) {
    if (!this.earns) return;
    this.setProgress(m);
    this.render();
  }

  onLevelUp(m) {
    if (!this.earns || !Number.isInteger(m.level)) return;
    this.progress.level = Math.max(this.progress.level, m.level);
    this.render();
    if (this.celebrations) this.celebrate(m);
  }

  onPreferences(detail) {
    const notifications = detail && typeof detail === "object" ? detail.notifications : null;
    this.celebrations = !(notifications && notifications.level_up === false);
    if (!this.celebrations) this.hideBanner();
  }

  // --- the badge and the panel ---------------------------------------------------------------

  render() {
    this.renderBadge();
    this.renderPanel();
  }

  renderBadge() {
    const ui = this.ui;
    if (!ui.button) return;
    ui.button.hidden = !this.welcomed;
    ui.badge.hidden = !this.earns;
    ui.buttonText.hidden = this.earns;
    if (!this.earns) {
      ui.button.removeAttribute("aria-label");
      ui.button.title = "Levels and what they unlock";
      return;
    }
    const s = standing(this.progress);
    ui.level.textContent = "Lv " + s.level;
    ui.points.textContent = s.xp + (s.next !== null ? " / " + s.next : "") + " XP";
    ui.fill.style.width = Math.round(s.share * 100) + "%";
    const where =
      s.next !== null
        ? "Level " + s.level + ", " + s.xp + " of " + s.next + " XP for level " + (s.level + 1)
        : "Level " + s.level + ", " + s.xp + " XP, the top level";
    ui.button.setAttribute("aria-label", where + ". Show the levels");
    ui.button.title = where;
  }

  renderPanel() {
    const ui = this.ui;
    if (!ui.panel) return;
    const s = standing(this.progress);
    ui.noteGuest.hidden = !(this.user && this.user.guest);
    ui.noteAnon.hidden = !this.welcomed || this.user !== null;
    ui.progress.hidden = !this.earns;
    if (!this.earns) {
      ui.summary.textContent =
        this.user && this.user.guest ? "Guests stay at level 0." : "You are not signed in.";
      ui.progressText.textContent = "";
    } else {
      ui.summary.textContent = "You are level " + s.level + " · " + plural(s.xp, "XP", "XP");
      const percent = Math.round(s.share * 100);
      ui.progressBar.style.width = percent + "%";
      ui.progress.setAttribute("aria-valuemin", String(s.from));
      ui.progress.setAttribute("aria-valuemax", String(s.next !== null ? s.next : s.xp));
      ui.progress.setAttribute("aria-valuenow", String(s.xp));
      if (s.next !== null) {
        const nextRow = levelTable.rows[s.level];
        const unlocks = nextRow ? " (" + nextRow.label + ")" : "";
        ui.progressText.textContent =
          plural(s.toGo, "XP", "XP") + " to level " + (s.level + 1) + unlocks + ".";
        ui.progress.setAttribute(
          "aria-valuetext",
          s.xp + " of " + s.next + " XP; " + s.toGo + " to level " + (s.level + 1),
        );
      } else {
        ui.progressText.textContent = "You have reached the top level.";
        ui.progress.setAttribute("aria-valuetext", "The top level");
      }
    }
    ui.list.replaceChildren(...levelTable.rows.map((row) => this.buildRow(row, s)));
  }

  buildRow(row, s) {
    let state = "locked";
    if (this.earns && s.level >= row.level) state = "reached";
    else if (this.earns && row.level === s.level + 1) state = "next";
    const li = el("li", "levels-item levels-item--" + state);
    li.dataset.level = String(row.level);
    li.dataset.state = state;
    li.dataset.feature = row.feature;
    if (state === "reached" && row.level === s.level) li.setAttribute("aria-current", "step");

    // Spaces between the parts, so that they are read (and copied) as words.
    const head = el("div", "levels-item-head");
    head.append(
      el("span", "levels-item-level", "Level " + row.level),
      " ",
      el("span", "levels-item-xp", plural(row.xp, "XP", "XP")),
      " ",
    );
    const badge = el("span", "levels-item-state");
    if (state === "reached") {
      const tick = el("span", "levels-item-tick", "✓");
      tick.setAttribute("aria-hidden", "true");
      badge.append(tick, " Reached");
    } else {
      const toGo = Math.max(0, row.xp - s.xp);
      const lead = state === "next" ? "Next" : "Locked";
      badge.textContent = this.earns ? lead + " · " + plural(toGo, "XP", "XP") + " to go" : lead;
    }
    head.append(badge);

    const what = el("p", "levels-item-unlock");
    what.append(el("span", "levels-item-label", row.label));
    if (row.description) what.append(" ", el("span", "levels-item-desc", row.description));
    li.append(head, what);
    return li;
  }

  // --- the celebration -----------------------------------------------------------------------

  wireBanner() {
    const ui = this.ui;
    ui.bannerClose.addEventListener("click", () => this.hideBanner());
    ui.bannerSee.addEventListener("click", () => {
      this.hideBanner();
      // Through the badge button, so that closing the panel brings the focus back to it.
      if (ui.button && !ui.button.hidden) ui.button.click();
    });
    ui.banner.addEventListener("keydown", (event) => {
      if (event.key === "Escape") {
        event.stopPropagation();
        this.hideBanner();
      }
    });
    // Reading it or pointing at it keeps it up.
    const pause = () => {
      this.paused = true;
      this.clearTimer();
    };
    const resume = () => {
      this.paused = false;
      if (!ui.banner.hidden) this.startTimer();
    };
    ui.banner.addEventListener("mouseenter", pause);
    ui.banner.addEventListener("mouseleave", () => {
      if (!ui.banner.contains(document.activeElement)) resume();
    });
    ui.banner.addEventListener("focusin", pause);
    ui.banner.addEventListener("focusout", (event) => {
      if (!ui.banner.contains(event.relatedTarget) && !ui.banner.matches(":hover")) resume();
    });
  }

  celebrate(m) {
    const ui = this.ui;
    if (!ui.banner) return;
    const features = Array.isArray(m.unlocked)
      ? m.unlocked.filter((f) => typeof f === "string" && f).slice(0, MAX_LEVELS)
      : [];
    const labels = features.map((f) => levelTable.label(f));
    const title =
      "Level " + m.level + " reached" + (labels.length ? " — " + listing(labels) + " unlocked" : "");
    const detail = features.map((f) => levelTable.description(f)).filter(Boolean).join(" ");
    ui.bannerTitle.textContent = title;
    ui.bannerDetail.textContent = detail;
    ui.bannerDetail.hidden = !detail;
    ui.banner.dataset.level = String(m.level);
    // Shown without moving the focus; announced politely by the live region.
    ui.banner.hidden = false;
    ui.banner.classList.remove("levels-celebration--in");
    void ui.banner.offsetWidth; // restart the animation for a second level in a row
    ui.banner.classList.add("levels-celebration--in");
    this.announce(title + ".");
    if (ui.button) {
      ui.button.classList.remove("chat-xp-button--up");
      void ui.button.offsetWidth;
      ui.button.classList.add("chat-xp-button--up");
    }
    this.clearTimer();
    if (!this.paused) this.startTimer();
  }

  announce(message) {
    const region = this.ui.announce;
    if (!region) return;
    region.textContent = "";
    // A moment later, so that the same words twice in a row are announced twice.
    window.setTimeout(() => {
      region.textContent = message;
    }, 100);
  }

  startTimer() {
    this.clearTimer();
    this.hideTimer = window.setTimeout(() => this.hideBanner(), CELEBRATION_MS);
  }

  clearTimer() {
    if (this.hideTimer !== null) window.clearTimeout(this.hideTimer);
    this.hideTimer = null;
  }

  hideBanner() {
    const ui = this.ui;
    this.clearTimer();
    this.paused = false;
    if (!ui.banner || ui.banner.hidden) return;
    const hadFocus = ui.banner.contains(document.activeElement);
    ui.banner.hidden = true;
    ui.banner.classList.remove("levels-celebration--in");
    // Never leave the focus on a button that vanished.
    if (hadFocus && ui.button && !ui.button.hidden) ui.button.focus();
  }
}
