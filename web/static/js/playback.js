/**
 * The page's one playback queue (docs/ui.md, "The playback queue"): every clip
 * the page plays in the foreground (the companion's sentences, trigger cues,
 * effect cues, the trigger playlist) goes through ONE persistent <audio>
 * element, one clip at a time, so nothing ever talks over anything else. The
 * background loops play under everything through Web Audio, with their own
 * volume; the AudioContext is shared (binaural beats use it too).
 *
 * Usage:
 *
 *     import { playback, playEffect, background, audioContext, flash } from "/static/js/playback.js";
 *     playback.enqueue({ kind: "cue", url: "/audio/triggers/deep-breath", key: "deep-breath",
 *                        label: "Deep Breath" });          // a cue: next after the current clip
 *     playEffect("chime");                                  // a short effect cue, same lane
 *     playback.addSource(source, "speech");                 // a pull source (see below)
 *     playback.addEventListener("start", (e) => spirals.pulse(e.detail));
 *     background.play("rain"); background.setVolume(0.3); background.stop();
 *     const beats = new Binaural(audioContext());            // shares the unlocked context
 *
 * Priority (never interrupting the clip being played): when the element is
 * free the queue takes, in this order,
 *   1. "alert": cues pushed with enqueue() (trigger.fired cues, effect cues), first in first out;
 *   2. "speech": the companion's sentences, a reading (pulled from their source);
 *   3. "playlist": the trigger panel's playlist (pulled).
 * So a trigger cue fired by a reply waits for the sentence being spoken to end,
 * then plays before the next sentence; a playlist pauses while the companion speaks.
 * A paused clip keeps the element: nothing else starts until it is resumed,
 * skipped or stopped (pause means quiet). A clip the browser refused to play
 * (NotAllowedError) waits for the next tap, click or key press anywhere, never
 * for a timer. While something holds the queue (hold(reason), e.g. a voice
 * preview playing in its own element) the current clip is paused and nothing starts.
 *
 * A clip is a plain object: {kind: "speech" | "cue" | "effect" | "playlist",
 * url (a same-site path), channel: "speech" | "cues" (which volume applies;
 * default "cues"), key?, label? (flashed on screen while it plays), text?,
 * loaded?(clip) (called when it is put in the element), finished?(clip, reason)
 * (reason: "ended" | "failed" | "skipped" | "stopped")}. A pull source is an
 * object with next() returning a clip or null; call playback.pump() when it has
 * something new.
 *
 * Events (playback is an EventTarget; CustomEvent detail {kind, key, label, text, url}):
 *   "start"   a clip began to sound (its first "playing")  — hooks for the spirals
 *   "end"     a clip that had started is over (detail.reason as above)
 *   "change"  anything about the state changed (state, current, queued, blocked)
 * Getters: state ("idle" | "loading" | "playing" | "paused" | "blocked"), current,
 * blocked, paused, unlocking, queued (alerts waiting), started / finished (counts).
 *
 * The first touchend, click or keydown anywhere (capture phase) plays 50 ms of
 * silence on the element (iOS then lets it play later clips without a gesture)
 * and resumes the AudioContext if one exists.
 *
 * For tests and styles the element carries data-kind, data-key and data-label
 * of the clip loaded; the flash overlay (#flash) carries data-text, data-key,
 * data-visible and data-count (flashes shown).
 */

const LANES = ["alert", "speech", "playlist"];
const FLASH_MS = 2500; // a flash without audio (or whose audio never started)
const FLASH_FADE_MS = 600;
export const EFFECTS = Object.freeze(["chime", "soft-click", "whoosh", "breath-in", "breath-out"]);
/** The background loops (web/static/audio/background/), value -> label. */
export const BACKGROUNDS = Object.freeze({
  "brown-noise": "Brown noise",
  rain: "Rain",
  ocean: "Ocean",
  drone: "Drone",
});

/** A clip URL: a path on this site, nothing else (never another origin). */
export function sameSitePath(url) {
  return typeof url === "string" && /^\/[^/\\]/.test(url) ? url : null;
}

/** 50 ms of silence as a WAV blob URL (the CSP allows blob: media, not data:). */
function silentClip() {
  const samples = 400;
  const buffer = new ArrayBuffer(44 + samples);
  const view = new DataView(buffer);
  const ascii = (at, text) => {
    for (let i = 0; i < text.length; i++) view.setUint8(at + i, text.charCodeAt(i));
  };
  ascii(0, "RIFF");
  view.setUint32(4, 36 + samples, true);
  ascii(8, "WAVE");
  ascii(12, "fmt ");
  view.setUint32(16, 16, true); // PCM header size
  view.setUint16(20, 1, true); // PCM
  view.setUint16(22, 1, true); // mono
  view.setUint32(24, 8000, true); // sample rate
  view.setUint32(28, 8000, true); // byte rate
  view.setUint16(32, 1, true); // block align
  view.setUint16(34, 8, true); // bits per sample
  ascii(36, "data");
  view.setUint32(40, samples, true);
  for (let i = 0; i < samples; i++) view.setUint8(44 + i, 128); // unsigned 8-bit zero
  return URL.createObjectURL(new Blob([buffer], { type: "audio/wav" }));
}

function clamp01(value, fallback) {
  const number = Number(value);
  return Number.isFinite(number) ? Math.min(1, Math.max(0, number)) : fallback;
}

function reducedMotion() {
  return Boolean(window.matchMedia && window.matchMedia("(prefers-reduced-motion: reduce)").matches);
}

// --- the shared AudioContext ---------------------------------------------------------------

let context = null;

/**
 * The page's one AudioContext (created on first use; null where Web Audio is
 * missing). Created outside a gesture it starts suspended: the next tap, click
 * or key press resumes it.
 */
export function audioContext() {
  if (!context) {
    const Context = window.AudioContext || window.webkitAudioContext;
    if (!Context) return null;
    context = new Context();
    context.addEventListener("statechange", () => background.changed());
  }
  return context;
}

function resumeContext() {
  if (context && context.state === "suspended") {
    context.resume().catch(() => {
      // still not allowed: the next gesture tries again
    });
  }
}

// --- the flash overlay ---------------------------------------------------------------------

class Flash {
  constructor() {
    this.element = null;
    this.token = 0;
    this.hideTimer = null;
    this.count = 0;
  }

  ensure() {
    if (this.element && this.element.isConnected) return this.element;
    let found = document.getElementById("flash");
    if (!found) {
      found = document.createElement("div");
      found.id = "flash";
      found.className = "flash";
      // What is flashed is also said by the audio and by the panel's status line.
      found.setAttribute("aria-hidden", "true");
      found.dataset.visible = "false";
      found.dataset.count = "0";
      const text = document.createElement("span");
      text.className = "flash-text";
      found.appendChild(text);
      document.body.appendChild(found);
    }
    this.element = found;
    return found;
  }

  /**
   * Shows ``text`` until ``hide(token)`` (or for FLASH_MS when ``timed``).
   * Returns the token of this flash.
   */
  show(text, key, timed) {
    const element = this.ensure();
    window.clearTimeout(this.hideTimer);
    this.token += 1;
    this.count += 1;
    const token = this.token;
    element.firstChild.textContent = text;
    element.dataset.text = text;
    if (key) element.dataset.key = key;
    else delete element.dataset.key;
    element.dataset.count = String(this.count);
    element.dataset.visible = "true";
    element.classList.remove("flash--out");
    element.classList.add("flash--on");
    if (timed) this.hideTimer = window.setTimeout(() => this.hide(token), FLASH_MS);
    return token;
  }

  hide(token) {
    if (token !== this.token || !this.element) return;
    const element = this.element;
    element.classList.remove("flash--on");
    element.classList.add("flash--out");
    element.dataset.visible = "false";
    window.clearTimeout(this.hideTimer);
    this.hideTimer = window.setTimeout(
      () => {
        if (token === this.token) element.classList.remove("flash--out");
      },
      reducedMotion() ? 0 : FLASH_FADE_MS,
    );
  }
}

const flasher = new Flash();

/** Flashes ``text`` on screen for a moment (an effect.flash without audio). */
export function flash(text, key) {
  if (typeof text !== "string" || !text.trim()) return;
  flasher.show(text.trim().slice(0, 120), typeof key === "string" ? key : "", true);
}

// --- the queue ------------------------------------------------------------------------------

class Playback extends EventTarget {
  constructor() {
    super();
    this.element = null;
    this.alerts = []; // clips pushed with enqueue(), first in first out
    this.sources = { speech: [], playlist: [] };
    this.currentClip = null;
    this.sounding = false; // the current clip has started ("playing" seen)
    this.flashToken = null;
    this.isPaused = false;
    this.isBlocked = false;
    this.holds = new Set();
    this.heldPlaying = false; // a hold paused a playing clip: resume it on release
    this.unlocked = false;
    this.isUnlocking = false;
    this.silent = null;
    this.exempt = [];
    this.volumes = { speech: 1, cues: 0.8 };
    this.started = 0;
    this.finished = 0;
    for (const type of ["touchend", "click", "keydown"]) {
      document.addEventListener(type, (event) => this.onGesture(event), {
        capture: true,
        passive: true,
      });
    }
  }

  // --- state -----------------------------------------------------------------------------

  get current() {
    return this.currentClip;
  }

  get paused() {
    return this.isPaused;
  }

  get blocked() {
    return this.isBlocked;
  }

  get unlocking() {
    return this.isUnlocking;
  }

  get queued() {
    return this.alerts.length;
  }

  get state() {
    if (!this.currentClip) return "idle";
    if (this.isBlocked) return "blocked";
    if (this.isPaused || this.heldPlaying) return "paused";
    return this.sounding ? "playing" : "loading";
  }

  /** The <audio> element: #voice-audio (the chat page), #playback-audio, or a new one. */
  audio() {
    if (this.element) return this.element;
    let found = document.getElementById("voice-audio") || document.getElementById("playback-audio");
    if (!found) {
      found = document.createElement("audio");
      found.id = "playback-audio";
      found.preload = "auto";
      document.body.appendChild(found);
    }
    this.element = found;
    found.addEventListener("ended", () => {
      if (this.currentClip) this.finish("ended");
    });
    found.addEventListener("error", () => {
      if (this.currentClip) this.finish("failed");
    });
    found.addEventListener("playing", () => this.onPlaying());
    return found;
  }

  // --- what goes in ------------------------------------------------------------------------

  /** A cue in the first lane: it plays as soon as the clip being played ends. */
  enqueue(clip) {
    if (!clip || !sameSitePath(clip.url)) return null;
    this.alerts.push(clip);
    this.pump();
    return clip;
  }

  /** Drops the waiting cues for which ``test(clip)`` is true (each gets finished "stopped"). */
  drop(test) {
    const kept = [];
    const gone = [];
    for (const clip of this.alerts) (test(clip) ? gone : kept).push(clip);
    this.alerts = kept;
    for (const clip of gone) this.tell(clip, "stopped");
    if (gone.length) this.changed();
  }

  /** The waiting cues (read only). */
  waiting() {
    return [...this.alerts];
  }

  /** ``source.next()`` gives a clip or null; ``lane`` is "speech" or "playlist". */
  addSource(source, lane) {
    if (!LANES.includes(lane) || lane === "alert") throw new Error("unknown lane " + lane);
    this.sources[lane].push(source);
  }

  /** Volume of a channel ("speech" or "cues"), 0-1; applies to the clip playing now. */
  setVolume(channel, value) {
    this.volumes[channel] = clamp01(value, this.volumes[channel] ?? 1);
    const clip = this.currentClip;
    if (!clip || this.channelOf(clip) === channel) this.audio().volume = this.volumes[channel];
  }

  volume(channel) {
    return this.volumes[channel];
  }

  /** Elements whose clicks act on a refused clip themselves (the voice buttons). */
  exemptFromGesture(element) {
    if (element) this.exempt.push(element);
  }

  // --- the queue ---------------------------------------------------------------------------

  /** Starts the next clip when the element is free. */
  pump() {
    if (this.currentClip || this.isUnlocking || this.holds.size) {
      this.changed();
      return;
    }
    const clip = this.take();
    if (clip) this.start(clip);
    else this.changed();
  }

  take() {
    if (this.alerts.length) return this.alerts.shift();
    for (const lane of ["speech", "playlist"]) {
      for (const source of this.sources[lane]) {
        const clip = source.next();
        if (clip && sameSitePath(clip.url)) return clip;
      }
    }
    return null;
  }

  channelOf(clip) {
    return clip.channel === "speech" ? "speech" : "cues";
  }

  start(clip) {
    const audio = this.audio();
    this.currentClip = clip;
    this.sounding = false;
    this.isBlocked = false;
    this.isPaused = false;
    this.heldPlaying = false;
    audio.volume = this.volumes[this.channelOf(clip)];
    audio.dataset.kind = clip.kind || "cue";
    if (clip.key) audio.dataset.key = String(clip.key);
    else delete audio.dataset.key;
    if (clip.label) audio.dataset.label = String(clip.label);
    else delete audio.dataset.label;
    audio.src = clip.url;
    if (typeof clip.loaded === "function") clip.loaded(clip);
    this.changed();
    if (this.currentClip === clip) this.playCurrent();
  }

  /** ``play()`` on the element; a refusal keeps the clip and waits for a gesture. */
  playCurrent() {
    const clip = this.currentClip;
    if (!clip) return;
    let promise;
    try {
      promise = this.audio().play();
    } catch (err) {
      promise = Promise.reject(err);
    }
    if (!promise || typeof promise.then !== "function") return; // very old browsers
    promise.then(
      () => {
        if (clip !== this.currentClip) return;
        this.unlocked = true;
        if (this.isBlocked) {
          this.isBlocked = false;
          this.changed();
        }
      },
      (err) => {
        if (clip !== this.currentClip) return;
        const name = err && err.name;
        if (name === "AbortError") return; // replaced or paused before it began
        if (name === "NotAllowedError") {
          this.isBlocked = true; // no retry: the next tap, click or key press plays it
          this.changed();
          return;
        }
        this.finish("failed");
      },
    );
  }

  onPlaying() {
    const clip = this.currentClip;
    if (!clip) return; // the silent unlock clip
    this.isBlocked = false;
    if (!this.sounding) {
      this.sounding = true;
      this.started += 1;
      if (clip.label) this.flashToken = flasher.show(String(clip.label), clip.key || "", false);
      this.emit("start", clip);
    }
    this.changed();
  }

  /** The clip is over: ``reason`` "ended", "failed", "skipped" or "stopped"; then the next. */
  finish(reason) {
    const clip = this.currentClip;
    if (!clip) return;
    const sounded = this.sounding;
    this.unload();
    this.finished += 1;
    if (this.flashToken !== null) {
      flasher.hide(this.flashToken);
      this.flashToken = null;
    } else if (clip.label && reason === "failed") {
      flash(String(clip.label), clip.key); // the name still shows when its sound fails
    }
    this.tell(clip, reason);
    if (sounded) this.emit("end", clip, reason);
    this.pump();
  }

  tell(clip, reason) {
    if (typeof clip.finished !== "function") return;
    try {
      clip.finished(clip, reason);
    } catch (err) {
      window.setTimeout(() => {
        throw err; // reported, and the queue goes on
      });
    }
  }

  unload() {
    const audio = this.audio();
    this.currentClip = null;
    this.sounding = false;
    this.isBlocked = false;
    this.isPaused = false;
    this.heldPlaying = false;
    audio.pause();
    audio.removeAttribute("src");
    delete audio.dataset.kind;
    delete audio.dataset.key;
    delete audio.dataset.label;
    audio.load(); // forget the old clip (and stop fetching it)
  }

  // --- controls ----------------------------------------------------------------------------

  /** Pauses the clip being played (it keeps the element: nothing else starts). */
  pause() {
    if (!this.currentClip || this.isPaused) return;
    this.isPaused = true;
    this.audio().pause();
    this.changed();
  }

  /** Plays the current clip again (paused, or refused by the browser). */
  resume() {
    if (!this.currentClip) return;
    this.isPaused = false;
    if (this.holds.size) {
      this.heldPlaying = true;
      this.changed();
      return;
    }
    this.playCurrent();
    this.changed();
  }

  /** Ends the current clip now and goes on with the next. */
  skip() {
    if (this.currentClip) this.finish("skipped");
  }

  /** Stops ``clip`` if it is the current one (any clip when omitted); the queue goes on. */
  stop(clip) {
    if (!this.currentClip || (clip && clip !== this.currentClip)) return;
    this.finish("stopped");
  }

  /** Nothing starts while held; a playing clip pauses and resumes on release. */
  hold(reason) {
    if (this.holds.has(reason)) return;
    this.holds.add(reason);
    if (this.currentClip && !this.isPaused && !this.isBlocked && !this.heldPlaying) {
      this.heldPlaying = true;
      this.audio().pause();
    }
    this.changed();
  }

  release(reason) {
    if (!this.holds.delete(reason)) return;
    if (this.holds.size) return;
    if (this.heldPlaying) {
      this.heldPlaying = false;
      if (this.currentClip && !this.isPaused) this.playCurrent();
    }
    this.pump();
  }

  // --- gestures ----------------------------------------------------------------------------

  /** On the first gesture (and each one while a clip is refused): let audio play. */
  onGesture(event) {
    resumeContext();
    background.resumeIfWaiting();
    if (this.isBlocked) {
      const target = event.target;
      if (target instanceof Node && this.exempt.some((element) => element.contains(target))) {
        return; // those controls act on the refused clip themselves
      }
      this.playCurrent();
      return;
    }
    if (this.unlocked || this.isUnlocking || this.currentClip) return;
    const audio = this.audio();
    if (!this.silent) this.silent = silentClip();
    this.isUnlocking = true;
    audio.src = this.silent;
    let promise;
    try {
      promise = audio.play();
    } catch (err) {
      promise = Promise.reject(err);
    }
    const done = (ok) => {
      this.isUnlocking = false;
      if (ok) this.unlocked = true;
      if (!this.currentClip && audio.getAttribute("src") === this.silent) {
        audio.pause();
        audio.removeAttribute("src");
      }
      this.pump();
    };
    if (promise && typeof promise.then === "function") {
      promise.then(
        () => done(true),
        () => done(false),
      );
    } else {
      done(true);
    }
  }

  // --- events ------------------------------------------------------------------------------

  emit(type, clip, reason) {
    const detail = {
      kind: clip.kind || "cue",
      key: clip.key || "",
      label: clip.label || "",
      text: clip.text || "",
      url: clip.url,
    };
    if (reason) detail.reason = reason;
    this.dispatchEvent(new CustomEvent(type, { detail }));
  }

  changed() {
    this.dispatchEvent(new Event("change"));
  }
}

/** The page's playback queue. */
export const playback = new Playback();

/** Plays one of the shipped effect cues (EFFECTS) in the alert lane. */
export function playEffect(name, options = {}) {
  if (!EFFECTS.includes(name)) return null;
  return playback.enqueue({
    kind: "effect",
    key: name,
    url: "/static/audio/effects/" + name + ".mp3",
    label: typeof options.label === "string" ? options.label : "",
    finished: options.finished,
  });
}

// --- background loops ------------------------------------------------------------------------

/**
 * The ambient loop under everything: an AudioBufferSourceNode with loop = true
 * (gapless, unlike <audio loop>) through its own gain. ``state``: "off",
 * "loading", "waiting" (the context waits for a gesture), "playing", "error".
 * Dispatches "change".
 */
class Background extends EventTarget {
  constructor() {
    super();
    this.name = "";
    this.level = 0.3;
    this.source = null;
    this.gain = null;
    this.buffers = new Map(); // name -> Promise<AudioBuffer>
    this.generation = 0;
    this.failed = false;
  }

  get state() {
    if (!this.name) return "off";
    if (this.failed) return "error";
    if (!this.source) return "loading";
    return context && context.state === "running" ? "playing" : "waiting";
  }

  /** Plays ``name`` (a BACKGROUNDS key) looped; "" stops. */
  async play(name) {
    if (!name) {
      this.stop();
      return;
    }
    if (!Object.prototype.hasOwnProperty.call(BACKGROUNDS, name)) return;
    if (name === this.name && (this.source || !this.failed)) return;
    this.fadeOut();
    this.name = name;
    this.failed = false;
    const generation = ++this.generation;
    this.changed();
    const ctx = audioContext();
    if (!ctx) {
      this.failed = true;
      this.changed();
      return;
    }
    let buffer;
    try {
      buffer = await this.load(ctx, name);
    } catch (err) {
      if (generation === this.generation) {
        this.failed = true;
        this.changed();
      }
      return;
    }
    if (generation !== this.generation) return; // another loop was chosen meanwhile
    const gain = ctx.createGain();
    gain.gain.setValueAtTime(0, ctx.currentTime);
    gain.gain.linearRampToValueAtTime(this.level, ctx.currentTime + 1);
    gain.connect(ctx.destination);
    const source = ctx.createBufferSource();
    source.buffer = buffer;
    source.loop = true;
    source.connect(gain);
    source.start();
    this.source = source;
    this.gain = gain;
    this.changed();
  }

  load(ctx, name) {
    if (!this.buffers.has(name)) {
      const promise = fetch("/static/audio/background/" + name + ".mp3", {
        credentials: "same-origin",
      })
        .then((response) => {
          if (!response.ok) throw new Error("status " + response.status);
          return response.arrayBuffer();
        })
        .then((bytes) => ctx.decodeAudioData(bytes));
      promise.catch(() => this.buffers.delete(name)); // asked again next time
      this.buffers.set(name, promise);
    }
    return this.buffers.get(name);
  }

  stop() {
    this.generation += 1;
    this.fadeOut();
    this.name = "";
    this.failed = false;
    this.changed();
  }

  fadeOut() {
    const { source, gain } = this;
    this.source = null;
    this.gain = null;
    if (!source || !context) return;
    const now = context.currentTime;
    gain.gain.cancelScheduledValues(now);
    gain.gain.setValueAtTime(gain.gain.value, now);
    gain.gain.linearRampToValueAtTime(0, now + 0.4);
    source.stop(now + 0.45);
    source.addEventListener("ended", () => {
      source.disconnect();
      gain.disconnect();
    });
  }

  /** 0-1; glides there (no clicks). */
  setVolume(value) {
    this.level = clamp01(value, this.level);
    if (this.gain && context) this.gain.gain.setTargetAtTime(this.level, context.currentTime, 0.05);
    this.changed();
  }

  get volume() {
    return this.level;
  }

  resumeIfWaiting() {
    if (this.name && context && context.state !== "running") resumeContext();
  }

  changed() {
    this.dispatchEvent(new Event("change"));
  }
}

/** The page's background loop. */
export const background = new Background();
