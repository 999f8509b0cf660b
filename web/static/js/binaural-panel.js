// The binaural beats card (level 7, ``binaural``; sequences at level 8, ``advanced_binaural``):
// the beat of binaural.js played in this tab on the page's shared AudioContext, with presets,
// a custom beat, the tone (carrier), the volume, timed sequences and a clear Stop. The choices
// are stored with ``settings.set`` section "binaural" and follow ``settings.state`` from other
// tabs; the sound itself plays only in the tab where Play was pressed. Part of effects.js.
//
// The panel's ``data-playing``, ``data-preset``, ``data-beat``, ``data-pattern`` and
// ``data-segment`` say what sounds (docs/ui.md, "Effect panels").

import { Binaural, PATTERNS, PRESETS } from "./binaural.js";
import { audioContext } from "./playback.js";

/** The section's defaults (docs/protocol.md). */
export const DEFAULTS = Object.freeze({
  preset: "alpha",
  beat: 10,
  carrier: 200,
  volume: 0.5,
  pattern: "",
  total_minutes: 20,
  transition_seconds: 30,
});

const NAMES = { alpha: "Alpha", theta: "Theta", delta: "Delta", beta: "Beta", custom: "Custom" };
const PATTERN_NAMES = {
  descent: "Descent",
  ascent: "Ascent",
  focus: "Focus",
  trance: "Calm",
};

function hz(value) {
  return (Number.isInteger(value) ? String(value) : value.toFixed(1)) + " Hz";
}

function number(value, fallback) {
  return typeof value === "number" && Number.isFinite(value) ? value : fallback;
}

export class BinauralPanel {
  constructor(host, card) {
    this.host = host;
    this.card = card;
    this.feature = "binaural";
    const $ = (id) => document.getElementById(id);
    this.ui = {
      badge: card.querySelector("[data-badge]"),
      panel: $("fx-binaural-panel"),
      presets: [...card.querySelectorAll("input[name='fx-binaural-preset']")],
      beat: $("fx-binaural-beat"),
      beatOut: $("fx-binaural-beat-out"),
      carrier: $("fx-binaural-carrier"),
      carrierOut: $("fx-binaural-carrier-out"),
      volume: $("fx-binaural-volume"),
      volumeOut: $("fx-binaural-volume-out"),
      sequences: $("fx-binaural-sequences"),
      pattern: $("fx-binaural-pattern"),
      patternHelp: $("fx-binaural-pattern-help"),
      minutes: $("fx-binaural-minutes"),
      minutesOut: $("fx-binaural-minutes-out"),
      transition: $("fx-binaural-transition"),
      transitionOut: $("fx-binaural-transition-out"),
      play: $("fx-binaural-play"),
      stop: $("fx-binaural-stop"),
      status: $("fx-binaural-status"),
      error: $("fx-binaural-error"),
    };
    this.values = { ...DEFAULTS };
    this.beats = null; // the Binaural, made on the first Play (inside the gesture)
    this.section = host.settings("binaural", {
      apply: (values) => this.apply(values),
      failed: (text) => this.showError(text),
    });
    this.wire();
    this.showValues();
    this.render();
  }

  // --- from the host ----------------------------------------------------------------------

  welcome() {
    if (!this.host.unlocked(this.feature)) this.stop();
    this.render();
  }

  levelChanged() {
    if (!this.host.unlocked(this.feature)) this.stop();
    this.showValues();
    this.render();
  }

  // --- settings ---------------------------------------------------------------------------

  get sequencesUnlocked() {
    return this.host.unlocked("advanced_binaural");
  }

  apply(values) {
    const v = { ...this.values };
    if (typeof values.preset === "string" && (values.preset in PRESETS || values.preset === "custom")) {
      v.preset = values.preset;
    }
    if (typeof values.pattern === "string" && (values.pattern === "" || values.pattern in PATTERNS)) {
      v.pattern = values.pattern;
    }
    for (const key of ["beat", "carrier", "volume", "total_minutes", "transition_seconds"]) {
      v[key] = number(values[key], v[key]);
    }
    const before = this.values;
    this.values = v;
    this.showValues();
    this.retune(before);
    this.render();
  }

  change(values) {
    this.ui.error.textContent = "";
    this.section.change(values);
    this.apply({ ...this.values, ...values });
  }

  /** The beat the steady settings give (a preset's, or the custom one). */
  get steadyBeat() {
    const v = this.values;
    return v.preset === "custom" ? v.beat : PRESETS[v.preset];
  }

  showValues() {
    const ui = this.ui;
    const v = this.values;
    for (const input of ui.presets) input.checked = input.value === v.preset;
    const beat = this.steadyBeat;
    ui.beat.value = String(beat);
    ui.beatOut.textContent = hz(beat);
    ui.carrier.value = String(v.carrier);
    ui.carrierOut.textContent = hz(v.carrier);
    ui.volume.value = String(Math.round(v.volume * 100));
    ui.volumeOut.textContent = Math.round(v.volume * 100) + "%";
    const locked = !this.sequencesUnlocked;
    ui.pattern.value = locked ? "" : v.pattern;
    ui.pattern.disabled = locked;
    ui.patternHelp.textContent = locked
      ? this.host.lockText("advanced_binaural") + "."
      : "A sequence glides from one beat to the next over its length.";
    const steady = locked || v.pattern === "";
    ui.minutes.value = String(v.total_minutes);
    ui.minutesOut.textContent = v.total_minutes + " min";
    ui.transition.value = String(v.transition_seconds);
    ui.transitionOut.textContent = v.transition_seconds + " s";
    ui.minutes.disabled = steady;
    ui.transition.disabled = steady;
    ui.sequences.dataset.locked = locked ? "true" : "false";
  }

  // --- sound ------------------------------------------------------------------------------

  /** What Play plays now: a sequence (level 8 and one chosen) or the steady beat. */
  get chosenPattern() {
    return this.sequencesUnlocked ? this.values.pattern : "";
  }

  play() {
    this.ui.error.textContent = "";
    if (!this.host.unlocked(this.feature)) return;
    try {
      if (!this.beats) this.makeBeats();
      const v = this.values;
      const pattern = this.chosenPattern;
      if (pattern) {
        this.beats.sequence(pattern, {
          totalMinutes: v.total_minutes,
          transitionSeconds: v.transition_seconds,
          carrier: v.carrier,
          volume: v.volume,
        });
      } else {
        this.beats.play(this.steadyOptions());
      }
    } catch (err) {
      this.showError("The beats could not start: " + (err && err.message ? err.message : err) + ".");
    }
    this.render();
  }

  steadyOptions() {
    const v = this.values;
    return v.preset === "custom"
      ? { beat: v.beat, carrier: v.carrier, volume: v.volume }
      : { preset: v.preset, carrier: v.carrier, volume: v.volume };
  }

  makeBeats() {
    // The page's one AudioContext (playback.js), unlocked by the first gesture; Binaural makes
    // its own where Web Audio is missing there.
    this.beats = new Binaural(audioContext());
    for (const type of ["start", "change", "segment", "end"]) {
      this.beats.addEventListener(type, (event) => this.onSound(type, event.detail));
    }
  }

  stop() {
    if (this.beats && this.beats.playing) this.beats.stop();
    this.render();
  }

  /** While a steady beat plays, a change of its settings is heard at once. */
  retune(before) {
    const beats = this.beats;
    if (!beats || !beats.playing) return;
    const v = this.values;
    if (v.volume !== before.volume) beats.setVolume(v.volume);
    if (beats.pattern) return; // a sequence keeps its plan until the next Play
    if (v.preset !== before.preset || v.beat !== before.beat || v.carrier !== before.carrier) {
      beats.play(this.steadyOptions());
    }
  }

  onSound(type, detail) {
    if (type === "end") {
      this.ui.status.textContent =
        detail && detail.reason === "finished" ? "The sequence has ended." : "Stopped.";
    }
    this.render();
  }

  // --- showing it -------------------------------------------------------------------------

  render() {
    const ui = this.ui;
    const beats = this.beats;
    const playing = Boolean(beats && beats.playing);
    const panel = ui.panel;
    panel.dataset.playing = playing ? "true" : "false";
    panel.dataset.preset = playing ? beats.preset : "";
    panel.dataset.beat = playing ? String(beats.beat) : "";
    panel.dataset.pattern = playing && beats.pattern ? beats.pattern : "";
    const segment = playing ? beats.segment : null;
    panel.dataset.segment = segment ? String(segment.index) : "";
    ui.stop.disabled = !playing;
    if (playing) ui.status.textContent = "Playing: " + this.describe(segment) + ".";
    if (this.host.unlocked(this.feature)) {
      ui.badge.textContent = playing ? "Playing" : "";
      ui.badge.dataset.kind = playing ? "on" : "off";
    }
  }

  /** "Alpha · 10 Hz beat on a 200 Hz tone", or a sequence's part. */
  describe(segment) {
    const beats = this.beats;
    if (beats.pattern && segment) {
      const wave = (NAMES[segment.wave] || segment.wave).toLowerCase();
      return (
        (PATTERN_NAMES[beats.pattern] || beats.pattern) +
        " · part " +
        (segment.index + 1) +
        " of " +
        segment.count +
        ": " +
        wave +
        " " +
        hz(segment.beat) +
        " for " +
        Math.max(1, Math.round(segment.seconds / 60)) +
        " min"
      );
    }
    const name = NAMES[beats.preset] || beats.preset;
    return name + " · " + hz(beats.beat) + " beat on a " + hz(beats.carrier) + " tone";
  }

  showError(text) {
    this.ui.error.textContent = text;
  }

  wire() {
    const ui = this.ui;
    for (const input of ui.presets) {
      input.addEventListener("change", () => {
        if (input.checked) this.change({ preset: input.value });
      });
    }
    ui.beat.addEventListener("input", () => {
      this.change({ preset: "custom", beat: Number(ui.beat.value) });
    });
    ui.carrier.addEventListener("input", () => this.change({ carrier: Number(ui.carrier.value) }));
    ui.volume.addEventListener("input", () => this.change({ volume: Number(ui.volume.value) / 100 }));
    ui.pattern.addEventListener("change", () => this.change({ pattern: ui.pattern.value }));
    ui.minutes.addEventListener("input", () => this.change({ total_minutes: Number(ui.minutes.value) }));
    ui.transition.addEventListener("input", () => {
      this.change({ transition_seconds: Number(ui.transition.value) });
    });
    ui.play.addEventListener("click", () => this.play());
    ui.stop.addEventListener("click", () => {
      this.stop();
      ui.play.focus();
    });
    // Escape anywhere in the card stops the sound.
    this.card.addEventListener("keydown", (event) => {
      if (event.key === "Escape" && this.beats && this.beats.playing) {
        event.preventDefault();
        this.stop();
      }
    });
  }
}
