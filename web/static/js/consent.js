// The privacy notice (web/templates/_consent.html), on every page: shown at the
// top of the content, without blocking anything, until the person answers
// (docs/privacy.md).
//
// - An account is asked while its stored choice (``privacy.analytics`` from
//   GET /api/me/preferences) is still null; "Keep analytics" / "Don't keep"
//   stores it with PATCH /api/me/preferences. Once answered, this browser
//   remembers that the account has chosen (localStorage) and asks the server
//   no more.
// - Guests and signed-out visitors are told that nothing is recorded about
//   them; "Got it" hides the notice in this browser for good (localStorage).
//
// A stored choice is announced on ``window`` as the ``bambid:preferences``
// event (``detail``: ``{notifications, privacy}``, as stored now), which the
// settings page listens to.

const SEEN = "bambid.consent.seen";
const DECIDED = "bambid.consent.decided.";

function readStore(key) {
  try {
    return window.localStorage.getItem(key);
  } catch (err) {
    return null; // no storage (private mode): asked again next time
  }
}

function writeStore(key, value) {
  try {
    window.localStorage.setItem(key, value);
  } catch (err) {
    // not kept: the notice may come back on the next page
  }
}

class ConsentNotice {
  constructor(root) {
    this.root = root;
    this.state = root.dataset.state || "anonymous";
    this.user = (root.dataset.user || "").toLowerCase();
    this.status = root.querySelector("#consent-status");
    this.busy = false;
    for (const button of root.querySelectorAll("[data-consent]")) {
      button.addEventListener("click", () => this.answer(button.dataset.consent));
    }
  }

  async start() {
    if (this.state !== "account") {
      if (readStore(SEEN) !== "1") this.show();
      return;
    }
    if (readStore(DECIDED + this.user) === "1") return;
    let prefs;
    try {
      const response = await fetch("/api/me/preferences", {
        credentials: "same-origin",
        headers: { Accept: "application/json" },
      });
      if (!response.ok) return; // signed out meanwhile, or the server is busy: ask later
      prefs = await response.json();
    } catch (err) {
      return;
    }
    const privacy = prefs && typeof prefs.privacy === "object" ? prefs.privacy : null;
    if (privacy && typeof privacy.analytics === "boolean") {
      writeStore(DECIDED + this.user, "1");
      return;
    }
    this.show();
  }

  show() {
    // Shown in the flow above the page's content, where it is seen at once and
    // covers nothing (the chat's message boxes are at the bottom of the window);
    // moved there in the DOM, so that the keyboard reaches it in that order too.
    const main = document.querySelector("body > main");
    if (main && this.root.nextElementSibling !== main) main.before(this.root);
    this.root.hidden = false;
  }

  hide() {
    this.root.hidden = true;
  }

  async answer(choice) {
    if (choice === "seen") {
      writeStore(SEEN, "1");
      this.hide();
      return;
    }
    if (this.busy) return;
    this.busy = true;
    this.status.textContent = "";
    const analytics = choice === "yes";
    try {
      const response = await fetch("/api/me/preferences", {
        method: "PATCH",
        credentials: "same-origin",
        headers: { "Content-Type": "application/json", Accept: "application/json" },
        body: JSON.stringify({ privacy: { analytics } }),
      });
      const body = await response.json().catch(() => null);
      if (!response.ok) {
        const says =
          body && typeof body.message === "string" ? body.message : "status " + response.status;
        this.status.textContent = "Your choice was not saved (" + says + "). Try again.";
        return;
      }
      writeStore(DECIDED + this.user, "1");
      this.hide();
      // The whole object's notifications too: listeners take the event as the state.
      if (body && typeof body === "object") {
        const detail = { notifications: body.notifications, privacy: body.privacy };
        window.dispatchEvent(new CustomEvent("bambid:preferences", { detail }));
      }
    } catch (err) {
      this.status.textContent =
        "Your choice was not saved: the server could not be reached. Try again.";
    } finally {
      this.busy = false;
    }
  }
}

const root = document.getElementById("consent");
if (root) {
  // ``data-checked`` tells (tests, styles) that the notice has made up its mind.
  new ConsentNotice(root).start().finally(() => {
    root.dataset.checked = "true";
  });
}
