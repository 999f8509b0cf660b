// The spirals card (level 4, ``spirals``): the two animated spirals of spirals.js on a stage in
// the card, switched on or off, each with its width and speed; stored with ``settings.set``
// section "spirals" and applied from ``settings.state`` on every tab (docs/protocol.md,
// "settings.get → settings.state"). Part of effects.js (the host).
//
// Rules (docs/ui.md, "Effect panels"): the spirals have a stage of their own (never behind
// text); they animate only while switched on, the card is open and the stage is on screen;
// under "reduce motion" one still frame is shown; a trigger cue makes the stage glow briefly
// (not under reduce motion). The stage's ``data-state`` says what it does: ``off``,
// ``paused``, ``animating`` or ``still``.

import { playback } from "./playback.js";
import { Spirals } from "./spirals.js";

/** The clips of the playback queue that are trigger cues: the spirals glow as they start. */
const CUE_KINDS = new Set(["cue", "playlist"]);

/** The section's defaults (docs/protocol.md): off until the person switches them on. */
export const DEFAULTS = Object.freeze({
  enabled: false,
  spiral1Width: 5,
  spiral2Width: 3,
  spiral1Speed: 20,
  spiral2Speed: 15,
});

const WIDTHS = ["spiral1Width", "spiral2Width"];
const SPEEDS = ["spiral1Speed", "spiral2Speed"];
const SPEED_SUM = 55; // a speed slider shows 55 - value: right is faster (the value is a period)
const PULSE_MS = 1200;

/** Seconds per pulse of a spiral whose speed setting is ``value`` (60 fps frames, sin(f / v)). */
function pulseSeconds(value) {
  return (2 * Math.PI * value) / 60;
}

function number(value, fallback) {
  return typeof value === "number" && Number.isFinite(value) ? value : fallback;
}

export class SpiralsPanel {
  constructor(host, card) {
    this.host = host;
    this.card = card;
    this.feature = "spirals";
    const $ = (id) => document.getElementById(id);
    this.ui = {
      badge: card.querySelector("[data-badge]"),
      stage: $("fx-spirals-stage"),
      canvas: $("fx-spirals-canvas"),
      note: $("fx-spirals-note"),
      full: $("fx-spirals-full"),
      enabled: $("fx-spirals-enabled"),
      motion: $("fx-spirals-motion"),
      error: $("fx-spirals-error"),
      sliders: {},
      outputs: {},
    };
    for (const key of [...WIDTHS, ...SPEEDS]) {
      this.ui.sliders[key] = $("fx-" + key);
      this.ui.outputs[key] = $("fx-" + key + "-out");
    }
    this.values = { ...DEFAULTS };
    this.spirals = null; // created the first time they are shown
    this.onScreen = false;
    this.pulseTimer = 0;
    this.section = host.settings("spirals", {
      apply: (values) => this.apply(values),
      failed: (text) => this.showError(text),
    });
    this.motionQuery = window.matchMedia ? window.matchMedia("(prefers-reduced-motion: reduce)") : null;
    this.wire();
    this.showValues();
    this.render();
  }

  // --- from the host ----------------------------------------------------------------------

  welcome() {
    this.render();
  }

  levelChanged() {
    this.render();
  }

  // --- settings ---------------------------------------------------------------------------

  apply(values) {
    const next = { ...this.values };
    if (typeof values.enabled === "boolean") next.enabled = values.enabled;
    for (const key of [...WIDTHS, ...SPEEDS]) next[key] = number(values[key], next[key]);
    this.values = next;
    this.showValues();
    this.render();
  }

  change(values) {
    this.ui.error.textContent = "";
    this.section.change(values);
    this.apply({ ...this.values, ...values });
  }

  showValues() {
    const ui = this.ui;
    ui.enabled.checked = this.values.enabled;
    for (const key of WIDTHS) {
      const value = this.values[key];
      ui.sliders[key].value = String(value);
      ui.outputs[key].textContent = String(value);
      ui.sliders[key].setAttribute("aria-valuetext", value + " pixels");
    }
    for (const key of SPEEDS) {
      const value = this.values[key];
      ui.sliders[key].value = String(SPEED_SUM - value);
      const text = pulseSeconds(value).toFixed(1) + " s";
      ui.outputs[key].textContent = text;
      ui.sliders[key].setAttribute("aria-valuetext", "one pulse every " + text.replace("s", "seconds"));
    }
  }

  // --- the stage --------------------------------------------------------------------------

  get reducedMotion() {
    return Boolean(this.motionQuery && this.motionQuery.matches);
  }

  /** Start or stop the spirals to match the settings, the card and the screen. */
  render() {
    const ui = this.ui;
    const unlocked = this.host.unlocked(this.feature);
    const on = unlocked && this.values.enabled;
    const shown = on && this.card.open && this.onScreen;
    if (shown && !this.spirals) {
      this.spirals = new Spirals(ui.canvas, this.values);
      this.spirals.addEventListener("statechange", () => this.showState());
    }
    if (this.spirals) {
      this.spirals.update(this.values);
      if (shown) this.spirals.start();
      else this.spirals.stop();
    }
    ui.motion.hidden = !(on && this.reducedMotion);
    ui.full.hidden = !on || !document.fullscreenEnabled;
    ui.note.hidden = on;
    ui.note.textContent = "Spirals are off.";
    if (unlocked) {
      ui.badge.textContent = this.values.enabled ? "On" : "Off";
      ui.badge.dataset.kind = this.values.enabled ? "on" : "off";
    }
    this.showState();
  }

  showState() {
    const spirals = this.spirals;
    let state = "off";
    if (this.host.unlocked(this.feature) && this.values.enabled) {
      if (spirals && spirals.animating) state = "animating";
      else if (spirals && spirals.running && spirals.reducedMotion) state = "still";
      else state = "paused";
    }
    this.ui.stage.dataset.state = state;
  }

  /** A short glow of the stage (a trigger cue); nothing under reduce motion or when off. */
  pulse() {
    const state = this.ui.stage.dataset.state;
    if (this.reducedMotion || (state !== "animating" && state !== "still")) return;
    const stage = this.ui.stage;
    stage.classList.remove("fx-stage--pulse");
    void stage.offsetWidth; // restart the animation
    stage.classList.add("fx-stage--pulse");
    window.clearTimeout(this.pulseTimer);
    this.pulseTimer = window.setTimeout(() => stage.classList.remove("fx-stage--pulse"), PULSE_MS);
  }

  toggleFullscreen() {
    if (document.fullscreenElement) {
      document.exitFullscreen().catch(() => {});
      return;
    }
    if (this.ui.stage.requestFullscreen) this.ui.stage.requestFullscreen().catch(() => {});
  }

  showError(text) {
    this.ui.error.textContent = text;
  }

  wire() {
    const ui = this.ui;
    ui.enabled.addEventListener("change", () => this.change({ enabled: ui.enabled.checked }));
    for (const key of WIDTHS) {
      ui.sliders[key].addEventListener("input", () => {
        this.change({ [key]: Number(ui.sliders[key].value) });
      });
    }
    for (const key of SPEEDS) {
      ui.sliders[key].addEventListener("input", () => {
        this.change({ [key]: SPEED_SUM - Number(ui.sliders[key].value) });
      });
    }
    ui.full.addEventListener("click", () => this.toggleFullscreen());
    // A trigger's cue starts sounding (the playback queue): the spirals glow with it.
    playback.addEventListener("start", (event) => {
      if (event.detail && CUE_KINDS.has(event.detail.kind)) this.pulse();
    });
    document.addEventListener("fullscreenchange", () => {
      const full = document.fullscreenElement === ui.stage;
      ui.full.setAttribute("aria-label", full ? "Leave full screen" : "Full screen");
      ui.full.title = full ? "Leave full screen (Esc)" : "Full screen";
    });
    this.card.addEventListener("toggle", () => this.render());
    if (this.motionQuery) this.motionQuery.addEventListener("change", () => this.render());
    if (typeof IntersectionObserver === "function") {
      const observer = new IntersectionObserver((entries) => {
        const entry = entries[entries.length - 1];
        this.onScreen = entry.isIntersecting;
        this.render();
      });
      observer.observe(ui.stage);
    } else {
      this.onScreen = true;
    }
  }
}
