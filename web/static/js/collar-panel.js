// The collar card (level 2, ``collar``): a short directive the companion's persona receives,
// switched on or off, saved with ``collar.set`` and kept in step by ``collar.state`` on every
// tab (docs/protocol.md, "collar.get → collar.state"). Part of effects.js (the host).
//
// Rules (docs/ui.md, "Effect panels"): the counter counts characters as the server does (code
// points); over the cap the text is not sent. A ``collar.state`` from another tab replaces
// the form unless it has unsaved edits here: then the edits stay and "Use the saved text"
// offers the saved one.

/** ``[triggers] collar_max_length`` by default; a bad_request from the server says otherwise. */
export const COLLAR_MAX = 500;

function length(text) {
  let n = 0;
  for (const _ of text) n += 1; // eslint-disable-line no-unused-vars
  return n;
}

export class CollarPanel {
  constructor(host, card) {
    this.host = host;
    this.card = card;
    this.feature = "collar";
    const $ = (id) => document.getElementById(id);
    this.ui = {
      badge: card.querySelector("[data-badge]"),
      form: $("fx-collar-form"),
      enabled: $("fx-collar-enabled"),
      text: $("fx-collar-text"),
      counter: $("fx-collar-counter"),
      save: $("fx-collar-save"),
      revert: $("fx-collar-revert"),
      error: $("fx-collar-error"),
      status: $("fx-collar-status"),
    };
    this.saved = null; // {text, enabled}: what the server has
    this.asking = false; // a collar.get in flight
    this.saving = false; // a collar.set in flight
    this.conflict = false; // another tab saved while this one has edits
    this.wire();
    this.render();
  }

  // --- from the host ----------------------------------------------------------------------

  welcome() {
    this.fetch();
  }

  levelChanged() {
    if (!this.saved) this.fetch();
  }

  connection() {
    this.render();
  }

  closed() {
    this.asking = false;
    this.saving = false;
    this.render();
  }

  frame(m) {
    if (m.type === "collar.state") this.onState(m);
  }

  // --- the server -------------------------------------------------------------------------

  fetch() {
    if (this.asking || !this.host.unlocked(this.feature)) return;
    const id = this.host.request(
      { type: "collar.get" },
      {
        answer: (m) => {
          this.asking = false;
          this.onState(m);
        },
        error: (m) => {
          this.asking = false;
          this.showError(this.host.describeError(m, "Could not load your collar"));
          this.host.render();
        },
        lost: () => {
          this.asking = false;
        },
      },
    );
    this.asking = id !== null;
  }

  onState(m) {
    const next = {
      text: typeof m.text === "string" ? m.text : "",
      enabled: m.enabled === true,
    };
    const hadEdits = this.saved !== null && this.dirty();
    this.saved = next;
    if (!hadEdits || this.matches(next)) {
      this.ui.text.value = next.text;
      this.ui.enabled.checked = next.enabled;
      this.conflict = false;
    } else {
      this.conflict = true;
    }
    this.render();
  }

  save() {
    this.clearError();
    const text = this.ui.text.value.trim();
    const count = length(text);
    if (count > COLLAR_MAX) {
      this.showError("The collar is at most " + COLLAR_MAX + " characters.");
      return;
    }
    if (this.saving) return;
    const id = this.host.request(
      { type: "collar.set", text, enabled: this.ui.enabled.checked },
      {
        ack: () => {
          this.saving = false;
          this.conflict = false;
          this.ui.status.textContent = "Saved.";
          this.render();
        },
        error: (m) => {
          this.saving = false;
          this.showError(this.host.describeError(m, "Not saved"));
          if (m.code === "level_required") this.host.render();
          this.render();
        },
        lost: () => {
          this.saving = false;
          this.showError("Not saved: the connection was lost. Save again once it is back.");
        },
      },
    );
    if (id === null) {
      this.showError("Not saved: not connected.");
      return;
    }
    this.saving = true;
    this.ui.status.textContent = "Saving…";
    this.render();
  }

  // --- the form ---------------------------------------------------------------------------

  /** The form differs from what the server has. */
  dirty() {
    return this.saved !== null && !this.matches(this.saved);
  }

  matches(state) {
    return this.ui.text.value.trim() === state.text.trim() && this.ui.enabled.checked === state.enabled;
  }

  render() {
    const ui = this.ui;
    const count = length(ui.text.value.trim());
    const over = count - COLLAR_MAX;
    ui.counter.textContent =
      count + " / " + COLLAR_MAX + (over > 0 ? " · " + over + " too many" : "");
    ui.counter.classList.toggle("fx-counter--over", over > 0);
    ui.text.setAttribute("aria-invalid", over > 0 ? "true" : "false");
    ui.save.disabled = this.saving || over > 0 || !this.host.connected;
    ui.revert.hidden = !this.conflict;
    if (this.conflict) {
      ui.status.textContent = "You changed the collar in another tab; your edits here are not saved.";
    }
    this.card.dataset.enabled = this.saved && this.saved.enabled ? "true" : "false";
    if (this.host.unlocked(this.feature)) {
      const on = Boolean(this.saved && this.saved.enabled);
      ui.badge.textContent = this.saved ? (on ? "On" : "Off") : "";
      ui.badge.dataset.kind = on ? "on" : "off";
    }
  }

  showError(text) {
    this.ui.error.textContent = text;
    this.ui.status.textContent = "";
  }

  clearError() {
    this.ui.error.textContent = "";
  }

  wire() {
    const ui = this.ui;
    ui.form.addEventListener("submit", (event) => {
      event.preventDefault();
      this.save();
    });
    const edited = () => {
      if (!this.conflict && !this.saving) ui.status.textContent = this.dirty() ? "Not saved yet." : "";
      this.clearError();
      this.render();
    };
    ui.text.addEventListener("input", edited);
    ui.enabled.addEventListener("change", edited);
    ui.text.addEventListener("keydown", (event) => {
      // Ctrl/Cmd+Enter saves from the text box.
      if (event.key === "Enter" && (event.ctrlKey || event.metaKey)) {
        event.preventDefault();
        this.save();
      }
    });
    ui.revert.addEventListener("click", () => {
      if (!this.saved) return;
      ui.text.value = this.saved.text;
      ui.enabled.checked = this.saved.enabled;
      this.conflict = false;
      ui.status.textContent = "";
      this.render();
      ui.text.focus();
    });
  }
}
