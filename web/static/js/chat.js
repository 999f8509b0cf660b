// The chat page: rooms, messages, presence, typing, the message box, and
// notifications, against the WebSocket contract in docs/protocol.md.
//
// Client rules (docs/ui.md): everything people wrote is rendered as text;
// messages are ordered by their room ``seq`` and deduplicated by
// ``message_id``; after a reconnect the client resumes from the last ``seq``
// it saw in each room.

import { Connection } from "./connection.js";
import {
  buildLocalLine,
  buildMessage,
  buildPerson,
  element as el,
  markRemoved,
  sameName,
} from "./chat-render.js";
import { Companion } from "./companion.js";
import { Effects } from "./effects.js";
import { Levels } from "./levels.js";
import { TriggersPanel } from "./triggers-panel.js";

let MAX_LENGTH = 2000; // replaced by welcome.max_message_length
let COUNTER_FROM = 1800; // 90 % of MAX_LENGTH
const HISTORY_PAGE = 50;
const TYPING_SEND_EVERY_MS = 3000;
const TYPING_SHOW_MS = 5000;
const NEAR_TOP_PX = 120;
const NEAR_BOTTOM_PX = 48;

const $ = (id) => document.getElementById(id);
const ui = {
  title: $("room-title"),
  roomList: $("room-list"),
  presence: $("presence-list"),
  peopleCount: $("people-count"),
  peopleCountToggle: $("people-count-toggle"),
  views: $("message-views"),
  newMessages: $("new-messages"),
  typing: $("typing"),
  composer: $("composer"),
  input: $("message-input"),
  send: $("send-button"),
  counter: $("char-counter"),
  error: $("composer-error"),
  signin: $("signin-prompt"),
  blocked: $("blocked-prompt"),
  notify: $("notify-button"),
  toasts: $("toasts"),
  stateEl: $("connection-state"),
  detailEl: $("connection-detail"),
  dot: $("connection-dot"),
  sidebar: $("chat-sidebar"),
};

const reducedMotion = window.matchMedia("(prefers-reduced-motion: reduce)");
const baseTitle = document.title;

const app = {
  user: null, // welcome.user
  welcomed: false,
  publicRooms: [],
  rooms: new Map(), // name -> Room (rooms this tab is in)
  current: null, // the Room on screen
  requests: new Map(), // request id -> {kind, room, ...}
  nextId: 1,
  mentionCount: 0,
  lastTypingSent: 0,
  banned: false,
};

/** One joined room: its view, ordering state and people. */
class Room {
  constructor(name) {
    this.name = name;
    this.messages = new Map(); // message_id -> <li>
    this.removed = new Set(); // message_ids removed by a moderator
    this.minSeq = Infinity;
    this.maxSeq = 0;
    this.hasMore = false;
    this.loadingOlder = false;
    this.loaded = false; // the join history arrived
    this.people = new Map(); // casefolded name -> person
    this.typing = new Map(); // casefolded name -> {user, timer}
    this.unread = 0;
    this.unseenBelow = 0;
    this.savedScroll = null;

    this.view = el("div", "chat-view");
    this.view.hidden = true;
    this.view.tabIndex = 0;
    this.view.setAttribute("role", "region");
    this.view.setAttribute("aria-label", "Messages in #" + name);
    this.view.dataset.room = name;
    this.top = el("div", "chat-view-top");
    this.olderButton = el("button", "btn btn-link btn-sm chat-older", "Load older messages");
    this.olderButton.type = "button";
    this.olderButton.hidden = true;
    this.olderButton.addEventListener("click", () => requestOlder(this));
    this.beginning = el("p", "chat-beginning", "This is the beginning of #" + name + ".");
    this.beginning.hidden = true;
    this.top.append(this.olderButton, this.beginning);
    // Older messages (join history, scroll back) are not announced; new ones are.
    this.historyList = el("ol", "chat-messages");
    this.historyList.setAttribute("aria-label", "Earlier messages");
    this.liveList = el("ol", "chat-messages chat-messages--live");
    this.liveList.setAttribute("aria-live", "polite");
    this.liveList.setAttribute("aria-relevant", "additions");
    this.liveList.setAttribute("aria-label", "New messages");
    this.view.append(this.top, this.historyList, this.liveList);
    this.stuck = true; // showing the newest message: stay there as the view changes size
    this.view.addEventListener("scroll", () => onScroll(this), { passive: true });
    if ("ResizeObserver" in window) {
      new ResizeObserver(() => {
        if (this.stuck && !this.view.hidden) this.view.scrollTop = this.view.scrollHeight;
      }).observe(this.view);
    }
    ui.views.appendChild(this.view);
  }

  atBottom() {
    const v = this.view;
    return v.scrollHeight - v.scrollTop - v.clientHeight < NEAR_BOTTOM_PX;
  }

  /** Forget every message (chat.reset, or a fresh join history). */
  clear() {
    const pending = [...this.liveList.querySelectorAll(".msg--pending")];
    this.historyList.replaceChildren();
    this.liveList.replaceChildren(...pending);
    this.messages.clear();
    this.minSeq = Infinity;
    this.maxSeq = 0;
    this.hasMore = false;
    this.loaded = false;
    this.unseenBelow = 0;
  }
}

// --- connection --------------------------------------------------------------------

const connection = new Connection({
  state(state, label, detail) {
    ui.stateEl.dataset.state = state;
    ui.stateEl.textContent = label;
    ui.detailEl.textContent = detail || "";
    ui.dot.className = "connection-dot connection-dot--" + state;
    document.body.classList.toggle("chat-offline", state !== "connected");
    updateComposer();
  },
  hello() {
    // Rooms we were in, with the last seq seen in each: the server replays the rest.
    const resume = {};
    let any = false;
    for (const room of app.rooms.values()) {
      if (!room.loaded) continue;
      resume[room.name] = room.maxSeq;
      any = true;
    }
    return any ? { resume } : {};
  },
  message: handle,
  closed(policy) {
    for (const request of app.requests.values()) {
      if (request.kind !== "send" || !request.el) continue;
      failPending(request, "not sent (" + policy.why + ")");
      if (!ui.input.value) {
        ui.input.value = request.text;
        onInput();
      }
    }
    app.requests.clear();
    for (const room of app.rooms.values()) {
      room.loadingOlder = false;
      for (const entry of room.typing.values()) window.clearTimeout(entry.timer);
      room.typing.clear();
    }
    renderTyping();
    if (!policy.retry && !app.banned) showBlocked(policy.why);
  },
});

// The companion panel shares the socket: it sees each message first and keeps
// the ai.* ones and the answers to its own requests.
connection.addListener(new Companion(document.getElementById("companion"), connection));
// The tools under the chat (issue 6): the trigger panel, then the effect panels.
connection.addListener(new TriggersPanel(document.getElementById("triggers-panel"), connection));
connection.addListener(new Effects(document.getElementById("effects"), connection));
// The person's notification switches (docs/ui.md, "Notifications"): read with
// preferences.get after each welcome, kept current by preferences.update (a
// change on /settings or another device). Each change is announced as the
// ``bambid:preferences`` event on ``window`` (detail: {notifications, privacy?});
// ``notificationPreferences()`` gives the switches now (level_up is the levels UI's).
const notifications = { mentions: true, sound: true, level_up: true };
connection.addListener({
  message(m) {
    if (m.type === "welcome") {
      if (m.user) connection.send({ type: "preferences.get", id: "notifications-prefs" });
      return false;
    }
    if (m.type === "error" && m.id === "notifications-prefs") return true; // defaults stay
    if (m.type !== "preferences.state" && m.type !== "preferences.update") return false;
    if (m.notifications && typeof m.notifications === "object") {
      for (const key of Object.keys(notifications)) {
        if (typeof m.notifications[key] === "boolean") notifications[key] = m.notifications[key];
      }
    }
    const detail = { notifications: notificationPreferences() };
    if (m.privacy && typeof m.privacy === "object") detail.privacy = m.privacy;
    window.dispatchEvent(new CustomEvent("bambid:preferences", { detail }));
    return true;
  },
});

/** The person's notification switches: {mentions, sound, level_up}. */
export function notificationPreferences() {
  return { ...notifications };
}

// The XP badge, the Levels panel and the level-up celebration.
connection.addListener(new Levels());

function request(kind, message, extra) {
  const id = "c" + app.nextId++;
  const sent = connection.send({ ...message, id });
  if (sent) app.requests.set(id, { kind, ...extra });
  return sent ? id : null;
}

// --- server messages -----------------------------------------------------------------

function handle(m) {
  switch (m.type) {
    case "welcome":
      return onWelcome(m);
    case "ack":
      return onAck(m);
    case "error":
      return onError(m);
    case "chat.history":
      return onHistory(m);
    case "chat.message":
      return onChatMessage(m);
    case "chat.reset":
      return onReset(m);
    case "presence":
      return onPresence(m);
    case "presence.update":
      return onPresenceUpdate(m);
    case "chat.typing":
      return onTyping(m);
    case "mention":
      return onMention(m);
    case "system":
      return onSystem(m);
    default:
      return undefined;
  }
}

function onWelcome(m) {
  const again = app.welcomed;
  app.welcomed = true;
  app.user = m.user && typeof m.user === "object" ? m.user : null;
  app.publicRooms = Array.isArray(m.rooms) ? m.rooms.filter((r) => typeof r === "string") : [];
  if (Number.isInteger(m.max_message_length) && m.max_message_length > 0) {
    MAX_LENGTH = m.max_message_length;
    COUNTER_FROM = Math.floor(MAX_LENGTH * 0.9);
  }
  renderRoomList();
  updateComposer();
  if (again) {
    // The server re-joins the rooms we named in hello.resume and replays what we
    // missed; rooms whose first history never arrived are joined afresh.
    for (const room of app.rooms.values()) if (!room.loaded) joinRoom(room.name);
    return;
  }
  const wanted = decodeURIComponent(window.location.hash.slice(1));
  const first = app.publicRooms.includes(wanted) ? wanted : app.publicRooms[0];
  if (first) switchTo(first);
  else ui.title.textContent = "No rooms yet";
}

function onAck(m) {
  const req = app.requests.get(m.id);
  if (!req) return;
  app.requests.delete(m.id);
  if (req.kind === "send") {
    const room = app.rooms.get(req.room);
    if (!room || !req.el) return;
    if (typeof m.message_id !== "string") {
      req.el.remove();
      return;
    }
    if (room.messages.has(m.message_id)) {
      req.el.remove(); // its chat.message came first
      return;
    }
    req.el.classList.remove("msg--pending");
    req.el.classList.add("msg--acked");
    req.el.querySelector(".msg-status")?.remove();
    req.el.dataset.messageId = m.message_id;
    if (typeof m.seq === "number") {
      req.el.dataset.seq = String(m.seq);
      req.el.remove();
      place(room, req.el, m.seq);
    }
    room.messages.set(m.message_id, req.el);
  } else if (req.kind === "command") {
    showCommandResult(req, m.result);
  }
}

function onError(m) {
  const req = typeof m.id === "string" || typeof m.id === "number" ? app.requests.get(m.id) : null;
  if (req) app.requests.delete(m.id);
  const code = typeof m.code === "string" ? m.code : "error";
  if (code === "banned") {
    app.banned = true;
    const until = typeof m.until === "number" ? " until " + formatWhen(m.until) : "";
    const reason = typeof m.reason === "string" && m.reason ? ": " + m.reason : "";
    connection.stop("you are banned" + until + reason);
    showBlocked("You are banned" + until + reason + ".");
    return;
  }
  if (!req) {
    if (typeof m.id === "string" && m.id.startsWith("hello-")) {
      toast(m.message || "The server refused the connection.", "danger");
    } else if (code === "unauthenticated") {
      showComposerError(m);
    } else if (code !== "rate_limited" || !app.user) {
      toast(String(m.message || code), "warning");
    } else {
      showComposerError(m);
    }
    return;
  }
  switch (req.kind) {
    case "send":
    case "command":
      if (req.el) failPending(req, null);
      if (!ui.input.value && typeof req.text === "string") {
        ui.input.value = req.text;
        onInput();
      }
      showComposerError(m);
      if (code === "not_in_room") joinRoom(req.room);
      break;
    case "history": {
      const room = app.rooms.get(req.room);
      if (room) {
        room.loadingOlder = false;
        room.olderButton.textContent = "Load older messages (failed: try again)";
      }
      break;
    }
    case "join":
      toast("Could not join #" + req.room + ": " + (m.message || code), "warning");
      break;
    default:
      toast(String(m.message || code), "warning");
  }
}

function onHistory(m) {
  const room = app.rooms.get(m.room);
  if (!room) return;
  const messages = Array.isArray(m.messages) ? m.messages.filter(isMessage) : [];
  const req = m.id !== undefined ? app.requests.get(m.id) : null;
  if (m.resumed) {
    // Missed while disconnected: append after what we have, skipping duplicates.
    const stick = room.atBottom();
    let added = 0;
    for (const msg of messages) if (addMessage(room, msg)) added += 1;
    afterLiveAdd(room, stick, added, false);
    return;
  }
  if (req && req.kind === "history") {
    app.requests.delete(m.id);
    room.loadingOlder = false;
    const before = room.view.scrollHeight - room.view.scrollTop;
    const fragment = document.createDocumentFragment();
    for (const msg of messages) {
      const li = renderNew(room, msg);
      if (li) fragment.appendChild(li);
    }
    room.historyList.prepend(fragment);
    room.hasMore = Boolean(m.has_more) && messages.length > 0;
    updateTop(room);
    room.view.scrollTop = room.view.scrollHeight - before; // keep what the reader was looking at
    maybeLoadMore(room);
    return;
  }
  // The history that answers room.join: the room's latest messages.
  room.clear();
  const fragment = document.createDocumentFragment();
  for (const msg of messages) {
    const li = renderNew(room, msg);
    if (li) fragment.appendChild(li);
  }
  room.historyList.appendChild(fragment);
  room.hasMore = Boolean(m.has_more);
  room.loaded = true;
  updateTop(room);
  scrollToBottom(room, false);
  maybeLoadMore(room);
}

function onChatMessage(m) {
  const room = app.rooms.get(m.room);
  if (!room || !isMessage(m)) return;
  if (m.user && typeof m.user.name === "string") stopTyping(room, m.user.name);
  const stick = room.atBottom();
  const added = addMessage(room, m) ? 1 : 0;
  afterLiveAdd(room, stick, added, false);
}

function onReset(m) {
  const room = app.rooms.get(m.room);
  if (!room) return;
  room.clear();
  updateTop(room);
  joinRoom(room.name);
}

function onPresence(m) {
  const room = app.rooms.get(m.room);
  if (!room || !Array.isArray(m.users)) return;
  room.people.clear();
  for (const person of m.users) {
    if (isPerson(person)) room.people.set(person.name.toLowerCase(), person);
  }
  if (room === app.current) renderPresence();
}

function onPresenceUpdate(m) {
  const room = app.rooms.get(m.room);
  if (!room) return;
  if (isPerson(m.joined)) room.people.set(m.joined.name.toLowerCase(), m.joined);
  if (isPerson(m.left)) {
    room.people.delete(m.left.name.toLowerCase());
    stopTyping(room, m.left.name);
  }
  if (room === app.current) renderPresence();
}

function onTyping(m) {
  const room = app.rooms.get(m.room);
  if (!room || !isPerson(m.user)) return;
  if (app.user && sameName(m.user.name, app.user.name)) return;
  const key = m.user.name.toLowerCase();
  const previous = room.typing.get(key);
  if (previous) window.clearTimeout(previous.timer);
  const timer = window.setTimeout(() => stopTyping(room, m.user.name), TYPING_SHOW_MS);
  room.typing.set(key, { user: m.user, timer });
  if (room === app.current) renderTyping();
}

function onMention(m) {
  const by = typeof m.by === "string" ? m.by : "someone";
  const roomName = typeof m.room === "string" ? m.room : "";
  const text = typeof m.text === "string" ? m.text : "";
  if (app.user && sameName(by, app.user.name)) return; // you mentioned yourself
  app.mentionCount += 1;
  updateTitle();
  const action =
    roomName && app.publicRooms.includes(roomName)
      ? { label: "Show", run: () => showMessage(roomName, m.message_id) }
      : null;
  toast("@" + by + " mentioned you in #" + roomName + ": " + truncate(text, 140), "mention", action);
  if (
    notifications.mentions &&
    "Notification" in window &&
    Notification.permission === "granted" &&
    (document.hidden || !document.hasFocus())
  ) {
    try {
      const note = new Notification(by + " mentioned you in #" + roomName, {
        body: truncate(text, 200),
        tag: "bambid-mention-" + (m.message_id || ""),
        silent: !notifications.sound, // the page plays no sound of its own
      });
      note.addEventListener("click", () => {
        window.focus();
        if (action) action.run();
      });
    } catch (err) {
      // Some browsers only allow notifications from a service worker.
    }
  }
}

function onSystem(m) {
  const text = typeof m.message === "string" ? m.message : "";
  if (!text) return;
  const level = ["info", "warning", "error"].includes(m.level) ? m.level : "info";
  if (app.current) addLocalLine(app.current, text, level);
  if (level !== "info") toast(text, level === "error" ? "danger" : "warning");
}

// --- rooms and messages ------------------------------------------------------------------

function isMessage(m) {
  return m && typeof m === "object" && typeof m.seq === "number" && typeof m.message_id === "string";
}

function isPerson(p) {
  return p && typeof p === "object" && typeof p.name === "string" && p.name.length > 0;
}

function joinRoom(name) {
  return request("join", { type: "room.join", room: name }, { room: name });
}

function switchTo(name) {
  const previous = app.current;
  let room = app.rooms.get(name);
  if (!room) {
    room = new Room(name);
    app.rooms.set(name, room);
    joinRoom(name);
  }
  if (previous && previous !== room) {
    previous.savedScroll = previous.atBottom() ? null : previous.view.scrollTop;
    previous.view.hidden = true;
  }
  app.current = room;
  room.view.hidden = false;
  room.unread = 0;
  if (room.savedScroll === null) scrollToBottom(room, false);
  else room.view.scrollTop = room.savedScroll;
  ui.title.textContent = "#" + name;
  if (window.location.hash.slice(1) !== name) {
    window.history.replaceState(null, "", "#" + encodeURIComponent(name));
  }
  renderRoomList();
  renderPresence();
  renderTyping();
  updateNewMessagesButton();
  maybeLoadMore(room);
  closeSidebar();
}

/** Renders a message we do not have yet, or returns null (a duplicate or a deletion). */
function renderNew(room, msg) {
  noteSeq(room, msg.seq);
  if (msg.kind === "deletion") {
    removeMessage(room, msg.target);
    return null;
  }
  const existing = room.messages.get(msg.message_id);
  if (existing) {
    if (msg.deleted) removeMessage(room, msg.message_id);
    if (!existing.classList.contains("msg--acked")) return null;
    // Our own message, acked: show it as the server stored it (links, mentions).
    const li = buildMessage(msg, myName());
    existing.replaceWith(li);
    room.messages.set(msg.message_id, li);
    return null;
  }
  const li = buildMessage(msg, myName());
  room.messages.set(msg.message_id, li);
  if (room.removed.has(msg.message_id)) markRemoved(li);
  return li;
}

/** Adds a live (or resumed) message in seq order; true when it is new. */
function addMessage(room, msg) {
  const li = renderNew(room, msg);
  if (!li) return false;
  place(room, li, msg.seq);
  return true;
}

function noteSeq(room, seq) {
  if (seq < room.minSeq) room.minSeq = seq;
  if (seq > room.maxSeq) room.maxSeq = seq;
}

function seqOf(node) {
  const s = node.dataset ? node.dataset.seq : undefined;
  return s === undefined ? null : Number(s);
}

/**
 * Puts ``li`` where ``seq`` belongs: normally at the end of the live list,
 * before our own still-pending messages. Lines without a seq (notices only
 * this tab sees) stay where they were written.
 */
function place(room, li, seq) {
  for (let node = room.liveList.lastElementChild; node; node = node.previousElementSibling) {
    const s = seqOf(node);
    if (s === null && node.classList.contains("msg--pending")) continue;
    if (s === null || s < seq) {
      node.after(li);
      return;
    }
  }
  let lastHistory = room.historyList.lastElementChild;
  while (lastHistory && seqOf(lastHistory) === null) lastHistory = lastHistory.previousElementSibling;
  if (!lastHistory || seqOf(lastHistory) < seq) {
    room.liveList.prepend(li);
    return;
  }
  for (let node = lastHistory; node; node = node.previousElementSibling) {
    const s = seqOf(node);
    if (s !== null && s < seq) {
      node.after(li);
      return;
    }
  }
  room.historyList.prepend(li);
}

function removeMessage(room, messageId) {
  if (typeof messageId !== "string") return;
  room.removed.add(messageId);
  const li = room.messages.get(messageId);
  if (li) markRemoved(li);
}

function addLocalLine(room, text, level, title) {
  const stick = room.atBottom();
  room.liveList.appendChild(buildLocalLine(text, level, title));
  if (stick && room === app.current) scrollToBottom(room, false);
}

function afterLiveAdd(room, stick, added, own) {
  if (!added) return;
  if (room !== app.current) {
    room.unread += added;
    renderRoomList();
    return;
  }
  if (stick || own) {
    scrollToBottom(room, !own);
  } else {
    room.unseenBelow += added;
    updateNewMessagesButton();
  }
}

function scrollToBottom(room, smooth) {
  room.unseenBelow = 0;
  room.stuck = true;
  room.view.scrollTo({
    top: room.view.scrollHeight,
    behavior: smooth && !reducedMotion.matches ? "smooth" : "auto",
  });
  updateNewMessagesButton();
}

function onScroll(room) {
  if (room !== app.current) return;
  room.stuck = room.atBottom();
  if (room.unseenBelow && room.atBottom()) {
    room.unseenBelow = 0;
    updateNewMessagesButton();
  }
  if (room.view.scrollTop < NEAR_TOP_PX) requestOlder(room);
}

function requestOlder(room) {
  if (room.loadingOlder || !room.hasMore || !Number.isFinite(room.minSeq)) return;
  const id = request(
    "history",
    { type: "chat.history", room: room.name, before_seq: room.minSeq, limit: HISTORY_PAGE },
    { room: room.name },
  );
  if (id) {
    room.loadingOlder = true;
    room.olderButton.textContent = "Loading older messages…";
  }
}

/** Fetches more history while the view is not yet scrollable. */
function maybeLoadMore(room) {
  if (room !== app.current || !room.hasMore) return;
  if (room.view.scrollHeight <= room.view.clientHeight + NEAR_TOP_PX) requestOlder(room);
}

function updateTop(room) {
  room.olderButton.hidden = !room.hasMore;
  room.olderButton.textContent = "Load older messages";
  room.beginning.hidden = room.hasMore || !room.loaded;
}

function updateNewMessagesButton() {
  const room = app.current;
  const count = room ? room.unseenBelow : 0;
  ui.newMessages.hidden = count === 0;
  ui.newMessages.firstChild.textContent =
    count === 1 ? "1 new message " : count + " new messages ";
}

function showMessage(roomName, messageId) {
  switchTo(roomName);
  const li = app.current.messages.get(messageId);
  if (li) {
    li.scrollIntoView({ block: "center", behavior: reducedMotion.matches ? "auto" : "smooth" });
    li.classList.add("msg--flash");
    window.setTimeout(() => li.classList.remove("msg--flash"), 2000);
  }
}

// --- people, typing, rooms ------------------------------------------------------------------

function renderRoomList() {
  const items = app.publicRooms.map((name) => {
    const li = el("li");
    const button = el("button", "chat-room");
    button.type = "button";
    button.appendChild(el("span", "chat-room-name", "#" + name));
    const room = app.rooms.get(name);
    if (room && room.unread > 0 && room !== app.current) {
      const badge = el("span", "badge rounded-pill text-bg-primary", String(room.unread));
      badge.appendChild(el("span", "visually-hidden", " unread"));
      button.appendChild(badge);
    }
    if (app.current && app.current.name === name) button.setAttribute("aria-current", "true");
    button.addEventListener("click", () => switchTo(name));
    li.appendChild(button);
    return li;
  });
  ui.roomList.replaceChildren(...items);
}

function renderPresence() {
  const room = app.current;
  const people = room ? [...room.people.values()] : [];
  people.sort((a, b) => a.name.localeCompare(b.name));
  ui.presence.replaceChildren(
    ...people.map((person) => {
      const li = buildPerson(person);
      if (app.user && sameName(person.name, app.user.name)) {
        li.classList.add("chat-person--me");
        li.appendChild(el("span", "chat-person-you", "(you)"));
      }
      return li;
    }),
  );
  const count = people.length ? String(people.length) : "";
  ui.peopleCount.textContent = count;
  ui.peopleCountToggle.textContent = count;
}

function stopTyping(room, name) {
  const key = name.toLowerCase();
  const entry = room.typing.get(key);
  if (!entry) return;
  window.clearTimeout(entry.timer);
  room.typing.delete(key);
  if (room === app.current) renderTyping();
}

function renderTyping() {
  const room = app.current;
  const names = room ? [...room.typing.values()].map((t) => t.user.name) : [];
  let text = "";
  if (names.length === 1) text = names[0] + " is typing…";
  else if (names.length === 2) text = names[0] + " and " + names[1] + " are typing…";
  else if (names.length > 2) text = "Several people are typing…";
  ui.typing.textContent = text;
}

function closeSidebar() {
  if (!window.bootstrap || !ui.sidebar.classList.contains("show")) return;
  window.bootstrap.Offcanvas.getInstance(ui.sidebar)?.hide();
}

// --- the message box --------------------------------------------------------------------------

function myName() {
  return app.user ? app.user.name : null;
}

function codePoints(text) {
  let n = 0;
  for (const _ of text) n += 1; // eslint-disable-line no-unused-vars
  return n;
}

function updateComposer() {
  const signedIn = Boolean(app.user);
  const blocked = app.banned;
  ui.composer.hidden = !app.welcomed || !signedIn || blocked;
  ui.signin.hidden = !app.welcomed || signedIn || blocked;
  updateCounter();
}

function updateCounter() {
  const length = codePoints(ui.input.value.trim());
  const over = length > MAX_LENGTH;
  ui.counter.textContent = length >= COUNTER_FROM ? length + " / " + MAX_LENGTH : "";
  ui.counter.classList.toggle("chat-counter--over", over);
  ui.input.setAttribute("aria-invalid", over ? "true" : "false");
  ui.send.disabled = over || ui.stateEl.dataset.state !== "connected";
}

function autosize() {
  ui.input.style.height = "auto";
  const cap = parseFloat(window.getComputedStyle(ui.input).maxHeight) || 200;
  ui.input.style.height = Math.min(ui.input.scrollHeight + 2, cap) + "px";
}

function onInput() {
  autosize();
  updateCounter();
  const text = ui.input.value.trim();
  const now = Date.now();
  if (
    text &&
    !text.startsWith("/") &&
    app.current &&
    app.user &&
    now - app.lastTypingSent >= TYPING_SEND_EVERY_MS
  ) {
    if (connection.send({ type: "chat.typing", room: app.current.name })) app.lastTypingSent = now;
  }
}

function clearComposerError() {
  ui.error.replaceChildren();
}

function showComposerError(m) {
  const code = typeof m.code === "string" ? m.code : "error";
  const parts = [];
  switch (code) {
    case "rate_limited": {
      const wait = typeof m.retry_after === "number" ? Math.max(1, Math.ceil(m.retry_after)) : null;
      parts.push(
        "You are sending messages too quickly." +
          (wait ? " Try again in " + wait + (wait === 1 ? " second." : " seconds.") : ""),
      );
      break;
    }
    case "muted":
      parts.push(
        typeof m.until === "number"
          ? "You are muted until " + formatWhen(m.until) + "."
          : "You are muted until a moderator lifts it.",
      );
      break;
    case "unauthenticated": {
      const line = el("span", null, "Sign in or continue as guest to post: ");
      const login = el("a", null, "sign in / guest");
      login.href = "/login";
      const register = el("a", null, "create an account");
      register.href = "/register";
      line.append(login, " · ", register);
      parts.push(line);
      break;
    }
    case "forbidden":
      parts.push("You are not allowed to do that." + (m.message ? " (" + m.message + ")" : ""));
      break;
    case "not_in_room":
      parts.push("You had left this room; rejoining. Please send again.");
      break;
    case "busy":
      parts.push("The server is busy. Please try again.");
      break;
    default:
      parts.push(typeof m.message === "string" && m.message ? m.message : "Error: " + code);
  }
  ui.error.replaceChildren(...parts);
}

function failPending(req, why) {
  const li = req.el;
  req.el = null;
  if (!li) return;
  if (why === null) {
    li.remove();
    return;
  }
  li.classList.remove("msg--pending");
  li.classList.add("msg--failed");
  const status = li.querySelector(".msg-status");
  if (status) status.textContent = why;
}

function submit() {
  const text = ui.input.value.trim();
  if (!text || !app.current || !app.user) return;
  if (codePoints(text) > MAX_LENGTH) {
    ui.error.replaceChildren("Messages can be at most " + MAX_LENGTH + " characters.");
    return;
  }
  const room = app.current;
  const command = text.startsWith("/");
  const extra = { room: room.name, text };
  let li = null;
  if (!command) {
    li = buildMessage(
      { user: app.user, text, mentions: [], links: [], ts: Date.now() / 1000, kind: "message" },
      myName(),
    );
    li.classList.add("msg--pending");
    li.appendChild(el("div", "msg-status", "sending…"));
    extra.el = li;
  }
  const id = request(command ? "command" : "send", { type: "chat.send", room: room.name, text }, extra);
  if (!id) {
    ui.error.replaceChildren("Not connected. Your message is still in the box.");
    return;
  }
  clearComposerError();
  ui.input.value = "";
  autosize();
  updateCounter();
  app.lastTypingSent = 0;
  if (li) {
    room.liveList.appendChild(li);
    scrollToBottom(room, false);
  }
}

function showCommandResult(req, result) {
  const room = app.rooms.get(req.room) || app.current;
  if (!room) return;
  const command = typeof req.text === "string" ? req.text.split(/\s+/)[0] : "command";
  addLocalLine(room, describeResult(result), "command", command + " (only you see this)");
}

/** A command's ``ack.result`` as readable lines (``/help`` lists ``commands``). */
function describeResult(result) {
  if (typeof result === "string") return result;
  if (!result || typeof result !== "object") return "done";
  const lines = [];
  if (Array.isArray(result.commands)) lines.push(...result.commands.map(String));
  for (const [key, value] of Object.entries(result)) {
    if (key === "commands") continue;
    let shown;
    if (value === null) shown = key === "until" ? "until lifted" : "none";
    else if (key === "until" && typeof value === "number") shown = formatWhen(value);
    else if (Array.isArray(value)) shown = value.map(String).join(", ");
    else if (typeof value === "object") shown = JSON.stringify(value);
    else shown = String(value);
    lines.push(key.replace(/_/g, " ") + ": " + shown);
  }
  return lines.length ? lines.join("\n") : "done";
}

// --- notices, notifications --------------------------------------------------------------------

function toast(text, tone, action) {
  const box = el("div", "toast chat-toast chat-toast--" + tone);
  box.setAttribute("role", tone === "danger" ? "alert" : "status");
  box.setAttribute("aria-live", tone === "danger" ? "assertive" : "polite");
  box.setAttribute("aria-atomic", "true");
  const row = el("div", "d-flex align-items-start");
  const body = el("div", "toast-body", text);
  row.appendChild(body);
  if (action) {
    const go = el("button", "btn btn-sm btn-outline-light me-2 chat-toast-action", action.label);
    go.type = "button";
    go.addEventListener("click", () => {
      action.run();
      dismiss();
    });
    row.appendChild(go);
  }
  const close = el("button", "btn-close btn-close-white me-2 m-auto");
  close.type = "button";
  close.setAttribute("aria-label", "Close");
  row.appendChild(close);
  box.appendChild(row);
  ui.toasts.appendChild(box);
  const delay = tone === "mention" || tone === "danger" ? 10000 : 6000;
  let instance = null;
  function dismiss() {
    if (instance) instance.hide();
    else box.remove();
  }
  close.addEventListener("click", dismiss);
  if (window.bootstrap && window.bootstrap.Toast) {
    instance = new window.bootstrap.Toast(box, { delay, animation: !reducedMotion.matches });
    box.addEventListener("hidden.bs.toast", () => box.remove());
    instance.show();
  } else {
    box.classList.add("show");
    window.setTimeout(() => box.remove(), delay);
  }
}

function updateTitle() {
  document.title = app.mentionCount > 0 ? "(" + app.mentionCount + ") " + baseTitle : baseTitle;
}

function clearMentionCount() {
  if (app.mentionCount === 0) return;
  app.mentionCount = 0;
  updateTitle();
}

function setUpNotifications() {
  if (!("Notification" in window) || Notification.permission !== "default") return;
  ui.notify.hidden = false;
  ui.notify.addEventListener("click", async () => {
    try {
      await Notification.requestPermission();
    } finally {
      ui.notify.hidden = Notification.permission !== "default";
    }
  });
}

function showBlocked(text) {
  app.banned = true;
  ui.blocked.textContent = text.charAt(0).toUpperCase() + text.slice(1);
  ui.blocked.hidden = false;
  updateComposer();
}

// --- helpers ---------------------------------------------------------------------------------

function truncate(text, n) {
  return text.length > n ? text.slice(0, n - 1) + "…" : text;
}

function formatWhen(seconds) {
  return new Date(seconds * 1000).toLocaleString([], {
    dateStyle: "medium",
    timeStyle: "short",
  });
}

// --- wiring ----------------------------------------------------------------------------------

ui.composer.addEventListener("submit", (event) => {
  event.preventDefault();
  submit();
});
ui.input.addEventListener("keydown", (event) => {
  if (event.key === "Enter" && !event.shiftKey && !event.isComposing) {
    event.preventDefault();
    submit();
  }
});
ui.input.addEventListener("input", onInput);
document.querySelector('a[href="#message-input"]').addEventListener("click", (event) => {
  event.preventDefault(); // keep the room in the address
  ui.input.focus();
});
ui.newMessages.addEventListener("click", () => {
  if (app.current) scrollToBottom(app.current, true);
});
document.addEventListener("visibilitychange", () => {
  if (!document.hidden) clearMentionCount();
});
document.addEventListener("keydown", clearMentionCount);
document.addEventListener("pointerdown", clearMentionCount);
setUpNotifications();
connection.start();
