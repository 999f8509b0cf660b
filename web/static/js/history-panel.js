// The session history card (level 3, ``session_history``): the person's past conversations
// with their companion (``ai.conversations``), each of which can be opened in the companion
// panel (``ai.load``: the panel re-renders from the ``ai.conversation`` that follows), heard
// again (``voice.replay``: the voice queue of the companion panel plays it) or deleted after a
// confirmation (``ai.delete``). docs/protocol.md, "Session history". Part of effects.js.
//
// The companion panel's own "Past conversations" list is the quick switcher; this card is the
// fuller view. Everything the server sends is shown with textContent.

import { element as el } from "./chat-render.js";

const REFRESH_MS = 800; // after a conversation changes, the list is asked for again (once)

function formatDay(ts) {
  if (typeof ts !== "number" || !Number.isFinite(ts)) return "";
  return new Date(ts * 1000).toLocaleString([], { dateStyle: "medium", timeStyle: "short" });
}

function titleOf(c) {
  return typeof c.title === "string" && c.title.trim() ? c.title.trim() : "New conversation";
}

export class HistoryPanel {
  constructor(host, card) {
    this.host = host;
    this.card = card;
    this.feature = "session_history";
    const $ = (id) => document.getElementById(id);
    this.ui = {
      badge: card.querySelector("[data-badge]"),
      refresh: $("fx-history-refresh"),
      list: $("fx-history-list"),
      status: $("fx-history-status"),
      error: $("fx-history-error"),
      replay: $("fx-history-replay"),
      replayText: $("fx-history-replay-text"),
      replayStop: $("fx-history-replay-stop"),
    };
    this.conversations = null; // the last list, or null before the first
    this.shown = null; // the list as last rendered (JSON)
    this.loading = false;
    this.current = null; // the conversation the companion panel shows (ai.conversation)
    this.replay = null; // {replyId, conversationId, title, state: "asking"|"speaking"}
    this.refreshTimer = 0;
    this.wire();
    this.render();
  }

  // --- from the host ----------------------------------------------------------------------

  welcome() {
    this.endReplay("");
    this.load();
  }

  levelChanged() {
    if (this.conversations === null) this.load();
    this.render();
  }

  connection() {
    this.render();
  }

  closed() {
    this.loading = false;
    this.render();
  }

  frame(m) {
    switch (m.type) {
      case "ai.conversation":
        if (typeof m.conversation_id === "string") this.current = m.conversation_id;
        this.markCurrent();
        this.refreshSoon();
        break;
      case "ai.done":
      case "ai.error":
        this.refreshSoon(); // a reply was stored: counts and order changed
        break;
      case "voice.audio":
        if (this.replay && m.reply_id === this.replay.replyId) {
          this.replay.state = "speaking";
          this.renderReplay();
        }
        break;
      case "voice.done":
        if (this.replay && m.reply_id === this.replay.replyId) {
          if (m.stopped) this.endReplay("Replay stopped.");
          else this.replayAnnounced();
        }
        break;
      default:
        break;
    }
  }

  // --- the server -------------------------------------------------------------------------

  /** Ask for the list (when the card is open and unlocked). */
  load() {
    if (this.loading || !this.card.open || !this.host.unlocked(this.feature)) return;
    const id = this.host.request(
      { type: "ai.conversations" },
      {
        answer: (m) => {
          this.loading = false;
          // An empty conversation (a new one not used yet) has nothing to open or hear.
          this.conversations = Array.isArray(m.conversations)
            ? m.conversations.filter(
                (c) => c && typeof c.conversation_id === "string" && c.turns !== 0,
              )
            : [];
          this.ui.error.textContent = "";
          this.renderList();
          this.render();
        },
        error: (m) => {
          this.loading = false;
          this.say("");
          this.ui.error.textContent = this.host.describeError(m, "Could not load your conversations");
          if (m.code === "level_required") this.host.render();
          this.render();
        },
        lost: () => {
          this.loading = false;
        },
      },
    );
    this.loading = id !== null;
    this.render();
  }

  refreshSoon() {
    if (this.conversations === null) return;
    window.clearTimeout(this.refreshTimer);
    this.refreshTimer = window.setTimeout(() => this.load(), REFRESH_MS);
  }

  open(c) {
    this.ui.error.textContent = "";
    const id = this.host.request(
      { type: "ai.load", conversation_id: c.conversation_id },
      {
        ack: () => {
          this.current = c.conversation_id;
          this.markCurrent();
          this.say("“" + titleOf(c) + "” is open in your companion panel.");
          this.showCompanion();
        },
        error: (m) => this.failed(m, "Could not open it"),
      },
    );
    if (id === null) this.ui.error.textContent = "Not connected.";
  }

  startReplay(c) {
    this.ui.error.textContent = "";
    if (this.replay) this.stopReplay(false);
    const id = this.host.request(
      { type: "voice.replay", conversation_id: c.conversation_id },
      {
        ack: (m) => {
          if (!this.replay || this.replay.requestId !== id) return;
          if (typeof m.reply_id !== "string") {
            this.endReplay("");
            return;
          }
          this.replay.replyId = m.reply_id;
          this.renderReplay();
        },
        error: (m) => {
          if (this.replay && this.replay.requestId === id) this.endReplay("");
          this.failed(m, "Could not replay it");
        },
        lost: () => {
          if (this.replay && this.replay.requestId === id) this.endReplay("");
        },
      },
    );
    if (id === null) {
      this.ui.error.textContent = "Not connected.";
      return;
    }
    this.replay = {
      requestId: id,
      replyId: null,
      conversationId: c.conversation_id,
      title: titleOf(c),
      state: "asking",
    };
    this.renderReplay();
  }

  /** End the replay on the server and silence what the voice already queued for it. */
  stopReplay(focus = true) {
    const replay = this.replay;
    if (!replay) return;
    if (replay.replyId) {
      this.host.request({ type: "voice.stop", reply_id: replay.replyId }, {});
      // The clips already announced would play on: the voice bar's own Stop silences them.
      const caption = document.getElementById("voice-caption");
      const silence = document.getElementById("voice-stop");
      if (caption && silence && !silence.disabled && caption.dataset.replyId === replay.replyId) {
        silence.click();
      }
    }
    this.endReplay("Replay stopped.");
    if (focus) this.ui.refresh.focus();
  }

  /**
   * Every sentence of the replay has been announced; the voice may still be speaking them.
   * The bar (and its Stop) stays until the voice's caption has moved past the replay.
   */
  replayAnnounced() {
    const replay = this.replay;
    replay.state = "done";
    this.renderReplay();
    const caption = document.getElementById("voice-caption");
    const over = () =>
      !caption || (caption.dataset.replyId !== replay.replyId && caption.dataset.state !== "waiting");
    if (over()) {
      this.endReplay("Replay finished.");
      return;
    }
    replay.observer = new MutationObserver(() => {
      if (this.replay === replay && over()) this.endReplay("Replay finished.");
    });
    replay.observer.observe(caption, { attributes: true });
  }

  endReplay(text) {
    if (this.replay && this.replay.observer) this.replay.observer.disconnect();
    this.replay = null;
    this.renderReplay();
    if (text) this.say(text);
  }

  remove(c, item) {
    this.ui.error.textContent = "";
    const id = this.host.request(
      { type: "ai.delete", conversation_id: c.conversation_id },
      {
        ack: () => {
          const next = item.nextElementSibling || item.previousElementSibling;
          this.conversations = (this.conversations || []).filter(
            (x) => x.conversation_id !== c.conversation_id,
          );
          item.remove();
          this.say("“" + titleOf(c) + "” was deleted.");
          const target = next && next.querySelector("button");
          (target || this.ui.refresh).focus();
          this.render();
          this.refreshSoon();
        },
        error: (m) => {
          this.closeConfirm(item);
          this.failed(m, "Could not delete it");
        },
      },
    );
    if (id === null) this.ui.error.textContent = "Not deleted: not connected.";
  }

  failed(m, doing) {
    this.ui.error.textContent = this.host.describeError(m, doing);
    if (m.code === "level_required") this.host.render();
    if (m.code === "not_found") this.load();
  }

  /** On a narrow screen the companion panel is behind the "Companion" switch: show it. */
  showCompanion() {
    const switcher = document.getElementById("view-companion");
    if (switcher && switcher.offsetParent !== null && switcher.getAttribute("aria-pressed") !== "true") {
      switcher.click();
    }
    const panel = document.getElementById("companion");
    if (panel && panel.scrollIntoView) panel.scrollIntoView({ block: "nearest" });
  }

  say(text) {
    this.ui.status.textContent = text;
  }

  // --- showing it -------------------------------------------------------------------------

  render() {
    const ui = this.ui;
    ui.refresh.disabled = this.loading || !this.host.connected;
    ui.list.setAttribute("aria-busy", this.loading ? "true" : "false");
    if (this.conversations === null && this.loading) this.say("Loading your conversations…");
    if (this.host.unlocked(this.feature)) {
      const n = this.conversations ? this.conversations.length : null;
      ui.badge.textContent = n === null ? "" : String(n);
      ui.badge.dataset.kind = "count";
    }
  }

  /**
   * Show ``this.conversations``. The list is rebuilt only when it changed; a confirmation
   * being asked and the focus stay where they were.
   */
  renderList() {
    const list = this.ui.list;
    const shown = JSON.stringify(this.conversations);
    if (shown === this.shown) return;
    this.shown = shown;
    const active = document.activeElement;
    const focusedItem = active && list.contains(active) ? active.closest(".fx-history-item") : null;
    const focused = focusedItem
      ? { id: focusedItem.dataset.conversationId, action: active.dataset.action }
      : null;
    const asking = list.querySelector(".fx-history-item--confirm");
    const askingId = asking ? asking.dataset.conversationId : null;
    const items = this.conversations.map((c) => this.buildItem(c));
    list.replaceChildren(...items);
    this.say(items.length ? "" : "No conversations yet.");
    const find = (id) => items.find((li) => li.dataset.conversationId === id) || null;
    if (askingId && find(askingId)) this.openConfirm(find(askingId), false);
    if (focused) {
      const li = find(focused.id);
      const button = li && li.querySelector(`[data-action="${focused.action}"]`);
      if (button && button.getClientRects().length) button.focus();
      else (items[0] ? items[0].querySelector("button") : this.ui.refresh).focus();
    }
    this.markCurrent();
    this.renderReplay();
  }

  buildItem(c) {
    const title = titleOf(c);
    const li = el("li", "fx-history-item");
    li.dataset.conversationId = c.conversation_id;
    const main = el("div", "fx-history-main");
    main.appendChild(el("span", "fx-history-title", title));
    const bits = [];
    const when = formatDay(c.updated_at);
    if (when) bits.push(when);
    const turns = Number.isInteger(c.turns) ? c.turns : 0;
    bits.push(turns + (turns === 1 ? " message" : " messages"));
    const meta = el("span", "fx-history-meta", bits.join(" · "));
    const now = el("span", "fx-history-now", "open now");
    now.hidden = true;
    meta.appendChild(now);
    main.appendChild(meta);

    const actions = el("div", "fx-history-actions");
    actions.setAttribute("role", "group");
    actions.setAttribute("aria-label", title);
    const open = this.button("Open", title, "btn-outline-light", () => this.open(c));
    open.dataset.action = "open";
    const replay = this.button("Replay", title, "btn-outline-light", () => this.startReplay(c));
    replay.dataset.action = "replay";
    replay.disabled = turns === 0;
    const remove = this.button("Delete", title, "btn-outline-danger", () => this.openConfirm(li));
    remove.dataset.action = "delete";
    actions.append(open, replay, remove);

    const confirm = el("div", "fx-history-confirm");
    confirm.hidden = true;
    confirm.setAttribute("role", "group");
    confirm.setAttribute("aria-label", "Confirm deleting " + title);
    confirm.appendChild(el("span", "fx-history-confirm-text", "Delete it for good?"));
    const yes = this.button("Delete", title, "btn-danger", () => this.remove(c, li));
    yes.dataset.action = "confirm-delete";
    const no = el("button", "btn btn-outline-light btn-sm", "Cancel");
    no.type = "button";
    no.dataset.action = "cancel";
    no.addEventListener("click", () => this.closeConfirm(li, true));
    confirm.append(yes, no);
    confirm.addEventListener("keydown", (event) => {
      if (event.key === "Escape") {
        event.preventDefault();
        this.closeConfirm(li, true);
      }
    });
    li.append(main, actions, confirm);
    return li;
  }

  /** A small button whose accessible name also says which conversation it acts on. */
  button(text, title, kind, onClick) {
    const button = el("button", "btn btn-sm " + kind, text);
    button.type = "button";
    button.setAttribute("aria-label", text + ": " + title);
    button.addEventListener("click", onClick);
    return button;
  }

  openConfirm(li, focus = true) {
    for (const other of this.ui.list.querySelectorAll(".fx-history-item")) {
      if (other !== li) this.closeConfirm(other);
    }
    li.querySelector(".fx-history-actions").hidden = true;
    const confirm = li.querySelector(".fx-history-confirm");
    confirm.hidden = false;
    li.classList.add("fx-history-item--confirm");
    if (focus) confirm.querySelector("[data-action='cancel']").focus();
  }

  closeConfirm(li, focus = false) {
    const confirm = li.querySelector(".fx-history-confirm");
    if (confirm.hidden) return;
    confirm.hidden = true;
    li.classList.remove("fx-history-item--confirm");
    li.querySelector(".fx-history-actions").hidden = false;
    if (focus) li.querySelector("[data-action='delete']").focus();
  }

  markCurrent() {
    for (const li of this.ui.list.querySelectorAll(".fx-history-item")) {
      const current = li.dataset.conversationId === this.current;
      li.classList.toggle("fx-history-item--current", current);
      li.querySelector(".fx-history-now").hidden = !current;
      if (current) li.setAttribute("aria-current", "true");
      else li.removeAttribute("aria-current");
    }
  }

  renderReplay() {
    const ui = this.ui;
    const replay = this.replay;
    ui.replay.hidden = !replay;
    ui.replay.dataset.state = replay ? replay.state : "idle";
    ui.replay.dataset.replyId = replay && replay.replyId ? replay.replyId : "";
    if (replay) {
      ui.replayText.textContent =
        replay.state === "asking"
          ? "Getting “" + replay.title + "” ready…"
          : "Replaying “" + replay.title + "”";
    }
    for (const li of ui.list.querySelectorAll(".fx-history-item")) {
      li.classList.toggle(
        "fx-history-item--replaying",
        Boolean(replay && li.dataset.conversationId === replay.conversationId),
      );
    }
  }

  wire() {
    this.ui.refresh.addEventListener("click", () => this.load());
    this.ui.replayStop.addEventListener("click", () => this.stopReplay());
    this.card.addEventListener("toggle", () => {
      if (this.card.open && this.conversations === null) this.load();
    });
  }
}
