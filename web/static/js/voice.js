// The companion's voice in the browser: the audio queue that plays a reply's
// sentences back to back, the caption showing the sentence being spoken, and
// the voice controls (play/pause, skip, stop, speak replies, play
// automatically, voice with preview, speed, volume), against "Voice" in
// docs/protocol.md and docs/api.md.
//
// companion.js owns the instance: it hands over every ``voice.*`` frame and
// the answers to this module's requests (ids "voice-N"), says when a reply
// starts or is stopped, and when the reply's text is re-rendered.
//
// Rules (docs/ui.md, "Voice"): the sentences play through the page's one
// playback queue (playback.js: one persistent <audio> element, unlocked by the
// first tap, click or key press anywhere on the page; a refused play() keeps
// the clip and waits for the next gesture, never retries by itself; trigger
// and effect cues play between two sentences, never over one). This module is
// the queue's "speech" source: clips of one reply play in ``index`` order, a
// failed sentence is skipped with a small notice; a new reply drops the
// previous reply's pending clips. Readings (``read-…`` replies, started by the
// trigger-mania page) are that page's to speak: ignored here.
// Everything the server sends is shown with textContent.

import { element as el } from "./chat-render.js";
import { playback, sameSitePath } from "./playback.js";

const STORE_AUTOPLAY = "bambid.voice.autoplay";
const NOTICE_MS = 6000;
const SPEEDS = [0.5, 0.75, 1, 1.25, 1.5, 1.75, 2];
/** What the preview button says: short and neutral. */
export const PREVIEW_TEXT = "Breathe in slowly, and let your shoulders relax.";

/** Why a sentence was not spoken (voice.error codes), in plain words. */
const ERRORS = {
  unavailable: "the voice service is not answering",
  timeout: "the voice service took too long",
  bad_request: "the voice service refused it",
  too_long: "the clip was too long",
  bad_response: "the voice service sent something that is not audio",
  internal: "something went wrong on the server",
};

const BACKENDS = { kokoro: "Kokoro", espeak: "eSpeak NG" };

function backendName(id) {
  return Object.prototype.hasOwnProperty.call(BACKENDS, id) ? BACKENDS[id] : String(id || "");
}

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

/** A reply id of a reading (voice.read): the trigger-mania page speaks it, not this panel. */
function isReading(replyId) {
  return typeof replyId === "string" && replyId.startsWith("read-");
}

let displayNames = null;
function languageName(tag) {
  if (!tag) return "Other languages";
  try {
    if (!displayNames) displayNames = new Intl.DisplayNames(["en"], { type: "language" });
    const parts = tag.split("-");
    const canonical =
      parts[0] + (parts[1] && parts[1].length === 2 ? "-" + parts[1].toUpperCase() : "");
    const name = displayNames.of(canonical);
    if (name && name !== canonical) return name;
  } catch (err) {
    // not a tag Intl knows: show it as it is
  }
  return tag;
}

function speedLabel(speed) {
  return (Number.isInteger(speed) ? speed.toFixed(1) : String(speed)) + "×";
}

// --- finding the spoken sentence in the reply's text ---------------------------------------

const FOLD = { "\u2018": "'", "\u2019": "'", "\u201c": '"', "\u201d": '"', "\u00a0": " " };

function fold(ch) {
  return (FOLD[ch] || ch).toLowerCase();
}

const BLOCKS = new Set(["P", "LI", "PRE", "UL", "OL", "BR", "HR", "DIV", "H1", "H2", "H3"]);

/** The text of ``root`` with whitespace runs as one space, and where each character came from. */
function flatten(root) {
  const walker = document.createTreeWalker(root, NodeFilter.SHOW_TEXT | NodeFilter.SHOW_ELEMENT);
  let text = "";
  const where = []; // [node, offset] per character of ``text``
  let space = true;
  let last = null; // the last text node seen
  for (let node = walker.nextNode(); node; node = walker.nextNode()) {
    if (node.nodeType === Node.ELEMENT_NODE) {
      // A new paragraph, list item or line keeps its first word apart from the last one.
      if (BLOCKS.has(node.tagName) && !space && last) {
        space = true;
        text += " ";
        where.push([last, last.data.length]);
      }
      continue;
    }
    const data = node.data;
    last = node;
    for (let i = 0; i < data.length; i++) {
      const ch = data[i];
      if (/\s/.test(ch)) {
        if (space) continue;
        space = true;
        text += " ";
      } else {
        space = false;
        text += fold(ch);
      }
      where.push([node, i]);
    }
  }
  return { text, where };
}

function squash(text) {
  return [...text.trim().replace(/\s+/g, " ")].map(fold).join("");
}

/**
 * A Range over ``sentence`` in ``root`` searching from ``from`` (an offset in
 * the flattened text), and where it ends; null when it is not found (the spoken
 * text is cleaned: a link or a code block reads differently).
 */
export function findSentence(root, sentence, from) {
  const wanted = squash(sentence);
  if (!wanted) return null;
  const { text, where } = flatten(root);
  let at = text.indexOf(wanted, from);
  let length = wanted.length;
  if (at < 0) {
    // The start of the sentence (its first words) still places it.
    const words = wanted.split(" ");
    const head = words.slice(0, Math.max(3, Math.ceil(words.length / 2))).join(" ");
    if (head.length < 12 || head.length >= wanted.length) return null;
    at = text.indexOf(head, from);
    length = head.length;
    if (at < 0) return null;
  }
  const last = at + length - 1;
  const range = document.createRange();
  range.setStart(where[at][0], where[at][1]);
  range.setEnd(where[last][0], where[last][1] + 1);
  return { range, end: at + length };
}

// --- the controller -----------------------------------------------------------------------

/**
 * The voice of the companion panel.
 *
 * ``connection`` is the page's Connection; ``replyBody(replyId)`` returns the
 * element holding that reply's rendered text (for highlighting), or null.
 */
export class Voice {
  constructor(connection, replyBody) {
    this.connection = connection;
    this.replyBody = replyBody;
    const $ = (id) => document.getElementById(id);
    this.ui = {
      root: $("voice"),
      audio: $("voice-audio"),
      caption: $("voice-caption"),
      captionText: $("voice-caption-text"),
      captionMeta: $("voice-caption-meta"),
      play: $("voice-play"),
      skip: $("voice-skip"),
      stop: $("voice-stop"),
      settingsButton: $("voice-settings-button"),
      settings: $("voice-settings"),
      unlock: $("voice-unlock"),
      status: $("voice-status"),
      enabled: $("voice-enabled"),
      autoplay: $("voice-autoplay"),
      select: $("voice-select"),
      preview: $("voice-preview"),
      backend: $("voice-backend"),
      speed: $("voice-speed"),
      volume: $("voice-volume"),
      volumeOut: $("voice-volume-out"),
    };
    this.requests = new Map(); // request id -> {kind}
    this.nextId = 1;
    this.ready = false; // the companion panel is usable (signed in, connected once)
    this.available = false; // the server answered voice.prefs
    this.prefs = null; // the last voice.prefs
    this.voices = null; // the /api/voices answer, once loaded
    this.voicesLoading = false;

    // The queue: clips of one reply, by index.
    this.reply = null; // the reply whose clips are queued or playing
    this.queue = []; // [{replyId, index, url, text, backend}], ascending index
    this.lastIndex = -1; // the highest index queued for ``reply``
    this.current = null; // the sentence in the queue's element (playing, paused or refused)
    this.paused = false; // paused by the person
    this.armed = null; // a reply the person asked to hear (Play with auto-play off)
    this.dropped = new Set(); // replies whose clips are ignored (stopped, replaced)
    this.played = 0; // clips played to their end, in this page
    this.noticeTimer = null;
    this.highlightFrom = new Map(); // reply id -> where the next sentence is searched from
    this.highlighted = null; // {clip, replyId, from}: the sentence marked, or being looked for
    this.preview = null; // the preview's own Audio while it plays

    this.autoplay = readStore(STORE_AUTOPLAY) !== "0";
    // The person's volume is the server's (voice.prefs): it follows them to every device.
    this.volume = 1;
    playback.setVolume("speech", this.volume);
    playback.addSource(this, "speech");
    playback.exemptFromGesture(this.ui.root);
    playback.addEventListener("change", () => this.render());
    this.wire();
    this.render();
  }

  get blocked() {
    return Boolean(this.current) && playback.blocked;
  }

  // --- from companion.js -------------------------------------------------------------

  /** Handles ``m`` if it is a voice frame or the answer to a voice request. */
  message(m) {
    switch (m.type) {
      case "ack":
      case "error":
        if (!this.requests.has(m.id)) return false;
        if (m.type === "ack") this.requests.delete(m.id);
        else this.onError(m);
        return true;
      case "voice.prefs":
        if (m.id !== undefined) this.requests.delete(m.id);
        this.onPrefs(m);
        return true;
      case "voice.audio":
        if (!isReading(m.reply_id)) this.onAudio(m);
        return true;
      case "voice.error":
        if (!isReading(m.reply_id)) this.onSentenceError(m);
        return true;
      case "voice.done":
        if (!isReading(m.reply_id)) this.onDone(m);
        return true;
      default:
        return m.type.startsWith("voice.");
    }
  }

  /** After each welcome that names a person (and after ai.history): ask for the prefs. */
  welcome(signedIn) {
    if (!signedIn) {
      this.available = false;
      this.render();
      return;
    }
    for (const req of this.requests.values()) if (req.kind === "prefs") return;
    this.request("prefs", { type: "voice.prefs" });
  }

  closed() {
    this.requests.clear();
  }

  /** Whether the companion panel is in use (signed in, the companion on this server). */
  setReady(ready) {
    if (ready === this.ready) return;
    this.ready = ready;
    this.render();
  }

  /** A reply began (or a reply from another tab): the previous one's pending clips go. */
  startReply(replyId) {
    if (typeof replyId !== "string" || replyId === this.reply || isReading(replyId)) return;
    this.switchTo(replyId);
    this.render();
  }

  /** The reply was stopped (Stop here, or stopped elsewhere): its speech ends now. */
  stopReply(replyId) {
    if (typeof replyId !== "string") return;
    this.dropped.add(replyId);
    if (replyId === this.reply || (this.current && this.current.replyId === replyId)) this.stop();
  }

  /** The reply's text was rendered again: its highlight must be placed again. */
  rendered(replyId) {
    if (this.highlighted && this.highlighted.replyId === replyId) this.highlight();
  }

  // --- server messages ------------------------------------------------------------------

  request(kind, message) {
    const id = "voice-" + this.nextId++;
    if (!this.connection.send({ ...message, id })) return null;
    this.requests.set(id, { kind });
    return id;
  }

  onError(m) {
    const req = this.requests.get(m.id);
    this.requests.delete(m.id);
    if (req.kind === "prefs") {
      // A server without voice (unknown type), or a reader without a session.
      this.available = false;
      this.render();
      return;
    }
    const says = typeof m.message === "string" && m.message ? ": " + m.message : ".";
    this.notice("Your voice settings were not changed" + says);
    this.showPrefs(); // back to what the server has
  }

  onPrefs(m) {
    const wasEnabled = this.prefs ? this.prefs.enabled : true;
    this.prefs = {
      enabled: m.enabled !== false,
      voice: typeof m.voice === "string" ? m.voice : "",
      speed: typeof m.speed === "number" && Number.isFinite(m.speed) ? m.speed : 1,
      volume:
        typeof m.volume === "number" && Number.isFinite(m.volume) && m.volume >= 0 && m.volume <= 1
          ? m.volume
          : this.volume,
      backend: typeof m.backend === "string" ? m.backend : "",
      defaultVoice: typeof m.default_voice === "string" ? m.default_voice : "",
    };
    this.available = true;
    if (wasEnabled && !this.prefs.enabled) this.stop(); // speaking turned off, here or elsewhere
    this.showPrefs();
    this.render();
    if (!this.voices) this.loadVoices();
  }

  onAudio(m) {
    if (typeof m.reply_id !== "string" || !Number.isInteger(m.index) || m.index < 0) return;
    const url = sameSitePath(m.url);
    if (!url || this.dropped.has(m.reply_id)) return;
    if (m.reply_id !== this.reply) this.switchTo(m.reply_id);
    if (m.index <= this.lastIndex) return; // already queued or played
    this.lastIndex = m.index;
    this.available = true;
    this.queue.push({
      replyId: m.reply_id,
      index: m.index,
      url,
      text: typeof m.text === "string" ? m.text : "",
      backend: typeof m.backend === "string" ? m.backend : "",
    });
    this.pump();
  }

  onSentenceError(m) {
    if (typeof m.reply_id !== "string" || this.dropped.has(m.reply_id)) return;
    if (m.reply_id !== this.reply) this.switchTo(m.reply_id);
    if (Number.isInteger(m.index) && m.index > this.lastIndex) this.lastIndex = m.index;
    const code = typeof m.code === "string" ? m.code : "";
    const why = Object.prototype.hasOwnProperty.call(ERRORS, code) ? ERRORS[code] : "it failed";
    this.notice("A sentence was skipped: " + why + ".");
    this.pump();
  }

  onDone(m) {
    // No more clips for that reply. A stop says ``stopped: true``; what this tab
    // queued already still plays (the clips stay on the server).
    if (typeof m.reply_id === "string") this.render();
  }

  // --- the queue --------------------------------------------------------------------------

  /** ``replyId`` is the reply to speak from now on; the previous reply's pending clips go. */
  switchTo(replyId) {
    if (this.reply) this.dropped.add(this.reply);
    this.reply = replyId;
    this.queue = [];
    this.lastIndex = -1;
    this.armed = null;
    // The sentence being spoken may end; one paused or refused is dropped too.
    if (this.current && (this.paused || this.blocked)) this.unload();
    this.paused = false;
  }

  shouldPlay() {
    return !this.paused && (this.autoplay || (this.reply !== null && this.armed === this.reply));
  }

  /** The queue may take the next sentence (when it is free). */
  pump() {
    playback.pump();
    this.render();
  }

  /** The playback queue's "speech" source: the next sentence, when playing is wanted. */
  next() {
    if (this.current || this.queue.length === 0 || !this.shouldPlay()) return null;
    const clip = this.queue.shift();
    const playable = {
      kind: "speech",
      channel: "speech",
      url: clip.url,
      key: clip.replyId + "/" + clip.index,
      text: clip.text,
      loaded: () => {
        this.current = clip;
        this.paused = false;
        this.render();
        this.highlight();
      },
      finished: (_, reason) => {
        if (this.current === clip) {
          this.current = null;
          this.paused = false;
          this.unhighlight();
        }
        if (reason === "ended") this.played += 1;
        if (reason === "failed") this.notice("A sentence could not be played and was skipped.");
        this.render();
      },
    };
    clip.playable = playable;
    return playable;
  }

  /** The sentence leaves the element (the queue goes on with what else waits). */
  unload() {
    const clip = this.current;
    if (!clip) return;
    this.current = null;
    this.paused = false;
    this.unhighlight();
    playback.stop(clip.playable);
  }

  // --- the person's actions ----------------------------------------------------------------

  /** Play (or resume) the queue; pause when it plays. */
  togglePlay() {
    if (this.current && !this.paused && !this.blocked) {
      this.paused = true;
      playback.pause();
      this.render();
      return;
    }
    this.paused = false;
    this.armed = this.reply;
    if (this.current) {
      playback.resume();
      this.render();
    } else {
      this.pump();
    }
  }

  skip() {
    if (!this.current) {
      // Waiting clips with nothing playing: skip drops the first one.
      if (this.queue.length) this.queue.shift();
      this.render();
      return;
    }
    this.paused = false;
    this.armed = this.reply;
    playback.stop(this.current.playable); // the next sentence follows
  }

  /** Silence now: the queue is emptied and later clips of what was stopped are ignored. */
  stop() {
    if (this.current) this.dropped.add(this.current.replyId);
    for (const clip of this.queue) this.dropped.add(clip.replyId);
    if (this.reply && this.lastIndex >= 0) this.dropped.add(this.reply);
    this.queue = [];
    this.armed = null;
    this.paused = false;
    if (this.current) this.unload();
    this.stopPreview();
    this.render();
  }

  setAutoplay(on) {
    this.autoplay = on;
    writeStore(STORE_AUTOPLAY, on ? "1" : "0");
    if (on) this.armed = this.reply; // what waits plays now
    else this.armed = null; // the sentence playing ends, the rest waits
    this.pump();
  }

  /** Plays at ``percent`` now; ``save`` sends it to the server (for every device). */
  setVolume(percent, save = false) {
    this.applyVolume(Math.min(1, Math.max(0, percent / 100)));
    if (save) this.setPref({ volume: this.volume });
  }

  applyVolume(volume) {
    this.volume = volume;
    playback.setVolume("speech", this.volume);
    if (this.preview) this.preview.volume = this.volume;
    this.showVolume();
  }

  setPref(change) {
    if (!this.request("set", { type: "voice.set", ...change })) {
      this.notice("Not connected: your voice settings were not changed.");
      this.showPrefs();
    }
  }

  playPreview() {
    const voice = this.ui.select.value;
    const query = new URLSearchParams({ text: PREVIEW_TEXT });
    if (voice) query.set("voice", voice);
    if (this.prefs) query.set("speed", String(this.prefs.speed));
    this.stopPreview(false);
    playback.hold("voice-preview"); // the reply (or a cue) waits for the preview
    const audio = new Audio("/api/tts?" + query.toString());
    audio.volume = this.volume;
    this.preview = audio;
    this.ui.preview.setAttribute("aria-pressed", "true");
    const end = (failed) => {
      if (this.preview !== audio) return;
      if (failed) this.notice("The preview could not be played.");
      this.stopPreview();
    };
    audio.addEventListener("ended", () => end(false));
    audio.addEventListener("error", () => end(true));
    const promise = audio.play();
    if (promise && typeof promise.catch === "function") {
      promise.catch((err) => {
        if (!err || err.name !== "AbortError") end(true);
      });
    }
  }

  /** Ends the preview; ``release`` false keeps the queue held (another preview follows). */
  stopPreview(release = true) {
    const audio = this.preview;
    if (audio) {
      this.preview = null;
      audio.pause();
      audio.removeAttribute("src");
      this.ui.preview.setAttribute("aria-pressed", "false");
    }
    if (release) playback.release("voice-preview"); // what was playing goes on
  }

  toggleSettings() {
    const open = this.ui.settings.hidden;
    this.ui.settings.hidden = !open;
    this.ui.settingsButton.setAttribute("aria-expanded", open ? "true" : "false");
    if (open && !this.voices) this.loadVoices();
  }

  closeSettings() {
    if (this.ui.settings.hidden) return;
    const hadFocus = this.ui.settings.contains(document.activeElement);
    this.ui.settings.hidden = true;
    this.ui.settingsButton.setAttribute("aria-expanded", "false");
    if (hadFocus) this.ui.settingsButton.focus();
  }

  // --- the voice list ------------------------------------------------------------------------

  async loadVoices() {
    if (this.voicesLoading) return;
    this.voicesLoading = true;
    try {
      const response = await fetch("/api/voices", {
        credentials: "same-origin",
        headers: { Accept: "application/json" },
      });
      if (!response.ok) throw new Error("status " + response.status);
      const found = await response.json();
      if (!found || !Array.isArray(found.voices)) throw new Error("no voice list");
      this.voices = found;
    } catch (err) {
      this.voices = null; // asked again when the settings are opened
    } finally {
      this.voicesLoading = false;
    }
    this.showVoices();
  }

  showVoices() {
    const select = this.ui.select;
    const list = this.voices;
    const chosen = this.prefs ? this.prefs.voice : "";
    const options = [];
    if (!list) {
      const option = el("option", null, chosen || "Voice list not available");
      option.value = chosen;
      options.push(option);
      select.replaceChildren(...options);
      select.disabled = true;
      this.ui.preview.disabled = true;
      this.ui.backend.textContent = this.prefs
        ? "Voices by " + backendName(this.prefs.backend) + " (the list could not be loaded)."
        : "";
      return;
    }
    const groups = new Map(); // language label -> [voice]
    let known = false;
    for (const v of list.voices) {
      if (!v || typeof v !== "object" || typeof v.id !== "string" || !v.id) continue;
      const label = languageName(typeof v.language === "string" ? v.language : "");
      if (!groups.has(label)) groups.set(label, []);
      groups.get(label).push(v);
      if (v.id === chosen) known = true;
    }
    if (chosen && !known) {
      const option = el("option", null, chosen + " (current)");
      option.value = chosen;
      options.push(option);
    }
    const first = (voices) => voices.some((v) => v.id === chosen || v.id === list.default_voice);
    const labels = [...groups.keys()].sort((a, b) => {
      const pa = first(groups.get(a)) ? 0 : 1;
      const pb = first(groups.get(b)) ? 0 : 1;
      return pa - pb || a.localeCompare(b);
    });
    for (const label of labels) {
      const group = el("optgroup");
      group.label = label;
      const voices = groups.get(label).sort((a, b) => String(a.name).localeCompare(b.name));
      for (const v of voices) {
        const bits = [typeof v.name === "string" && v.name ? v.name : v.id];
        if (v.gender === "female" || v.gender === "male") bits.push(v.gender);
        if (v.id === list.default_voice) bits.push("default");
        const option = el("option", null, bits.join(" · "));
        option.value = v.id;
        group.appendChild(option);
      }
      options.push(group);
    }
    select.replaceChildren(...options);
    select.disabled = options.length === 0;
    select.value = chosen;
    this.ui.preview.disabled = options.length === 0;
    let says = "Voices by " + backendName(list.backend) + ".";
    if (this.prefs && this.prefs.backend && this.prefs.backend !== list.backend) {
      says = "Voices by " + backendName(list.backend) + " (standing in for ";
      says += backendName(this.prefs.backend) + ").";
    }
    if (list.fallback) says += " If it fails, " + backendName(list.fallback) + " speaks instead.";
    this.ui.backend.textContent = says;
  }

  // --- what the controls show ---------------------------------------------------------------

  showPrefs() {
    const prefs = this.prefs;
    if (!prefs) return;
    this.ui.enabled.checked = prefs.enabled;
    const speed = this.ui.speed;
    const values = SPEEDS.includes(prefs.speed) ? [...SPEEDS] : [...SPEEDS, prefs.speed];
    speed.replaceChildren(
      ...values
        .sort((a, b) => a - b)
        .map((s) => {
          const option = el("option", null, speedLabel(s) + (s === 1 ? " (normal)" : ""));
          option.value = String(s);
          return option;
        }),
    );
    speed.value = String(prefs.speed);
    if (prefs.volume !== this.volume) this.applyVolume(prefs.volume);
    this.showVoices();
  }

  showVolume() {
    const percent = Math.round(this.volume * 100);
    this.ui.volume.value = String(percent);
    this.ui.volumeOut.textContent = percent + " %";
    this.ui.volume.setAttribute("aria-valuetext", percent + " percent");
  }

  render() {
    const ui = this.ui;
    ui.root.hidden = !(this.ready && this.available);
    const clip = this.current;
    const playing = Boolean(clip) && !this.paused && !this.blocked && !playback.unlocking;
    let state = "idle";
    if (clip && this.blocked) state = "blocked";
    else if (clip && this.paused) state = "paused";
    else if (clip) state = "playing";
    else if (this.queue.length) state = "waiting";
    const caption = ui.caption;
    caption.dataset.state = state;
    caption.dataset.played = String(this.played);
    caption.dataset.queued = String(this.queue.length);
    if (clip) {
      caption.dataset.replyId = clip.replyId;
      caption.dataset.index = String(clip.index);
      ui.captionText.textContent = clip.text;
      const fallback = this.prefs && clip.backend && clip.backend !== this.prefs.backend;
      ui.captionMeta.textContent = fallback ? "spoken by " + backendName(clip.backend) : "";
    } else {
      delete caption.dataset.replyId;
      delete caption.dataset.index;
      ui.captionMeta.textContent = "";
      let hint;
      if (this.prefs && !this.prefs.enabled) hint = "Speaking replies is off.";
      else if (this.queue.length === 1) hint = "1 sentence is waiting: press Play to hear it.";
      else if (this.queue.length) {
        hint = this.queue.length + " sentences are waiting: press Play to hear them.";
      } else if (this.autoplay) hint = "Your companion’s replies are read aloud.";
      else hint = "Replies wait for you to press Play.";
      ui.captionText.textContent = hint;
    }
    ui.play.dataset.playing = playing ? "true" : "false";
    ui.play.setAttribute("aria-label", playing ? "Pause speaking" : "Play the reply aloud");
    ui.play.title = playing ? "Pause" : "Play";
    ui.play.disabled = !clip && this.queue.length === 0;
    ui.skip.disabled = !clip && this.queue.length === 0;
    ui.stop.disabled = !clip && this.queue.length === 0;
    ui.unlock.hidden = !playback.blocked; // any clip of the queue: a tap plays it
    ui.autoplay.checked = this.autoplay;
  }

  /** A short, non-blocking note under the caption; it goes by itself. */
  notice(text) {
    window.clearTimeout(this.noticeTimer);
    this.ui.status.textContent = text;
    this.noticeTimer = window.setTimeout(() => this.clearNotice(), NOTICE_MS);
  }

  clearNotice() {
    window.clearTimeout(this.noticeTimer);
    this.ui.status.textContent = "";
  }

  // --- the sentence in the transcript ---------------------------------------------------------

  /**
   * Marks the sentence being spoken in the reply's text (CSS Custom Highlight,
   * where supported). Tried again each time the reply is rendered: a clip can
   * start before the frame that shows its sentence.
   */
  highlight() {
    const clip = this.current;
    if (!clip || typeof CSS === "undefined" || !CSS.highlights) return;
    if (typeof Highlight === "undefined") return;
    if (!this.highlighted || this.highlighted.clip !== clip) {
      const from = this.highlightFrom.get(clip.replyId) || 0;
      this.highlighted = { clip, replyId: clip.replyId, from };
    }
    const body = this.replyBody(clip.replyId);
    const found = body ? findSentence(body, clip.text, this.highlighted.from) : null;
    if (!found) {
      CSS.highlights.delete("voice-sentence");
      return;
    }
    this.highlightFrom.set(clip.replyId, found.end);
    CSS.highlights.set("voice-sentence", new Highlight(found.range));
  }

  unhighlight() {
    this.highlighted = null;
    if (typeof CSS !== "undefined" && CSS.highlights) CSS.highlights.delete("voice-sentence");
  }

  // --- events ---------------------------------------------------------------------------------

  wire() {
    const ui = this.ui;
    // The first gesture anywhere unlocks audio: playback.js listens for it.
    ui.play.addEventListener("click", () => this.togglePlay());
    ui.skip.addEventListener("click", () => this.skip());
    ui.stop.addEventListener("click", () => this.stop());
    ui.unlock.addEventListener("click", () => playback.resume());
    ui.settingsButton.addEventListener("click", () => this.toggleSettings());
    ui.settings.addEventListener("keydown", (event) => {
      if (event.key === "Escape") this.closeSettings();
    });
    // A click elsewhere closes the settings (they cover the end of the conversation).
    document.addEventListener("click", (event) => {
      if (ui.settings.hidden || !(event.target instanceof Node)) return;
      if (ui.settings.contains(event.target) || ui.settingsButton.contains(event.target)) return;
      this.closeSettings();
    });
    ui.enabled.addEventListener("change", () => this.setPref({ enabled: ui.enabled.checked }));
    ui.autoplay.addEventListener("change", () => this.setAutoplay(ui.autoplay.checked));
    ui.select.addEventListener("change", () => this.setPref({ voice: ui.select.value }));
    ui.speed.addEventListener("change", () => {
      const speed = parseFloat(ui.speed.value);
      if (Number.isFinite(speed)) this.setPref({ speed });
    });
    ui.preview.addEventListener("click", () => {
      if (this.preview) this.stopPreview();
      else this.playPreview();
    });
    ui.volume.addEventListener("input", () => this.setVolume(Number(ui.volume.value)));
    // Sent where the slider stops, not at every step.
    ui.volume.addEventListener("change", () => this.setVolume(Number(ui.volume.value), true));
    this.showVolume();
  }
}
