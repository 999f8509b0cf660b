/**
 * Two animated spirals on a <canvas> (2D context, requestAnimationFrame), after
 * the original's p5 sketch: each spiral is a band of 450 steps drawn as a
 * triangle strip; spiral 1 (purple) turns 1 rad per step, spiral 2 (pink)
 * 0.3 rad; each step moves outwards by a radial step that oscillates with
 * sin (spiral 1) or cos (spiral 2) of time / speed; the band starts at the
 * spiral's width and narrows by width / 350 per step; the whole drawing turns
 * slowly. The canvas is transparent around the spirals.
 *
 * Usage:
 *
 *     import { Spirals } from "/static/js/spirals.js";
 *     const spirals = new Spirals(canvas, { spiral1Width: 6 });
 *     spirals.start();
 *     spirals.update({ spiral2Speed: 30 });   // values are clamped
 *     spirals.stop();                          // clears the canvas
 *     spirals.destroy();                       // and forgets its observers
 *
 * Settings (all optional; out-of-range values are clamped, others ignored):
 *   spiral1Width  1-10, default 5    band width of spiral 1, CSS pixels
 *   spiral2Width  1-10, default 3
 *   spiral1Speed  5-50, default 20   the oscillation's period: LARGER IS SLOWER
 *   spiral2Speed  5-50, default 15   (time is counted in 60 fps frames, as in the original)
 *   spiral1Color  CSS colour, default "rgb(199, 0, 199)"
 *   spiral2Color  CSS colour, default "rgb(255, 130, 255)"
 *   rotation      radians per second, 0-12, default 1.2 (the original turned 12 rad/s)
 *   enabled       boolean, default true; false clears the canvas and draws nothing
 *
 * Behaviour:
 * - The canvas is sized to its parent element (ResizeObserver): its CSS size is set
 *   to the parent's content box and its backing store to that times
 *   devicePixelRatio (at most 4 megapixels: beyond, the ratio is lowered). Give
 *   the parent a size (e.g. a full-screen overlay).
 * - Drawing pauses while the tab is hidden and resumes when it is visible.
 * - Under `prefers-reduced-motion: reduce` one still frame is drawn and nothing
 *   animates; the media query is watched, so the animation starts or stops when
 *   the preference changes.
 * - Sizes are CSS pixels as in the original; on containers whose diagonal is
 *   over 1200 CSS pixels the drawing is scaled up so the spirals still fill it.
 *
 * Getters: `running` (started, enabled and not stopped), `animating` (frames are
 * being scheduled right now), `frames` (frames drawn so far, still frames
 * included), `reducedMotion` (the media query matches), `settings` (a copy).
 *
 * Also exported: `LIMITS`, `DEFAULT_COLORS`, `defaultSettings()` and
 * `mergeSettings(current, changes)` (the clamping, for forms and stored settings).
 *
 * Events (the instance is an EventTarget): "frame" is NOT dispatched (too
 * frequent); "statechange" when `animating` changes, with detail
 * `{ running, animating, reducedMotion }`.
 */

const STEPS = 450;
const FRAME_RATE = 60;
const REDUCED_MOTION = "(prefers-reduced-motion: reduce)";
const REFERENCE_RADIUS = 600;
const MAX_PIXELS = 4e6;

/** Defaults and limits of the numeric settings. */
export const LIMITS = Object.freeze({
  spiral1Width: Object.freeze({ min: 1, max: 10, default: 5 }),
  spiral2Width: Object.freeze({ min: 1, max: 10, default: 3 }),
  spiral1Speed: Object.freeze({ min: 5, max: 50, default: 20 }),
  spiral2Speed: Object.freeze({ min: 5, max: 50, default: 15 }),
  rotation: Object.freeze({ min: 0, max: 12, default: 1.2 }),
});

export const DEFAULT_COLORS = Object.freeze({
  spiral1Color: "rgb(199, 0, 199)",
  spiral2Color: "rgb(255, 130, 255)",
});

const COLOR = /^(#[0-9a-f]{3,8}|(rgb|rgba|hsl|hsla)\([0-9.,%\s/-]+\)|[a-z]{3,20})$/i;

/** The default settings, as a fresh object. */
export function defaultSettings() {
  const settings = { enabled: true, ...DEFAULT_COLORS };
  for (const [key, limit] of Object.entries(LIMITS)) settings[key] = limit.default;
  return settings;
}

/**
 * ``current`` with the valid parts of ``changes`` applied: numbers clamped to
 * their limits (numeric strings accepted), colours checked, ``enabled`` coerced
 * to a boolean; unknown keys and non-numbers ignored.
 */
export function mergeSettings(current, changes) {
  const merged = { ...current };
  if (!changes || typeof changes !== "object") return merged;
  for (const [key, limit] of Object.entries(LIMITS)) {
    if (!(key in changes)) continue;
    const value = typeof changes[key] === "string" ? Number(changes[key]) : changes[key];
    if (typeof value === "number" && Number.isFinite(value)) {
      merged[key] = Math.min(limit.max, Math.max(limit.min, value));
    }
  }
  for (const key of Object.keys(DEFAULT_COLORS)) {
    if (typeof changes[key] === "string" && COLOR.test(changes[key].trim())) {
      merged[key] = changes[key].trim();
    }
  }
  if ("enabled" in changes) merged.enabled = Boolean(changes.enabled);
  return merged;
}

export class Spirals extends EventTarget {
  /**
   * @param {HTMLCanvasElement} canvas  drawn into; sized to its parent element
   * @param {object} settings           see the module comment
   */
  constructor(canvas, settings = {}) {
    super();
    if (!canvas || typeof canvas.getContext !== "function") {
      throw new TypeError("Spirals needs a <canvas> element");
    }
    this.canvas = canvas;
    this.context = canvas.getContext("2d");
    this._settings = mergeSettings(defaultSettings(), settings);
    this._started = false;
    this._frames = 0;
    this._request = 0;
    this._origin = null; // performance.now() of time zero, shifted on pauses
    this._pausedAt = null;
    this._cssWidth = 0;
    this._cssHeight = 0;
    this._ratio = 1;
    this._tick = (now) => this._frame(now);
    this._still = false; // the canvas shows the still frame of the current state

    this._motion = window.matchMedia ? window.matchMedia(REDUCED_MOTION) : null;
    this._onMotion = () => this._reconcile();
    this._onVisibility = () => this._reconcile();
    if (this._motion) this._motion.addEventListener("change", this._onMotion);
    document.addEventListener("visibilitychange", this._onVisibility);

    this._resizeObserver = null;
    const container = canvas.parentElement;
    if (container && typeof ResizeObserver === "function") {
      this._resizeObserver = new ResizeObserver(() => this._resize());
      this._resizeObserver.observe(container);
    }
    this._resize();
  }

  /** Start (or resume) drawing. */
  start() {
    this._started = true;
    this._still = false;
    this._reconcile();
  }

  /** Stop drawing and clear the canvas. */
  stop() {
    this._started = false;
    this._reconcile();
  }

  /** Apply settings (see the module comment); the next frame uses them. */
  update(settings) {
    this._settings = mergeSettings(this._settings, settings);
    this._still = false;
    this._reconcile();
  }

  /** Stop, and disconnect the observers and listeners. */
  destroy() {
    this.stop();
    if (this._resizeObserver) this._resizeObserver.disconnect();
    if (this._motion) this._motion.removeEventListener("change", this._onMotion);
    document.removeEventListener("visibilitychange", this._onVisibility);
  }

  /** Started, enabled and not stopped (it may still be still: see ``animating``). */
  get running() {
    return this._started && this._settings.enabled;
  }

  /** Frames are being scheduled right now. */
  get animating() {
    return this._request !== 0;
  }

  /** Frames drawn so far (still frames included). */
  get frames() {
    return this._frames;
  }

  /** Whether the user prefers reduced motion. */
  get reducedMotion() {
    return Boolean(this._motion && this._motion.matches);
  }

  /** A copy of the current settings. */
  get settings() {
    return { ...this._settings };
  }

  // --- internals ----------------------------------------------------------------

  /** Bring the animation loop in line with the state: running, visible, motion allowed. */
  _reconcile() {
    const wasAnimating = this.animating;
    const animate = this.running && !this.reducedMotion && document.visibilityState !== "hidden";
    if (animate && !this.animating) {
      if (this._origin === null) this._origin = performance.now();
      else if (this._pausedAt !== null) this._origin += performance.now() - this._pausedAt;
      this._pausedAt = null;
      this._request = requestAnimationFrame(this._tick);
    } else if (!animate && this.animating) {
      cancelAnimationFrame(this._request);
      this._request = 0;
      this._pausedAt = performance.now();
    }
    if (!this.running) {
      this._clear();
    } else if (!animate && this.reducedMotion && !this._still) {
      this._drawStill();
    }
    if (wasAnimating !== this.animating) {
      this.dispatchEvent(
        new CustomEvent("statechange", {
          detail: {
            running: this.running,
            animating: this.animating,
            reducedMotion: this.reducedMotion,
          },
        }),
      );
    }
  }

  _frame(now) {
    this._request = requestAnimationFrame(this._tick);
    this._still = false;
    this._draw((now - this._origin) / 1000);
  }

  /** The frame for the moment the animation stands at (time zero before any). */
  _drawStill() {
    const now = this._pausedAt ?? performance.now();
    this._draw(this._origin === null ? 0 : Math.max(0, (now - this._origin) / 1000));
    this._still = true;
  }

  _resize() {
    const container = this.canvas.parentElement;
    const width = container ? container.clientWidth : this.canvas.clientWidth;
    const height = container ? container.clientHeight : this.canvas.clientHeight;
    // The backing store follows devicePixelRatio, up to MAX_PIXELS in all.
    const fit = Math.sqrt(MAX_PIXELS / Math.max(1, width * height));
    const ratio = Math.max(0.25, Math.min(window.devicePixelRatio || 1, fit));
    if (width === this._cssWidth && height === this._cssHeight && ratio === this._ratio) return;
    this._cssWidth = width;
    this._cssHeight = height;
    this._ratio = ratio;
    if (container) {
      this.canvas.style.width = width + "px";
      this.canvas.style.height = height + "px";
    }
    this.canvas.width = Math.max(1, Math.round(width * ratio));
    this.canvas.height = Math.max(1, Math.round(height * ratio));
    // Resizing wipes the canvas: redraw at once when nothing else will.
    this._still = false;
    if (this.running && !this.animating) this._drawStill();
  }

  _clear() {
    this.context.setTransform(1, 0, 0, 1, 0, 0);
    this.context.clearRect(0, 0, this.canvas.width, this.canvas.height);
  }

  /** Draw the spirals as they stand ``seconds`` after time zero. */
  _draw(seconds) {
    const s = this._settings;
    const ctx = this.context;
    const frame = seconds * FRAME_RATE;
    this._clear();
    const halfDiagonal = Math.hypot(this._cssWidth, this._cssHeight) / 2;
    const scale = this._ratio * Math.max(1, halfDiagonal / REFERENCE_RADIUS);
    ctx.setTransform(scale, 0, 0, scale, this.canvas.width / 2, this.canvas.height / 2);
    ctx.rotate(seconds * s.rotation);
    // map(sin(f / speed), -1..1 → 0.5..1.5) and map(cos(f / speed), -1..1 → 1..1.5)
    const step1 = 1 + 0.5 * Math.sin(frame / s.spiral1Speed);
    const step2 = 1.25 + 0.25 * Math.cos(frame / s.spiral2Speed);
    ctx.lineWidth = 1 / Math.max(1, halfDiagonal / REFERENCE_RADIUS);
    band(ctx, step1, 1, s.spiral1Width, s.spiral1Color);
    band(ctx, step2, 0.3, s.spiral2Width, s.spiral2Color);
    this._frames += 1;
  }
}

/**
 * One spiral: a triangle strip through the inner and outer points of 450 steps,
 * as the original's TRIANGLE_STRIP: each triangle filled on its own (one small
 * convex path each, the fast case for every canvas backend; their union is the
 * strip), then the strip's zigzag stroked in the same colour (the original
 * outlined its triangles, which thickens thin bands by a pixel).
 */
function band(ctx, step, turn, width, color) {
  // Strip vertices, interleaved x, y: inner 0, outer 0, inner 1, outer 1, ...
  const points = new Float64Array(4 * STEPS);
  const shrink = width / 350;
  let radius = 0;
  let bandWidth = width;
  for (let i = 0; i < STEPS; i++) {
    radius += step;
    bandWidth -= shrink;
    const sin = Math.sin(turn * i);
    const cos = Math.cos(turn * i);
    points[4 * i] = radius * sin;
    points[4 * i + 1] = radius * cos;
    points[4 * i + 2] = (radius + bandWidth) * sin;
    points[4 * i + 3] = (radius + bandWidth) * cos;
  }
  ctx.fillStyle = color;
  ctx.strokeStyle = color;
  // Triangle k is (vertex k, vertex k + 1, vertex k + 2).
  for (let k = 0; k + 2 < 2 * STEPS; k++) {
    ctx.beginPath();
    ctx.moveTo(points[2 * k], points[2 * k + 1]);
    ctx.lineTo(points[2 * k + 2], points[2 * k + 3]);
    ctx.lineTo(points[2 * k + 4], points[2 * k + 5]);
    ctx.fill();
  }
  ctx.beginPath();
  ctx.moveTo(points[0], points[1]);
  for (let k = 1; k < 2 * STEPS; k++) ctx.lineTo(points[2 * k], points[2 * k + 1]);
  ctx.stroke();
}
