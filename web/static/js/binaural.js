/**
 * Binaural beats on the Web Audio API: two sine oscillators, the left at the
 * carrier frequency and the right at carrier + beat, joined by a
 * ChannelMerger (left → channel 0, right → channel 1) into an envelope gain
 * (fades) and a level gain (the volume). Headphones are needed for the effect;
 * the output must stay stereo (do not route it through a mono node).
 *
 * Usage:
 *
 *     import { Binaural } from "/static/js/binaural.js";
 *     const beats = new Binaural(sharedAudioContext);   // or new Binaural(): created on play()
 *     beats.addEventListener("end", (e) => console.log(e.detail.reason));
 *     beats.play({ preset: "theta", carrier: 200, volume: 0.4 });
 *     beats.play({ beat: 7.5 });                  // retunes smoothly while playing
 *     beats.setVolume(0.2);                       // ramps, no clicks
 *     beats.sequence("descent", { totalMinutes: 20, transitionSeconds: 30 });
 *     beats.sequence([{ wave: "alpha", minutes: 2 }, { beat: 4, minutes: 8 }]);
 *     await beats.stop();                         // quick fade, oscillators really stopped
 *
 * Values (clamped; non-numbers fall back to the current value):
 *   presets  alpha 10 Hz, theta 6, delta 2, beta 20 (PRESETS); custom beat 1-30 Hz
 *   carrier  100-500 Hz, default 200
 *   volume   0-1, default 0.5 (1 = each ear a sine at -6 dBFS)
 *
 * Sequences: a built-in pattern name (PATTERNS: descent, ascent, focus, trance,
 * after the original) or a list of 1-32 segments `{wave, minutes}` or
 * `{beat, minutes}` (minutes > 0, at most 60; a wave name gives its preset beat;
 * both may be given). Options: `totalMinutes` (> 0, at most 1440) scales the
 * segments to that total; `transitionSeconds` (0-120, default 30; at most half a
 * segment) is the glide from one beat to the next at each boundary (a
 * linearRampToValueAtTime on the audio clock); `carrier`, `volume`. Frequencies
 * and the final fade are scheduled on the audio clock, so the sound is exact even
 * when timers are throttled; the "segment" and "end" events follow the audio
 * clock (timers that re-check `currentTime`). When the sequence ends the sound
 * fades out and the oscillators stop ("end" with reason "finished").
 *
 * `play()` while a sequence runs ends the sequence and keeps the tone (glide to
 * the new beat). `stop()` fades out in 60 ms, stops and disconnects the
 * oscillators and returns a Promise that resolves once they have ended.
 *
 * Getters: `playing`, `beat` (Hz; in a sequence, the current segment's beat),
 * `carrier`, `volume`, `preset` ("alpha"... or "custom"), `pattern` (the
 * sequence's name, "custom" or null), `segment` (see the "segment" event, or
 * null), `sounding` (oscillators exist and have not ended yet: true for a moment
 * after stop()), `context` (the AudioContext, or null before the first play()).
 *
 * Events (the instance is an EventTarget; CustomEvent detail shown):
 *   "start"    {beat, carrier, volume, preset}        the oscillators started
 *   "change"   {beat, carrier, volume, preset}        retuned by play() while playing
 *   "segment"  {index, count, wave, beat, seconds, pattern}   a sequence segment began
 *   "end"      {reason: "stopped" | "finished"}       the sound ended
 */

/** Beat frequencies (Hz) of the presets. */
export const PRESETS = Object.freeze({ alpha: 10, theta: 6, delta: 2, beta: 20 });

function segment(wave, beat, minutes) {
  return Object.freeze({ wave, beat, minutes });
}

/** The original's timed patterns (segments of `{wave, beat, minutes}`). */
export const PATTERNS = Object.freeze({
  descent: Object.freeze([
    segment("alpha", 10, 5),
    segment("theta", 6, 10),
    segment("delta", 2, 5),
  ]),
  ascent: Object.freeze([segment("delta", 2, 5), segment("theta", 6, 10), segment("alpha", 10, 5)]),
  focus: Object.freeze([segment("alpha", 10, 5), segment("beta", 18, 10), segment("alpha", 10, 5)]),
  trance: Object.freeze([segment("alpha", 10, 5), segment("theta", 6, 10), segment("alpha", 9, 5)]),
});

export const LIMITS = Object.freeze({
  beat: Object.freeze({ min: 1, max: 30 }),
  carrier: Object.freeze({ min: 100, max: 500, default: 200 }),
  volume: Object.freeze({ min: 0, max: 1, default: 0.5 }),
  minutes: Object.freeze({ max: 60 }),
  totalMinutes: Object.freeze({ max: 1440 }),
  transitionSeconds: Object.freeze({ min: 0, max: 120, default: 30 }),
  segments: Object.freeze({ max: 32 }),
});

const MAX_GAIN = 0.5;
const FADE_IN = 0.5;
const STOP_FADE = 0.06;
const END_FADE = 3;
const VOLUME_RAMP = 0.1;
const GLIDE = 1;

function clamp(value, min, max, fallback) {
  const number = typeof value === "string" && value.trim() !== "" ? Number(value) : value;
  if (typeof number !== "number" || !Number.isFinite(number)) return fallback;
  return Math.min(max, Math.max(min, number));
}

/** The band a beat frequency falls in. */
export function waveOf(beat) {
  if (beat < 4) return "delta";
  if (beat < 8) return "theta";
  if (beat < 13) return "alpha";
  return "beta";
}

/**
 * A pattern (a PATTERNS name or a list of segments) as a list of
 * `{index, wave, beat, seconds}`, scaled to `totalMinutes` when given.
 * Throws RangeError naming what is wrong.
 */
export function resolvePattern(pattern, totalMinutes) {
  let segments = pattern;
  if (typeof pattern === "string") {
    segments = PATTERNS[pattern];
    if (!Object.hasOwn(PATTERNS, pattern)) throw new RangeError("unknown pattern: " + pattern);
  }
  if (!Array.isArray(segments) || segments.length === 0) {
    throw new RangeError("a pattern is a name or a non-empty list of segments");
  }
  if (segments.length > LIMITS.segments.max) {
    throw new RangeError("at most " + LIMITS.segments.max + " segments");
  }
  const resolved = segments.map((item, index) => {
    if (!item || typeof item !== "object") throw new RangeError(`segment ${index}: not an object`);
    let beat = null;
    if (item.beat !== undefined) {
      beat = clamp(item.beat, LIMITS.beat.min, LIMITS.beat.max, null);
    } else if (typeof item.wave === "string" && Object.hasOwn(PRESETS, item.wave)) {
      beat = PRESETS[item.wave];
    }
    if (beat === null) throw new RangeError(`segment ${index}: needs a wave name or a beat`);
    const minutes = clamp(item.minutes, 0, LIMITS.minutes.max, 0);
    if (!(minutes > 0)) throw new RangeError(`segment ${index}: minutes must be above 0`);
    const wave = typeof item.wave === "string" && Object.hasOwn(PRESETS, item.wave)
      ? item.wave
      : waveOf(beat);
    return { index, wave, beat, seconds: minutes * 60 };
  });
  if (totalMinutes !== undefined && totalMinutes !== null) {
    const total = clamp(totalMinutes, 0, LIMITS.totalMinutes.max, 0);
    if (!(total > 0)) throw new RangeError("totalMinutes must be above 0");
    const sum = resolved.reduce((seconds, item) => seconds + item.seconds, 0);
    for (const item of resolved) item.seconds *= (total * 60) / sum;
  }
  return resolved;
}

/** Keep ``param`` at its present value from ``time`` on, dropping later automation. */
function hold(param, time) {
  if (typeof param.cancelAndHoldAtTime === "function") {
    param.cancelAndHoldAtTime(time);
  } else {
    const value = param.value;
    param.cancelScheduledValues(time);
    param.setValueAtTime(value, time);
  }
}

function glide(param, value, time, seconds) {
  hold(param, time);
  if (seconds > 0) param.linearRampToValueAtTime(value, time + seconds);
  else param.setValueAtTime(value, time);
}

export class Binaural extends EventTarget {
  /**
   * @param {AudioContext|null} context  a shared (unlocked) context; otherwise one
   *   is created on the first play() or sequence()
   * @param {{destination?: AudioNode}} options  where the sound goes (default:
   *   the context's destination)
   */
  constructor(context = null, options = {}) {
    super();
    this._context = context;
    this._owned = false;
    this._destination = options.destination || null;
    this._nodes = null;
    this._beat = PRESETS.alpha;
    this._preset = "alpha";
    this._carrier = LIMITS.carrier.default;
    this._volume = LIMITS.volume.default;
    this._sequence = null;
    this._timer = 0;
    this._sounding = 0;
  }

  get playing() {
    return this._nodes !== null;
  }

  get beat() {
    return this._beat;
  }

  get carrier() {
    return this._carrier;
  }

  get volume() {
    return this._volume;
  }

  get preset() {
    return this._preset;
  }

  get pattern() {
    return this._sequence ? this._sequence.name : null;
  }

  get segment() {
    const sequence = this._sequence;
    if (!sequence || sequence.index < 0) return null;
    return this._segmentDetail(sequence, sequence.index);
  }

  get sounding() {
    return this._sounding > 0;
  }

  get context() {
    return this._context;
  }

  /**
   * Play a steady beat: `{preset}` ("alpha", "theta", "delta", "beta") or `{beat}`
   * (1-30 Hz), `{carrier}`, `{volume}`; missing values keep the current ones.
   * Starts the oscillators (fade in) or retunes them (glide of `glide` seconds,
   * default 1). Ends a running sequence. Throws RangeError for an unknown preset.
   */
  play(options = {}) {
    let beat = this._beat;
    let preset = this._preset;
    if (options.preset !== undefined && options.preset !== "custom") {
      if (!Object.hasOwn(PRESETS, options.preset)) {
        throw new RangeError("unknown preset: " + options.preset);
      }
      beat = PRESETS[options.preset];
      preset = options.preset;
    } else if (options.beat !== undefined || options.preset === "custom") {
      beat = clamp(options.beat, LIMITS.beat.min, LIMITS.beat.max, beat);
      preset = "custom";
    }
    const carrier = clamp(options.carrier, LIMITS.carrier.min, LIMITS.carrier.max, this._carrier);
    this._volume = clamp(options.volume, LIMITS.volume.min, LIMITS.volume.max, this._volume);
    const seconds = clamp(options.glide, 0, 10, GLIDE);
    this._endSequence();
    this._tune(beat, carrier, preset, seconds);
  }

  /**
   * Play a timed sequence (see the module comment): `pattern` is a PATTERNS name or
   * a list of segments; `options` `{totalMinutes, transitionSeconds, carrier,
   * volume}`. Replaces a running sequence or steady beat (gliding from it).
   * Throws RangeError for an invalid pattern, before any sound changes.
   */
  sequence(pattern, options = {}) {
    const segments = resolvePattern(pattern, options.totalMinutes);
    const transition = clamp(
      options.transitionSeconds,
      LIMITS.transitionSeconds.min,
      LIMITS.transitionSeconds.max,
      LIMITS.transitionSeconds.default,
    );
    const carrier = clamp(options.carrier, LIMITS.carrier.min, LIMITS.carrier.max, this._carrier);
    this._volume = clamp(options.volume, LIMITS.volume.min, LIMITS.volume.max, this._volume);
    this._endSequence();
    const first = segments[0];
    this._tune(first.beat, carrier, first.wave, Math.min(transition, first.seconds / 2));

    const ctx = this._context;
    const nodes = this._nodes;
    const t0 = ctx.currentTime;
    const starts = [];
    let at = t0;
    for (const item of segments) {
      starts.push(at);
      at += item.seconds;
    }
    const end = at;
    const total = end - t0;
    const right = nodes.right.frequency;
    for (let i = 1; i < segments.length; i++) {
      const ramp = Math.min(transition, segments[i].seconds / 2);
      right.setValueAtTime(carrier + segments[i - 1].beat, starts[i]);
      if (ramp > 0) right.linearRampToValueAtTime(carrier + segments[i].beat, starts[i] + ramp);
      else right.setValueAtTime(carrier + segments[i].beat, starts[i]);
    }
    const envelope = nodes.envelope.gain;
    const fadeIn = Math.min(FADE_IN, total / 4);
    glide(envelope, 1, t0, fadeIn);
    const fadeOut = Math.min(END_FADE, segments[segments.length - 1].seconds / 2, total / 4);
    envelope.setValueAtTime(1, end - fadeOut);
    envelope.linearRampToValueAtTime(0, end);

    this._sequence = {
      name: typeof pattern === "string" ? pattern : "custom",
      segments,
      starts,
      end,
      carrier,
      index: -1,
      nodes,
    };
    this._advance();
  }

  /** Set the volume (0-1) with a short ramp. */
  setVolume(volume) {
    this._volume = clamp(volume, LIMITS.volume.min, LIMITS.volume.max, this._volume);
    if (this._nodes) {
      glide(this._nodes.level.gain, this._volume * MAX_GAIN, this._context.currentTime, VOLUME_RAMP);
    }
  }

  /**
   * Fade out quickly and stop the oscillators; "end" {reason: "stopped"} is
   * dispatched at once. The Promise resolves when the oscillators have ended and
   * are disconnected (at once if nothing plays or the context is not running).
   */
  stop() {
    return this._silence("stopped");
  }

  /** Stop, and close the AudioContext if this instance created it. */
  async dispose() {
    await this.stop();
    if (this._owned && this._context && this._context.state !== "closed") {
      await this._context.close();
    }
    if (this._owned) this._context = null;
  }

  // --- internals ----------------------------------------------------------------

  _ensureContext() {
    if (!this._context) {
      const AudioContextClass = window.AudioContext || window.webkitAudioContext;
      if (!AudioContextClass) throw new Error("this browser has no Web Audio");
      this._context = new AudioContextClass();
      this._owned = true;
    }
    if (this._context.state === "suspended") {
      // Without a user gesture this may stay pending; the sound starts when it resolves.
      this._context.resume().catch(() => {});
    }
    return this._context;
  }

  /** Start the oscillators at (beat, carrier), or glide the running ones there. */
  _tune(beat, carrier, preset, seconds) {
    const ctx = this._ensureContext();
    const now = ctx.currentTime;
    this._beat = beat;
    this._carrier = carrier;
    this._preset = preset;
    const detail = { beat, carrier, volume: this._volume, preset };
    if (this._nodes) {
      const nodes = this._nodes;
      glide(nodes.left.frequency, carrier, now, seconds);
      glide(nodes.right.frequency, carrier + beat, now, seconds);
      glide(nodes.envelope.gain, 1, now, FADE_IN);
      glide(nodes.level.gain, this._volume * MAX_GAIN, now, VOLUME_RAMP);
      this._emit("change", detail);
      return;
    }
    const left = ctx.createOscillator();
    const right = ctx.createOscillator();
    left.frequency.setValueAtTime(carrier, now);
    right.frequency.setValueAtTime(carrier + beat, now);
    const merger = ctx.createChannelMerger(2);
    const envelope = ctx.createGain();
    const level = ctx.createGain();
    envelope.gain.setValueAtTime(0, now);
    envelope.gain.linearRampToValueAtTime(1, now + FADE_IN);
    level.gain.setValueAtTime(this._volume * MAX_GAIN, now);
    left.connect(merger, 0, 0);
    right.connect(merger, 0, 1);
    merger.connect(envelope);
    envelope.connect(level);
    level.connect(this._destination || ctx.destination);
    const nodes = { left, right, merger, envelope, level, ended: null };
    nodes.ended = new Promise((resolve) => {
      nodes.finish = () => {
        if (nodes.done) return;
        nodes.done = true;
        for (const node of [left, right, merger, envelope, level]) node.disconnect();
        this._sounding -= 1;
        resolve();
      };
    });
    right.onended = () => nodes.finish();
    left.start(now);
    right.start(now);
    this._sounding += 1;
    this._nodes = nodes;
    this._emit("start", detail);
  }

  /** Fade out, stop the oscillators, dispatch "end"; a Promise for their end. */
  _silence(reason) {
    this._endSequence(false);
    const nodes = this._nodes;
    if (!nodes) return Promise.resolve();
    this._nodes = null;
    const ctx = this._context;
    if (ctx.state === "running") {
      const now = ctx.currentTime;
      const fade = reason === "stopped" ? STOP_FADE : 0;
      glide(nodes.envelope.gain, 0, now, fade);
      nodes.left.stop(now + fade + 0.01);
      nodes.right.stop(now + fade + 0.01);
    } else {
      // A suspended or closed context renders nothing: "ended" would never come.
      try {
        nodes.left.stop();
        nodes.right.stop();
      } catch {
        // already stopped by a closed context
      }
      nodes.finish();
    }
    this._emit("end", { reason });
    return nodes.ended;
  }

  /**
   * Forget the running sequence and its timer; with ``keepSound`` (play() and
   * sequence() taking over) undo its scheduled frequency changes and fade-out.
   */
  _endSequence(keepSound = true) {
    clearTimeout(this._timer);
    this._timer = 0;
    const sequence = this._sequence;
    this._sequence = null;
    if (!sequence || !keepSound || !this._nodes) return;
    const now = this._context.currentTime;
    hold(this._nodes.right.frequency, now);
    hold(this._nodes.left.frequency, now);
  }

  /** Dispatch the segments the audio clock has reached; finish at the end. */
  _advance() {
    this._timer = 0;
    const sequence = this._sequence;
    if (!sequence || sequence.nodes !== this._nodes) return;
    const now = this._context.currentTime;
    let index = 0;
    while (index + 1 < sequence.starts.length && sequence.starts[index + 1] <= now) index++;
    while (sequence.index < index) {
      sequence.index += 1;
      const item = sequence.segments[sequence.index];
      this._beat = item.beat;
      this._preset = item.wave;
      this._emit("segment", this._segmentDetail(sequence, sequence.index));
    }
    if (now >= sequence.end) {
      this._silence("finished");
      return;
    }
    const next = index + 1 < sequence.starts.length ? sequence.starts[index + 1] : sequence.end;
    this._timer = setTimeout(() => this._advance(), Math.max(10, (next - now) * 1000 + 5));
  }

  _segmentDetail(sequence, index) {
    const item = sequence.segments[index];
    return {
      index,
      count: sequence.segments.length,
      wave: item.wave,
      beat: item.beat,
      seconds: item.seconds,
      pattern: sequence.name,
    };
  }

  _emit(type, detail) {
    this.dispatchEvent(new CustomEvent(type, { detail }));
  }
}
