// The profile page: the like and love buttons (JSON over fetch, same origin),
// and live counts over the WebSocket (profile.watch → profile.reactions).
// See docs/profiles.md and docs/protocol.md, "Profiles".
//
// Everything shown is set with textContent; the page's data comes from the
// data-* attributes of #profile.

import { Connection } from "./connection.js";

const root = document.getElementById("profile");
const $ = (id) => document.getElementById(id);

function sameName(a, b) {
  return typeof a === "string" && typeof b === "string" && a.toLowerCase() === b.toLowerCase();
}

class ProfilePage {
  constructor(element) {
    this.name = element.dataset.name;
    this.canReact = element.dataset.canReact === "true";
    this.state = {
      liked: element.dataset.liked === "true",
      loved: element.dataset.loved === "true",
    };
    this.buttons = { like: $("profile-like"), love: $("profile-love") };
    this.counts = { like: $("profile-likes"), love: $("profile-loves") };
    this.error = $("profile-react-error");
    this.live = $("profile-live");
    this.busy = false;
  }

  start() {
    if (this.canReact) {
      for (const kind of ["like", "love"]) {
        const button = this.buttons[kind];
        if (button) button.addEventListener("click", () => this.toggle(kind));
      }
    }
    this.connection = new Connection({
      state: (state) => this.showLive(state === "connected" ? "connecting" : state),
      hello: () => ({}),
      message: (message) => this.handle(message),
      closed: () => this.showLive("offline"),
    });
    this.connection.start();
  }

  showLive(state) {
    if (!this.live) return;
    this.live.dataset.state = state;
    this.live.textContent = "Live counts: " + state;
  }

  handle(message) {
    if (message.type === "welcome") {
      this.connection.send({ type: "profile.watch", id: "watch", name: this.name });
    } else if (message.type === "ack" && message.id === "watch") {
      this.showLive("live");
    } else if (message.type === "error" && message.id === "watch") {
      this.showLive("unavailable");
    } else if (message.type === "profile.reactions" && sameName(message.name, this.name)) {
      this.showCounts(message.likes, message.loves);
    }
  }

  showCounts(likes, loves) {
    if (Number.isInteger(likes) && this.counts.like) this.counts.like.textContent = String(likes);
    if (Number.isInteger(loves) && this.counts.love) this.counts.love.textContent = String(loves);
  }

  showPressed() {
    for (const [kind, key] of [["like", "liked"], ["love", "loved"]]) {
      const button = this.buttons[kind];
      if (button) button.setAttribute("aria-pressed", this.state[key] ? "true" : "false");
    }
  }

  showError(text) {
    if (!this.error) return;
    this.error.textContent = text;
    this.error.hidden = !text;
  }

  async toggle(kind) {
    if (this.busy) return;
    this.busy = true;
    const on = !this.state[kind === "like" ? "liked" : "loved"];
    for (const button of Object.values(this.buttons)) if (button) button.disabled = true;
    this.showError("");
    try {
      const response = await fetch(
        "/api/profiles/" + encodeURIComponent(this.name) + "/" + kind,
        {
          method: on ? "POST" : "DELETE",
          credentials: "same-origin",
          headers: { "Content-Type": "application/json", Accept: "application/json" },
          body: "{}",
        },
      );
      let answer = null;
      try {
        answer = await response.json();
      } catch (err) {
        answer = null;
      }
      if (!response.ok || !answer) {
        const why = answer && typeof answer.message === "string" ? answer.message : "try again";
        this.showError("Could not " + (on ? "" : "take back the ") + kind + ": " + why + ".");
        return;
      }
      this.state.liked = answer.liked === true;
      this.state.loved = answer.loved === true;
      this.showPressed();
      this.showCounts(answer.likes, answer.loves);
    } catch (err) {
      this.showError("Could not reach the server; try again.");
    } finally {
      for (const button of Object.values(this.buttons)) if (button) button.disabled = false;
      this.busy = false;
    }
  }
}

if (root && root.dataset.private !== "true") {
  new ProfilePage(root).start();
}
