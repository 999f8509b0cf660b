// Test harness for tests/test_browser_effects.py: exposes the effect modules and
// helpers on window.effects. Not part of bambid.
import { Spirals, defaultSettings, mergeSettings } from "/static/js/spirals.js";
import { Binaural, PATTERNS, PRESETS, resolvePattern } from "/static/js/binaural.js";

const canvas = document.getElementById("spirals");
const spirals = new Spirals(canvas);
const binaural = new Binaural();
const events = [];
for (const type of ["start", "change", "segment", "end"]) {
  binaural.addEventListener(type, (event) => events.push({ type, detail: event.detail }));
}

/** A digest of the canvas pixels: {painted: pixels not transparent, hash}. */
function sample() {
  const context = canvas.getContext("2d");
  const data = context.getImageData(0, 0, canvas.width, canvas.height).data;
  let painted = 0;
  let hash = 0;
  for (let i = 0; i < data.length; i += 4) {
    if (data[i + 3] !== 0) painted += 1;
    hash = (Math.imul(hash, 31) + data[i] + 3 * data[i + 1] + 7 * data[i + 2] + data[i + 3]) | 0;
  }
  return { painted, hash, width: canvas.width, height: canvas.height };
}

/** Resolves after ``count`` animation frames. */
function frames(count) {
  return new Promise((resolve) => {
    const step = (left) => (left <= 0 ? resolve() : requestAnimationFrame(() => step(left - 1)));
    step(count);
  });
}

/**
 * A Binaural routed through a splitter into one analyser per ear; ``peaks()``
 * gives the frequency (Hz) of the loudest bin of each ear.
 */
function analysedBinaural() {
  const context = new AudioContext();
  const input = context.createGain();
  const splitter = context.createChannelSplitter(2);
  const ears = [context.createAnalyser(), context.createAnalyser()];
  input.connect(splitter);
  ears.forEach((analyser, channel) => {
    analyser.fftSize = 32768;
    analyser.smoothingTimeConstant = 0;
    splitter.connect(analyser, channel);
  });
  input.connect(context.destination);
  const instance = new Binaural(context, { destination: input });
  const peaks = () =>
    ears.map((analyser) => {
      const bins = new Float32Array(analyser.frequencyBinCount);
      analyser.getFloatFrequencyData(bins);
      let best = 0;
      for (let i = 1; i < bins.length; i++) if (bins[i] > bins[best]) best = i;
      return { hz: (best * context.sampleRate) / analyser.fftSize, db: bins[best] };
    });
  return { context, instance, peaks, resolution: context.sampleRate / 32768 };
}

window.effects = {
  Spirals,
  Binaural,
  PATTERNS,
  PRESETS,
  defaultSettings,
  mergeSettings,
  resolvePattern,
  spirals,
  binaural,
  events,
  sample,
  frames,
  analysedBinaural,
};
document.body.dataset.ready = "1";
