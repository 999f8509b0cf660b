// The settings page (web/templates/settings.html): the privacy choice, the
// notification switches, speech on/off and volume, against "Your data" in
// docs/api.md and docs/protocol.md.
//
// Each change is sent at once with PATCH /api/me/preferences; the answer (the
// whole preferences object) is what the controls show, and a refusal puts the
// control back as the server has it, with the reason under the heading. The
// page also keeps a WebSocket open, so a change made on another device or tab
// (``preferences.update``, ``voice.prefs``) shows here at once, and the
// privacy notice's answer (the ``bambid:preferences`` event) too.

import { Connection } from "./connection.js";

const $ = (id) => document.getElementById(id);
const ui = {
  status: $("settings-status"),
  analyticsYes: $("settings-analytics-yes"),
  analyticsNo: $("settings-analytics-no"),
  decided: $("settings-privacy-decided"),
  switches: [...document.querySelectorAll("[data-notification]")],
  voiceEnabled: $("settings-voice-enabled"),
  volume: $("settings-voice-volume"),
  volumeOut: $("settings-voice-volume-out"),
};

/** What the server has, as far as this page knows (first: what the page was rendered with). */
const state = {
  notifications: Object.fromEntries(ui.switches.map((i) => [i.dataset.notification, i.checked])),
  privacy: {
    analytics: ui.analyticsYes.checked ? true : ui.analyticsNo.checked ? false : null,
    decided_at: null,
  },
  voice: { enabled: ui.voiceEnabled.checked, volume: Number(ui.volume.value) / 100 },
};

function say(text) {
  ui.status.textContent = text;
}

function formatWhen(seconds) {
  return new Date(seconds * 1000).toLocaleString([], { dateStyle: "medium", timeStyle: "short" });
}

// --- showing the server's values -------------------------------------------------------------

function showNotifications(notifications) {
  if (!notifications || typeof notifications !== "object") return;
  state.notifications = notifications;
  for (const input of ui.switches) {
    const value = notifications[input.dataset.notification];
    if (typeof value === "boolean") input.checked = value;
  }
}

function showPrivacy(privacy) {
  if (!privacy || typeof privacy !== "object") return;
  state.privacy = privacy;
  ui.analyticsYes.checked = privacy.analytics === true;
  ui.analyticsNo.checked = privacy.analytics === false;
  if (typeof privacy.decided_at === "number") {
    ui.decided.textContent = "Chosen " + formatWhen(privacy.decided_at) + ".";
  } else if (privacy.analytics === null) {
    ui.decided.textContent = "You have not chosen yet: nothing is recorded until you do.";
  }
}

function showVolume(volume) {
  const percent = Math.round(volume * 100);
  ui.volume.value = String(percent);
  ui.volumeOut.textContent = percent + " %";
  ui.volume.setAttribute("aria-valuetext", percent + " percent");
}

function showVoice(voice) {
  if (!voice || typeof voice !== "object") return;
  state.voice = { ...(state.voice || {}), ...voice };
  if (typeof voice.enabled === "boolean") ui.voiceEnabled.checked = voice.enabled;
  if (typeof voice.volume === "number" && Number.isFinite(voice.volume)) showVolume(voice.volume);
}

function showAll(prefs) {
  showNotifications(prefs.notifications);
  showPrivacy(prefs.privacy);
  showVoice(prefs.voice);
}

// --- sending changes ---------------------------------------------------------------------------

async function patch(change, what) {
  say("");
  let response;
  let body = null;
  try {
    response = await fetch("/api/me/preferences", {
      method: "PATCH",
      credentials: "same-origin",
      headers: { "Content-Type": "application/json", Accept: "application/json" },
      body: JSON.stringify(change),
    });
    body = await response.json().catch(() => null);
  } catch (err) {
    say("Your " + what + " could not be saved: the server could not be reached.");
    showKnown();
    return;
  }
  if (!response.ok) {
    const says =
      body && typeof body.message === "string" ? body.message : "status " + response.status;
    say("Your " + what + " could not be saved: " + says + ".");
    showKnown();
    return;
  }
  if (body) showAll(body);
  say("Saved.");
}

/** Back to what the server has (after a refusal). */
function showKnown() {
  showAll(state);
}

for (const input of ui.switches) {
  input.addEventListener("change", () =>
    patch({ notifications: { [input.dataset.notification]: input.checked } }, "notifications"),
  );
}
for (const radio of [ui.analyticsYes, ui.analyticsNo]) {
  radio.addEventListener("change", () => {
    if (radio.checked) patch({ privacy: { analytics: radio.value === "yes" } }, "privacy choice");
  });
}
ui.voiceEnabled.addEventListener("change", () =>
  patch({ voice: { enabled: ui.voiceEnabled.checked } }, "voice setting"),
);
// The number follows the slider; the server hears the value where it stops.
ui.volume.addEventListener("input", () => {
  const percent = Number(ui.volume.value);
  ui.volumeOut.textContent = percent + " %";
  ui.volume.setAttribute("aria-valuetext", percent + " percent");
});
ui.volume.addEventListener("change", () =>
  patch({ voice: { volume: Number(ui.volume.value) / 100 } }, "volume"),
);

// The privacy notice answered on this page.
window.addEventListener("bambid:preferences", (event) => {
  const detail = event.detail || {};
  if (detail.privacy) showPrivacy(detail.privacy);
});

// --- changes made elsewhere --------------------------------------------------------------------

const connection = new Connection({
  state() {},
  hello() {
    return {};
  },
  message(m) {
    switch (m.type) {
      case "welcome":
        // Whatever changed while this page was not connected.
        if (m.user) connection.send({ type: "preferences.get", id: "settings-prefs" });
        break;
      case "preferences.state":
        showAll(m);
        break;
      case "preferences.update":
        if (m.notifications) showNotifications(m.notifications);
        if (m.privacy) showPrivacy(m.privacy);
        break;
      case "voice.prefs":
        showVoice(m);
        break;
      default:
        break;
    }
  },
  closed() {},
});
connection.start();
