// The AI companion panel beside the chat: the person's private conversation,
// the reply as it streams, Stop / Regenerate / New conversation / Past
// conversations, against "The AI companion" in docs/protocol.md.
//
// It shares the chat's WebSocket: chat.js registers it with
// ``connection.addListener``, so it sees every server message first and keeps
// the ``ai.*`` ones and the answers to its own requests (ids "ai-N").
//
// Rules (docs/ui.md, "Companion"): replies are rendered with the safe Markdown
// subset of companion-markdown.js (DOM nodes and text only), prompts as plain
// text; deltas are applied by ``index`` (an index already applied is ignored,
// the first delta after an ``ai.start`` holds all the text so far); after every
// ``welcome`` (a reload or a reconnect) the panel asks ``ai.history`` again, so a
// reply in progress resumes where it is.
//
// The companion's voice (voice.js) lives in the panel: it gets every
// ``voice.*`` frame and the answers to its own requests (ids "voice-N"), and is
// told when a reply starts, is stopped, or is rendered again.

import { element as el } from "./chat-render.js";
import { renderMarkdown } from "./companion-markdown.js";
import { Voice } from "./voice.js";

const DEFAULT_MAX_PROMPT = 4000; // ai.max_prompt_length; welcome may say otherwise
const SLOW_RENDER_CHARS = 20000; // longer replies re-render at most every 150 ms
const NEAR_BOTTOM_PX = 48;

/** What each error code means for the person, in plain words. */
export const FRIENDLY = {
  unavailable:
    "Your companion can’t be reached right now: no AI service is answering. " +
    "Please try again in a little while.",
  busy:
    "Lots of people are talking to their companions right now and the waiting line " +
    "is full. Please try again in a minute.",
  in_progress:
    "Your companion is still answering. Wait for the reply to finish (or press Stop), " +
    "then send again.",
  timeout: "Your companion took too long to answer. Please try again.",
  interrupted:
    "The reply broke off part-way because the AI service stopped answering. What " +
    "arrived is kept; you can ask for a new reply with Regenerate.",
  too_long: "The reply grew too long and was cut off here.",
  unauthenticated: "Sign in or continue as guest to talk to your companion.",
  rate_limited: "You are sending too quickly. Please wait a moment.",
  not_found: "That conversation no longer exists.",
};

function friendly(code, fallback) {
  if (Object.prototype.hasOwnProperty.call(FRIENDLY, code)) return FRIENDLY[code];
  return fallback || "Something went wrong (" + code + "). Please try again.";
}

function codePoints(text) {
  let n = 0;
  for (const _ of text) n += 1; // eslint-disable-line no-unused-vars
  return n;
}

function formatTime(ts) {
  if (typeof ts !== "number" || !Number.isFinite(ts)) return null;
  const date = new Date(ts * 1000);
  const shown = date.toLocaleTimeString([], { hour: "2-digit", minute: "2-digit" });
  const time = el("time", "cturn-time", shown);
  time.dateTime = date.toISOString();
  time.title = date.toLocaleString();
  return time;
}

/**
 * The title the server gives a conversation from its first prompt (bambid.ai.
 * companion.title_for): one line, cut at a word near 60 characters with "…".
 * The protocol only sends titles in ai.conversation, so the panel makes the
 * same one when a first reply starts.
 */
export function titleFor(prompt) {
  const line = prompt.split(/\s+/).filter(Boolean).join(" ");
  if (line.length <= 60) return line;
  let cut = line.slice(0, 59);
  const space = cut.lastIndexOf(" ");
  if (space >= 30) cut = cut.slice(0, space);
  return cut.replace(/[ ,.;:]+$/, "") + "…";
}

function formatDay(ts) {
  if (typeof ts !== "number" || !Number.isFinite(ts)) return "";
  return new Date(ts * 1000).toLocaleString([], { dateStyle: "medium", timeStyle: "short" });
}

/** A prompt the person wrote: plain text, line breaks kept. */
function buildUserTurn(content, ts) {
  const li = el("li", "cturn cturn--user");
  const head = el("div", "cturn-head");
  head.appendChild(el("span", "cturn-who", "You"));
  const time = formatTime(ts);
  if (time) head.appendChild(time);
  li.append(head, el("div", "cturn-body cturn-body--text", content));
  return li;
}

/** What a stored reply that failed says (``turn.error``). */
const STORED_ERRORS = {
  unavailable: "No reply: your companion could not be reached.",
  interrupted: "The reply broke off part-way.",
  timeout: "No complete reply: your companion took too long.",
  too_long: "The reply grew too long and was cut off here.",
  internal: "No reply: something went wrong on the server.",
};

/** A companion reply: the Markdown subset; ``note`` holds status and errors. */
function buildAssistantTurn(content, ts, stopped, error) {
  const li = el("li", "cturn cturn--assistant");
  const head = el("div", "cturn-head");
  head.appendChild(el("span", "cturn-who", "Companion"));
  const time = formatTime(ts);
  if (time) head.appendChild(time);
  const body = el("div", "cturn-body md");
  body.appendChild(renderMarkdown(content));
  const note = el("div", "cturn-note");
  note.hidden = true;
  li.append(head, body, note);
  if (stopped) markStopped(li);
  if (!content) li.classList.add("cturn--empty");
  let says = "";
  if (typeof error === "string" && error) {
    li.classList.add("cturn--error");
    says = STORED_ERRORS[error] || "No reply (" + error + ").";
  } else if (stopped && !content) {
    says = "Stopped before the first word.";
  }
  if (says) {
    note.className = "cturn-note" + (error ? " cturn-note--error" : " cturn-note--info");
    note.appendChild(el("span", "cturn-note-text", says));
    note.hidden = false;
  }
  return li;
}

function markStopped(li) {
  li.classList.add("cturn--stopped");
  const head = li.querySelector(".cturn-head");
  if (head && !head.querySelector(".cturn-badge")) {
    head.appendChild(el("span", "badge cturn-badge", "stopped"));
  }
}

/**
 * The panel. ``root`` is ``#companion``; ``connection`` the page's Connection.
 * Registered as a connection listener: ``message(m)`` returns true for the
 * messages it handled alone.
 */
export class Companion {
  constructor(root, connection) {
    this.root = root;
    this.connection = connection;
    const $ = (id) => document.getElementById(id);
    this.ui = {
      chat: $("chat"),
      title: $("companion-conversation-title"),
      tools: $("companion-tools"),
      pastButton: $("companion-past"),
      newButton: $("companion-new"),
      pastPanel: $("companion-past-panel"),
      pastList: $("companion-past-list"),
      pastStatus: $("companion-past-status"),
      pastClose: $("companion-past-close"),
      log: $("companion-log"),
      empty: $("companion-empty"),
      turns: $("companion-turns"),
      announce: $("companion-announce"),
      controls: $("companion-controls"),
      stop: $("companion-stop"),
      regenerate: $("companion-regenerate"),
      composer: $("companion-composer"),
      input: $("companion-input"),
      send: $("companion-send"),
      counter: $("companion-counter"),
      error: $("companion-error"),
      signin: $("companion-signin"),
      unavailable: $("companion-unavailable"),
      viewChat: $("view-chat"),
      viewCompanion: $("view-companion"),
      unread: $("companion-unread"),
    };
    this.user = null;
    this.welcomed = false;
    this.connected = false;
    this.disabled = false; // the server has no companion (ai.history was refused)
    this.maxPrompt = DEFAULT_MAX_PROMPT;
    this.conversationId = null;
    this.title = "";
    this.turns = []; // {role, content, li}: what the conversation holds, in order
    this.reply = null; // the reply being waited for or streamed
    this.pending = null; // {id, text, li}: an ai.send awaiting its ack
    this.regenerating = null; // the id of an ai.regenerate awaiting its ack
    this.requests = new Map(); // request id -> {kind, ...}
    this.nextId = 1;
    this.resynced = new Set(); // reply ids we already asked ai.history about
    this.stuck = true; // the log shows its end: keep it there as it grows
    this.replyItems = new Map(); // reply id -> its <li>, for the voice's highlight
    this.voice = new Voice(connection, (replyId) => this.replyBody(replyId));
    this.wire();
    this.update();
  }

  // --- connection listener -------------------------------------------------------

  state(state) {
    this.connected = state === "connected";
    this.update();
  }

  closed() {
    // Requests in flight are lost with the socket. A prompt not yet acked may or
    // may not have reached the server: its text goes back in the box, and the
    // ai.history sent after the next welcome shows what the server has.
    if (this.pending) {
      const pending = this.pending;
      this.pending = null;
      pending.li.remove();
      if (!this.ui.input.value && pending.text) this.ui.input.value = pending.text;
      this.showError("Not sent: the connection was lost. Your message is back in the box.");
    }
    this.regenerating = null;
    this.requests.clear();
    this.voice.closed();
    if (this.reply) this.setNote(this.reply, "Connection lost: reconnecting…", "wait");
    this.update();
  }

  message(m) {
    if (this.voice.message(m)) return true;
    switch (m.type) {
      case "welcome":
        this.onWelcome(m);
        return false; // chat.js needs it too
      case "ack":
      case "error":
        if (!this.requests.has(m.id)) return false;
        if (m.type === "ack") this.onAck(m);
        else this.onError(m);
        return true;
      case "ai.conversation":
        this.onConversation(m);
        return true;
      case "ai.conversations":
        this.onConversations(m);
        return true;
      case "ai.queued":
        this.onQueued(m);
        return true;
      case "ai.start":
        this.onStart(m);
        return true;
      case "ai.delta":
        this.onDelta(m);
        return true;
      case "ai.done":
        this.onDone(m);
        return true;
      case "ai.error":
        this.onReplyError(m);
        return true;
      default:
        return m.type.startsWith("ai.");
    }
  }

  request(kind, message, extra) {
    const id = "ai-" + this.nextId++;
    if (!this.connection.send({ ...message, id })) return null;
    this.requests.set(id, { kind, ...extra });
    return id;
  }

  // --- server messages ------------------------------------------------------------

  onWelcome(m) {
    this.welcomed = true;
    this.user = m.user && typeof m.user === "object" ? m.user : null;
    const limit = m.ai && typeof m.ai === "object" ? m.ai.max_prompt_length : undefined;
    if (Number.isInteger(limit) && limit > 0) this.maxPrompt = limit;
    this.connected = true;
    if (this.user && !this.disabled) this.requestHistory();
    this.voice.welcome(Boolean(this.user) && !this.disabled); // asks voice.prefs after ai.history
    this.update();
  }

  requestHistory() {
    for (const req of this.requests.values()) if (req.kind === "history") return;
    this.request("history", { type: "ai.history" });
  }

  /** Asks for the stored conversation once per reply that we lost track of. */
  resync(replyId) {
    if (typeof replyId !== "string" || this.resynced.has(replyId)) return;
    this.resynced.add(replyId);
    this.requestHistory();
  }

  onAck(m) {
    const req = this.requests.get(m.id);
    this.requests.delete(m.id);
    switch (req.kind) {
      case "send":
      case "regenerate": {
        const pending = this.pending && this.pending.id === m.id ? this.pending : null;
        if (pending) this.pending = null;
        if (this.regenerating === m.id) this.regenerating = null;
        if (typeof m.reply_id !== "string") {
          if (pending) pending.li.remove();
          break;
        }
        let reply = this.reply && this.reply.id === m.reply_id ? this.reply : null;
        if (!reply) {
          reply = this.newReply(m.reply_id, "waiting");
          this.setNote(reply, "Waiting for your companion…", "wait");
        }
        reply.regenerate = req.kind === "regenerate";
        if (pending && !reply.promptLi) this.adoptPending(reply, pending);
        else if (pending && pending.li !== reply.promptLi) pending.li.remove();
        if (reply.regenerate && !reply.promptLi) this.attachPrompt(reply, null);
        if (typeof m.conversation_id === "string") reply.conversationId = m.conversation_id;
        break;
      }
      case "load":
        this.closePast();
        break;
      default:
        break;
    }
    this.update();
  }

  onError(m) {
    const req = this.requests.get(m.id);
    this.requests.delete(m.id);
    const code = typeof m.code === "string" ? m.code : "error";
    const serverSays = typeof m.message === "string" ? m.message : "";
    switch (req.kind) {
      case "history":
        if (code === "unauthenticated") {
          this.user = null;
        } else if (code === "bad_request" || code === "not_found" || code === "forbidden") {
          // This server has no companion (an older server answers "unknown type").
          this.disabled = true;
        } else {
          this.showError(friendly(code, serverSays));
        }
        break;
      case "send":
      case "regenerate": {
        const pending = this.pending && this.pending.id === m.id ? this.pending : null;
        if (pending) this.pending = null;
        if (this.regenerating === m.id) this.regenerating = null;
        if (pending) {
          pending.li.remove();
          if (!this.ui.input.value && pending.text) this.ui.input.value = pending.text;
        }
        let text = friendly(code, serverSays);
        if (code === "bad_request" && serverSays) text = "Not sent: " + serverSays;
        if (code === "rate_limited" && typeof m.retry_after === "number") {
          const wait = Math.max(1, Math.ceil(m.retry_after));
          text =
            "You are sending too quickly. Try again in " +
            wait +
            (wait === 1 ? " second." : " seconds.");
        }
        this.showError(text);
        this.announce(text);
        break;
      }
      case "stop":
        this.ui.stop.disabled = false;
        this.ui.stop.textContent = "Stop";
        if (code !== "not_found") this.showError(friendly(code, serverSays));
        break;
      case "list":
        this.ui.pastStatus.textContent =
          code === "level_required" && serverSays
            ? serverSays + ". Chatting and talking with your companion earn XP."
            : "Could not load your conversations: " + friendly(code, serverSays);
        this.ui.pastStatus.hidden = false;
        break;
      default:
        this.showError(friendly(code, serverSays));
    }
    this.update();
  }

  onConversation(m) {
    if (m.id !== undefined) this.requests.delete(m.id);
    const switched =
      typeof m.conversation_id === "string" && m.conversation_id !== this.conversationId;
    // Another conversation (new, or a past one loaded): the old one stops speaking.
    if (switched && this.conversationId !== null) this.voice.stop();
    this.replyItems.clear();
    this.conversationId = typeof m.conversation_id === "string" ? m.conversation_id : null;
    this.setTitle(typeof m.title === "string" ? m.title : "");
    // The stored conversation replaces what the panel shows. A reply still in
    // progress is announced again right after (ai.start and one ai.delta with
    // all its text), so the one shown is dropped rather than guessed at.
    if (this.reply) this.dropReply();
    const turns = Array.isArray(m.turns) ? m.turns : [];
    const items = [];
    this.turns = [];
    for (const turn of turns) {
      if (!turn || typeof turn !== "object" || typeof turn.content !== "string") continue;
      const li =
        turn.role === "user"
          ? buildUserTurn(turn.content, turn.ts)
          : buildAssistantTurn(turn.content, turn.ts, turn.stopped === true, turn.error);
      const role = turn.role === "user" ? "user" : "assistant";
      this.turns.push({ role, content: turn.content, li });
      items.push(li);
    }
    if (this.pending) items.push(this.pending.li); // sent, not acked yet: keep showing it
    this.ui.turns.replaceChildren(...items);
    if (switched) this.clearError();
    if (switched || this.stuck) this.scrollToEnd();
    this.update();
  }

  onConversations(m) {
    if (m.id !== undefined) this.requests.delete(m.id);
    const list = Array.isArray(m.conversations) ? m.conversations : [];
    const items = [];
    for (const c of list) {
      if (!c || typeof c !== "object" || typeof c.conversation_id !== "string") continue;
      const li = el("li");
      const button = el("button", "companion-past-item");
      button.type = "button";
      const title =
        typeof c.title === "string" && c.title.trim() ? c.title : "Untitled conversation";
      button.appendChild(el("span", "companion-past-name", title));
      const bits = [];
      const when = formatDay(c.updated_at);
      if (when) bits.push(when);
      if (Number.isInteger(c.turns)) {
        bits.push(c.turns + (c.turns === 1 ? " message" : " messages"));
      }
      button.appendChild(el("span", "companion-past-meta", bits.join(" · ")));
      if (c.conversation_id === this.conversationId) {
        button.setAttribute("aria-current", "true");
        button.appendChild(el("span", "visually-hidden", " (open now)"));
      }
      button.addEventListener("click", () => this.load(c.conversation_id));
      li.appendChild(button);
      items.push(li);
    }
    this.ui.pastList.replaceChildren(...items);
    this.ui.pastStatus.textContent = items.length ? "" : "No conversations yet.";
    this.ui.pastStatus.hidden = items.length > 0;
  }

  onQueued(m) {
    if (typeof m.reply_id !== "string") return;
    let reply = this.reply && this.reply.id === m.reply_id ? this.reply : null;
    if (!reply) {
      if (this.reply) this.settleLostReply();
      reply = this.newReply(m.reply_id, "queued");
      if (this.pending) this.adoptPending(reply, this.pending);
      else this.attachPrompt(reply, null); // after a reload: the stored prompt, if last
    }
    if (reply.status === "streaming") return;
    reply.status = "queued";
    const position = Number.isInteger(m.position) && m.position > 0 ? m.position : null;
    const text = position
      ? "You are number " + position + " in line. Your companion will answer soon."
      : "Waiting in line for your companion…";
    if (position !== reply.position) {
      this.announce(position ? "You are number " + position + " in line." : text);
    }
    reply.position = position;
    this.setNote(reply, text, "queue");
    this.update();
  }

  onStart(m) {
    if (typeof m.reply_id !== "string") return;
    let reply = this.reply && this.reply.id === m.reply_id ? this.reply : null;
    if (!reply) {
      if (this.reply) this.settleLostReply();
      reply = this.newReply(m.reply_id, "streaming");
    }
    reply.status = "streaming";
    reply.fresh = true; // the next delta covers the reply from its first index
    reply.position = null;
    if (typeof m.conversation_id === "string") {
      reply.conversationId = m.conversation_id;
      if (this.conversationId && m.conversation_id !== this.conversationId) this.resync(reply.id);
      if (!this.conversationId) this.conversationId = m.conversation_id;
    }
    const prompt = typeof m.prompt === "string" ? m.prompt : null;
    if (!reply.promptLi && this.pending) this.adoptPending(reply, this.pending);
    this.attachPrompt(reply, prompt);
    if (!this.title && prompt && this.turns.filter((t) => t.role === "user").length === 1) {
      this.setTitle(titleFor(prompt));
    }
    if (!reply.text) this.setNote(reply, "Your companion is thinking…", "wait");
    reply.li.classList.add("cturn--streaming");
    this.update();
  }

  onDelta(m) {
    const reply = this.reply && this.reply.id === m.reply_id ? this.reply : null;
    if (!reply) {
      this.resync(m.reply_id); // a reply we never saw start: ask where it is
      return;
    }
    if (!Number.isInteger(m.index) || m.index < 1 || typeof m.text !== "string") return;
    if (reply.fresh) {
      reply.fresh = false;
      if (m.index > reply.index) {
        reply.text = m.text; // deltas 1…index: everything so far
        reply.index = m.index;
      }
    } else if (m.index > reply.index) {
      reply.text += m.text;
      reply.index = m.index;
    } else {
      return; // already applied
    }
    if (reply.status !== "streaming") {
      reply.status = "streaming";
      reply.li.classList.add("cturn--streaming");
      this.update();
    }
    this.setNote(reply, "", null);
    this.scheduleRender(reply);
  }

  onDone(m) {
    const reply = this.reply && this.reply.id === m.reply_id ? this.reply : null;
    if (!reply) {
      this.resync(m.reply_id); // finished while we did not know it: the history has it
      return;
    }
    if (typeof m.text === "string") reply.text = m.text;
    const stopped = m.finish_reason === "stopped";
    if (stopped) this.voice.stopReply(reply.id); // stopped here or in another tab
    this.finishReply(reply);
    if (stopped) {
      markStopped(reply.li);
      if (!reply.text) this.setNote(reply, "Stopped before the first word.", "info");
    } else if (m.finish_reason === "length") {
      this.setNote(reply, "The reply reached its length limit.", "info");
    }
    this.announce(
      (stopped ? "Reply stopped. " : "Your companion replied: ") + (reply.text || "(nothing)"),
    );
    this.notifyElsewhere();
    this.update();
  }

  onReplyError(m) {
    let reply = this.reply && this.reply.id === m.reply_id ? this.reply : null;
    if (!reply) {
      if (typeof m.reply_id !== "string") return;
      if (this.reply) this.settleLostReply();
      reply = this.newReply(m.reply_id, "streaming");
      if (this.pending) this.adoptPending(reply, this.pending);
    }
    if (typeof m.text === "string" && m.text.length >= reply.text.length) reply.text = m.text;
    const code = typeof m.code === "string" ? m.code : "error";
    this.finishReply(reply);
    reply.li.classList.add("cturn--error");
    const serverSays = typeof m.message === "string" ? m.message.trim() : "";
    // The plain-words message, with the server's own words under it.
    const detail = serverSays && FRIENDLY[code] ? serverSays : "";
    this.setNote(reply, friendly(code, serverSays), "error", detail);
    this.announce(friendly(code, serverSays));
    this.notifyElsewhere();
    this.update();
  }

  // --- the reply in progress ------------------------------------------------------------

  newReply(id, status) {
    const li = buildAssistantTurn("", null, false, null);
    li.classList.remove("cturn--empty");
    li.dataset.replyId = id;
    li.classList.add("cturn--live");
    this.reply = {
      id,
      status, // waiting (acked) | queued | streaming
      conversationId: null,
      text: "",
      index: 0,
      fresh: false,
      position: null,
      li,
      body: li.querySelector(".cturn-body"),
      note: li.querySelector(".cturn-note"),
      promptLi: null,
      regenerate: false, // our own ai.regenerate
      guessed: false, // another tab's reply that looked like a regeneration
      renderQueued: false,
    };
    this.ui.turns.appendChild(li);
    this.scrollToEnd();
    this.replyItems.set(id, li);
    if (this.replyItems.size > 20) this.replyItems.delete(this.replyItems.keys().next().value);
    this.voice.startReply(id); // the previous reply's pending speech goes
    return this.reply;
  }

  /** The element holding a reply's rendered text, while it is on the page. */
  replyBody(replyId) {
    const li = this.replyItems.get(replyId);
    return li && li.isConnected ? li.querySelector(".cturn-body") : null;
  }

  /** Our own prompt (shown while its request was in flight) is this reply's prompt. */
  adoptPending(reply, pending) {
    this.pending = null;
    pending.li.classList.remove("cturn--pending");
    pending.li.querySelector(".cturn-status")?.remove();
    reply.li.before(pending.li);
    reply.promptLi = pending.li;
    this.turns.push({ role: "user", content: pending.text, li: pending.li });
  }

  /**
   * Shows the prompt ``reply`` answers, once: our own pending prompt, the last
   * stored prompt when it is the same text, or (a regeneration) the prompt
   * before the reply being replaced. Otherwise (another tab sent it) a new turn.
   */
  attachPrompt(reply, prompt) {
    if (reply.promptLi) {
      const own = this.turns.find((t) => t.li === reply.promptLi);
      if (own && prompt !== null && own.content !== prompt) {
        // The server's filtered text is what the conversation holds.
        own.content = prompt;
        reply.promptLi.querySelector(".cturn-body").textContent = prompt;
      }
      return;
    }
    const stored = this.turns;
    const last = stored[stored.length - 1];
    const before = stored[stored.length - 2];
    if (last && last.role === "user" && (prompt === null || last.content === prompt)) {
      reply.promptLi = last.li;
      // Answering it again: earlier attempts that left nothing (an error, a stop
      // before the first word) make way for this one.
      for (let n = last.li.nextElementSibling; n && n !== reply.li; ) {
        const next = n.nextElementSibling;
        if (n.classList.contains("cturn--empty")) n.remove();
        n = next;
      }
      last.li.after(reply.li);
      return;
    }
    if (
      last &&
      last.role === "assistant" &&
      before &&
      before.role === "user" &&
      (reply.regenerate || before.content === prompt)
    ) {
      // A regeneration drops the last reply and answers the same prompt again. From
      // another tab it looks like the same prompt sent twice: the history fetched
      // after the reply settles which it was.
      if (!reply.regenerate) reply.guessed = true;
      stored.pop();
      last.li.remove();
      reply.promptLi = before.li;
      before.li.after(reply.li);
      return;
    }
    if (prompt === null) return;
    const li = buildUserTurn(prompt, Date.now() / 1000);
    reply.li.before(li);
    stored.push({ role: "user", content: prompt, li });
    reply.promptLi = li;
  }

  scheduleRender(reply) {
    if (reply.renderQueued) return;
    reply.renderQueued = true;
    const run = () => {
      reply.renderQueued = false;
      if (this.reply === reply) this.renderReply(reply);
    };
    // At most once a frame (deltas can come faster); long replies less often.
    if (reply.text.length > SLOW_RENDER_CHARS) window.setTimeout(run, 150);
    else if (document.hidden) window.setTimeout(run, 100);
    else window.requestAnimationFrame(run);
  }

  renderReply(reply) {
    const stick = this.stuck || this.atBottom();
    reply.body.replaceChildren(renderMarkdown(reply.text));
    this.voice.rendered(reply.id);
    if (stick) this.scrollToEnd();
  }

  finishReply(reply) {
    reply.renderQueued = false;
    this.renderReply(reply);
    reply.li.classList.remove("cturn--streaming", "cturn--live");
    delete reply.li.dataset.replyId;
    this.setNote(reply, "", null);
    // The server stores every reply that ends, even an empty one (stopped in
    // the queue, no backend reachable): the conversation alternates.
    if (!reply.text) reply.li.classList.add("cturn--empty");
    if (reply.promptLi) this.turns.push({ role: "assistant", content: reply.text, li: reply.li });
    this.reply = null;
    if (reply.guessed) this.requestHistory(); // was it a regeneration? the server knows
  }

  /** A reply replaced by another before it ended here: keep what we have, check later. */
  settleLostReply() {
    const old = this.reply;
    this.finishReply(old);
    this.resync(old.id);
  }

  dropReply() {
    const reply = this.reply;
    this.reply = null;
    reply.li.remove();
    if (reply.promptLi && !this.ui.turns.contains(reply.promptLi)) reply.promptLi = null;
  }

  setNote(reply, text, tone, detail) {
    const note = reply.note;
    note.className = "cturn-note" + (tone ? " cturn-note--" + tone : "");
    note.replaceChildren();
    if (text) {
      note.appendChild(el("span", "cturn-note-text", text));
      if (detail) note.appendChild(el("span", "cturn-note-detail", detail));
    }
    note.hidden = !text;
  }

  // --- actions -------------------------------------------------------------------------

  submit() {
    const text = this.ui.input.value.trim();
    if (!text || !this.user || this.disabled) return;
    if (codePoints(text) > this.maxPrompt) {
      this.showError(
        "A message to your companion can be at most " + this.maxPrompt + " characters.",
      );
      return;
    }
    if (this.reply || this.pending || this.regenerating) {
      this.showError(FRIENDLY.in_progress);
      return;
    }
    const li = buildUserTurn(text, Date.now() / 1000);
    li.classList.add("cturn--pending");
    li.appendChild(el("div", "cturn-status", "sending…"));
    const id = this.request("send", { type: "ai.send", text });
    if (!id) {
      this.showError("Not connected. Your message is still in the box.");
      return;
    }
    this.pending = { id, text, li };
    this.clearError();
    this.ui.input.value = "";
    this.autosize();
    this.ui.turns.appendChild(li);
    this.stuck = true;
    this.scrollToEnd();
    this.update();
  }

  stop() {
    const reply = this.reply;
    if (!reply) return;
    this.voice.stopReply(reply.id); // silent at once, whatever the server answers
    if (this.request("stop", { type: "ai.stop", reply_id: reply.id })) {
      this.ui.stop.disabled = true;
      this.ui.stop.textContent = "Stopping…";
    }
  }

  regenerate() {
    if (this.reply || this.pending || this.regenerating) return;
    const id = this.request("regenerate", { type: "ai.regenerate" });
    if (!id) return;
    this.clearError();
    // Nothing changes until the ack: the server decides what it answers again.
    this.regenerating = id;
    this.stuck = true;
    this.update();
  }

  reset() {
    // A reply in progress is stopped by the server first (ai.done "stopped").
    if (this.pending || this.regenerating) return;
    if (this.request("reset", { type: "ai.reset" })) {
      this.closePast();
      this.ui.input.focus();
    }
  }

  load(conversationId) {
    if (this.pending || this.regenerating) {
      this.showError(FRIENDLY.in_progress);
      return;
    }
    this.request("load", { type: "ai.load", conversation_id: conversationId });
  }

  togglePast() {
    if (!this.ui.pastPanel.hidden) {
      this.closePast();
      return;
    }
    this.ui.pastPanel.hidden = false;
    this.ui.pastButton.setAttribute("aria-expanded", "true");
    this.ui.pastStatus.textContent = "Loading your conversations…";
    this.ui.pastStatus.hidden = false;
    this.ui.pastList.replaceChildren();
    if (!this.request("list", { type: "ai.conversations" })) {
      this.ui.pastStatus.textContent = "Not connected.";
    }
    this.ui.pastPanel.focus();
  }

  closePast() {
    if (this.ui.pastPanel.hidden) return;
    const hadFocus = this.ui.pastPanel.contains(document.activeElement);
    this.ui.pastPanel.hidden = true;
    this.ui.pastButton.setAttribute("aria-expanded", "false");
    if (hadFocus) this.ui.pastButton.focus();
  }

  // --- the panel's state ------------------------------------------------------------------

  update() {
    const ui = this.ui;
    const signedIn = Boolean(this.user);
    const ready = this.welcomed && signedIn && !this.disabled;
    ui.composer.hidden = !ready;
    ui.tools.hidden = !ready;
    ui.controls.hidden = !ready;
    this.voice.setReady(ready);
    ui.signin.hidden = !this.welcomed || signedIn || this.disabled;
    ui.unavailable.hidden = !this.disabled;
    ui.log.hidden = !ready && this.turns.length === 0;
    const busy = Boolean(this.reply);
    const waiting = Boolean(this.pending || this.regenerating);
    const streaming = busy && this.reply.status === "streaming";
    ui.log.setAttribute("aria-busy", streaming ? "true" : "false");
    ui.stop.hidden = !busy;
    if (!busy) {
      ui.stop.disabled = false;
      ui.stop.textContent = "Stop";
    }
    const hasPrompt = this.turns.some((t) => t.role === "user");
    ui.regenerate.hidden = busy || waiting || !hasPrompt;
    ui.regenerate.disabled = !this.connected;
    ui.newButton.disabled = waiting || !this.connected;
    ui.pastButton.disabled = !this.connected;
    ui.empty.hidden = this.ui.turns.childElementCount > 0 || busy || waiting;
    this.updateCounter();
  }

  updateCounter() {
    const length = codePoints(this.ui.input.value.trim());
    const over = length > this.maxPrompt;
    this.ui.counter.textContent = length + " / " + this.maxPrompt;
    this.ui.counter.classList.toggle("companion-counter--over", over);
    const near = !over && length >= this.maxPrompt * 0.9;
    this.ui.counter.classList.toggle("companion-counter--near", near);
    this.ui.input.setAttribute("aria-invalid", over ? "true" : "false");
    this.ui.send.disabled = over || !this.connected;
  }

  setTitle(title) {
    this.title = title.trim();
    this.ui.title.textContent = this.title || "New conversation";
  }

  showError(text) {
    this.ui.error.textContent = text;
  }

  clearError() {
    this.ui.error.textContent = "";
  }

  /** Says ``text`` to screen readers once (the finished reply, the queue, errors). */
  announce(text) {
    this.ui.announce.textContent = "";
    window.setTimeout(() => {
      this.ui.announce.textContent = text;
    }, 50);
  }

  /** On a narrow screen with the chat shown: a dot on the Companion switch. */
  notifyElsewhere() {
    if (this.root.getClientRects().length === 0 && this.ui.unread) this.ui.unread.hidden = false;
  }

  atBottom() {
    const log = this.ui.log;
    return log.scrollHeight - log.scrollTop - log.clientHeight < NEAR_BOTTOM_PX;
  }

  scrollToEnd() {
    this.stuck = true;
    this.ui.log.scrollTop = this.ui.log.scrollHeight;
  }

  autosize() {
    const input = this.ui.input;
    input.style.height = "auto";
    const cap = parseFloat(window.getComputedStyle(input).maxHeight) || 200;
    input.style.height = Math.min(input.scrollHeight + 2, cap) + "px";
  }

  // --- narrow screens: Chat | Companion -------------------------------------------------------

  showView(view) {
    const ui = this.ui;
    ui.chat.dataset.view = view;
    ui.viewChat.setAttribute("aria-pressed", view === "chat" ? "true" : "false");
    ui.viewCompanion.setAttribute("aria-pressed", view === "companion" ? "true" : "false");
    if (view === "companion") {
      ui.unread.hidden = true;
      this.scrollToEnd();
    }
    try {
      window.sessionStorage.setItem("bambid.view", view);
    } catch (err) {
      // storage may be unavailable (private mode): the choice is just not kept
    }
  }

  wire() {
    const ui = this.ui;
    let view = "chat";
    try {
      if (window.sessionStorage.getItem("bambid.view") === "companion") view = "companion";
    } catch (err) {
      view = "chat";
    }
    this.showView(view);
    ui.viewChat.addEventListener("click", () => this.showView("chat"));
    ui.viewCompanion.addEventListener("click", () => {
      this.showView("companion");
      if (!ui.composer.hidden) ui.input.focus();
    });
    // Opening a room (the side panel stays beside the companion on mid-size screens).
    document.getElementById("room-list")?.addEventListener("click", (event) => {
      if (event.target instanceof Element && event.target.closest("button")) this.showView("chat");
    });
    // The chat's skip link must find its box on a narrow screen too.
    document
      .querySelector('a[href="#message-input"]')
      ?.addEventListener("click", () => this.showView("chat"));
    document.querySelector('a[href="#companion-input"]')?.addEventListener("click", (event) => {
      event.preventDefault();
      this.showView("companion");
      if (!ui.composer.hidden) ui.input.focus();
      else ui.log.focus();
    });

    ui.composer.addEventListener("submit", (event) => {
      event.preventDefault();
      this.submit();
    });
    ui.input.addEventListener("keydown", (event) => {
      if (event.key === "Enter" && !event.shiftKey && !event.isComposing) {
        event.preventDefault();
        this.submit();
      }
    });
    ui.input.addEventListener("input", () => {
      this.autosize();
      this.updateCounter();
    });
    ui.stop.addEventListener("click", () => this.stop());
    ui.regenerate.addEventListener("click", () => this.regenerate());
    ui.newButton.addEventListener("click", () => this.reset());
    ui.pastButton.addEventListener("click", () => this.togglePast());
    ui.pastClose.addEventListener("click", () => this.closePast());
    ui.pastPanel.addEventListener("keydown", (event) => {
      if (event.key === "Escape") this.closePast();
    });
    ui.log.addEventListener(
      "scroll",
      () => {
        this.stuck = this.atBottom();
      },
      { passive: true },
    );
    if ("ResizeObserver" in window) {
      new ResizeObserver(() => {
        if (this.stuck) this.ui.log.scrollTop = this.ui.log.scrollHeight;
      }).observe(ui.turns);
    }
    document.addEventListener("visibilitychange", () => {
      if (!document.hidden && this.reply) this.renderReply(this.reply);
    });
  }
}
