// DOM builders for chat messages. Everything a person wrote (names, text, URLs)
// goes into the page as text nodes or textContent: never as HTML. Links point
// only at the server's own /go redirect page.

const GO_HREF = /^\/go\?[^\s"'<>\\]*$/;
// Like the server (bambid/chat/mentions.py): "@name" not glued to a word before
// it and not followed by another name character.
const GLUED_BEFORE = /[\p{L}\p{N}_@]/u;
const NAME_AFTER = /[A-Za-z0-9_-]/;

/** The server-given href if it is a /go link on this site, else null. */
export function safeHref(href) {
  return typeof href === "string" && GO_HREF.test(href) ? href : null;
}

/** Case-insensitive name comparison (the server compares casefolded names). */
export function sameName(a, b) {
  return typeof a === "string" && typeof b === "string" && a.toLowerCase() === b.toLowerCase();
}

function el(tag, className, text) {
  const node = document.createElement(tag);
  if (className) node.className = className;
  if (text !== undefined && text !== null) node.textContent = String(text);
  return node;
}

export { el as element };

function escapeRegExp(text) {
  return text.replace(/[.*+?^${}()|[\]\\]/g, "\\$&");
}

/** Appends ``text`` to ``parent``, wrapping ``@name`` for the mentioned names
 * in highlight spans. Returns whether ``me`` was one of them. */
function appendWithMentions(parent, text, mentions, me) {
  const names = mentions.filter((n) => typeof n === "string" && n.length > 0);
  if (names.length === 0) {
    parent.appendChild(document.createTextNode(text));
    return;
  }
  names.sort((a, b) => b.length - a.length);
  const pattern = new RegExp("@(" + names.map(escapeRegExp).join("|") + ")", "giu");
  let cursor = 0;
  let match;
  while ((match = pattern.exec(text)) !== null) {
    const start = match.index;
    const end = start + match[0].length;
    const before = start > 0 ? text[start - 1] : "";
    const after = end < text.length ? text[end] : "";
    if ((before && GLUED_BEFORE.test(before)) || (after && NAME_AFTER.test(after))) {
      continue; // part of a longer word or an e-mail address
    }
    if (start > cursor) parent.appendChild(document.createTextNode(text.slice(cursor, start)));
    const span = el("span", "msg-mention", match[0]);
    if (sameName(match[1], me)) span.classList.add("msg-mention--me");
    parent.appendChild(span);
    cursor = end;
  }
  if (cursor < text.length) parent.appendChild(document.createTextNode(text.slice(cursor)));
}

const FLAG_REASONS = {
  denylisted: "this site is on the server's deny list",
  ip_address: "the link goes to a bare IP address",
  credentials: "the link carries a user name or password",
  lookalike: "the address may imitate another site",
};

/** An <a> to the server's /go page for one of ``chat.message.links``, or a
 * plain text node when the href is not a /go link. */
export function buildLink(link) {
  const url = typeof link.url === "string" ? link.url : "";
  const href = safeHref(link.href);
  if (href === null) return document.createTextNode(url);
  const a = el("a", "msg-link");
  a.href = href;
  a.rel = "noopener noreferrer";
  a.target = "_blank";
  if (link.flagged) {
    a.classList.add("msg-link--flagged");
    const why = FLAG_REASONS[link.reason] || "this link was flagged";
    a.title = "Careful: " + why;
    const marker = el("span", "msg-link-warning", "⚠");
    marker.setAttribute("aria-hidden", "true");
    a.appendChild(marker);
    a.appendChild(el("span", "visually-hidden", "Flagged link (" + why + "): "));
  }
  a.appendChild(document.createTextNode(url));
  return a;
}

/** Fills ``parent`` with ``text``: links (in the order the server listed them)
 * become <a> elements, ``@mentions`` highlight spans, the rest text nodes. */
export function renderText(parent, text, mentions, links, me) {
  const body = typeof text === "string" ? text : "";
  const names = Array.isArray(mentions) ? mentions : [];
  const linkList = Array.isArray(links) ? links.filter((l) => l && typeof l === "object") : [];
  let cursor = 0;
  const leftovers = [];
  for (const link of linkList) {
    const url = typeof link.url === "string" ? link.url : "";
    const at = url ? body.indexOf(url, cursor) : -1;
    if (at < 0) {
      leftovers.push(link);
      continue;
    }
    if (at > cursor) appendWithMentions(parent, body.slice(cursor, at), names, me);
    parent.appendChild(buildLink(link));
    cursor = at + url.length;
  }
  if (cursor < body.length) appendWithMentions(parent, body.slice(cursor), names, me);
  for (const link of leftovers) {
    parent.appendChild(document.createTextNode(" "));
    parent.appendChild(buildLink(link));
  }
}

function formatTime(ts) {
  if (typeof ts !== "number" || !Number.isFinite(ts)) return null;
  const date = new Date(ts * 1000);
  return date;
}

function roleBadge(user) {
  if (!user || typeof user !== "object") return null;
  if (user.role === "admin") return el("span", "badge msg-badge msg-badge--admin", "admin");
  if (user.role === "moderator") return el("span", "badge msg-badge msg-badge--mod", "mod");
  if (user.guest) return el("span", "badge msg-badge msg-badge--guest", "guest");
  return null;
}

/** A person's name with their role or guest badge, for lists. */
export function buildPerson(user) {
  const li = el("li", "chat-person");
  li.appendChild(el("span", "chat-person-name", user.name));
  const badge = roleBadge(user);
  if (badge) li.appendChild(badge);
  return li;
}

/** Replaces a message's body with "message removed". */
export function markRemoved(li) {
  li.classList.add("msg--deleted");
  li.classList.remove("msg--mentions-me");
  const body = li.querySelector(".msg-text");
  if (body) {
    body.replaceChildren(el("em", "msg-removed", "message removed"));
  }
}

/**
 * One message as an <li>. ``msg`` is a ``chat.message`` (or a history entry);
 * ``me`` is the signed-in name or null.
 */
export function buildMessage(msg, me) {
  const li = el("li", "msg");
  const kind = msg.kind === "notice" ? "notice" : "message";
  li.classList.add("msg--" + kind);
  if (typeof msg.seq === "number") li.dataset.seq = String(msg.seq);
  if (typeof msg.message_id === "string") li.dataset.messageId = msg.message_id;
  const user = msg.user && typeof msg.user === "object" ? msg.user : { name: "?" };
  const name = typeof user.name === "string" ? user.name : "?";
  li.dataset.author = name;
  if (me && sameName(name, me)) li.classList.add("msg--own");

  const head = el("div", "msg-head");
  if (kind === "notice") head.appendChild(el("span", "msg-notice-label", "Notice"));
  head.appendChild(el("span", "msg-author", name));
  const badge = roleBadge(user);
  if (badge) head.appendChild(badge);
  const date = formatTime(msg.ts);
  if (date) {
    const time = el(
      "time",
      "msg-time",
      date.toLocaleTimeString([], { hour: "2-digit", minute: "2-digit" }),
    );
    time.dateTime = date.toISOString();
    time.title = date.toLocaleString();
    head.appendChild(time);
  }
  li.appendChild(head);

  const body = el("div", "msg-text");
  li.appendChild(body);
  if (msg.deleted) {
    markRemoved(li);
    return li;
  }
  const mentions = Array.isArray(msg.mentions) ? msg.mentions : [];
  renderText(body, msg.text, mentions, msg.links, me);
  if (me && mentions.some((n) => sameName(n, me))) {
    li.classList.add("msg--mentions-me");
    body.appendChild(el("span", "visually-hidden", " (mentions you)"));
  }
  return li;
}

/** A line only this tab sees (command output, server notices). */
export function buildLocalLine(text, level, title) {
  const li = el("li", "msg msg--local msg--local-" + (level || "info"));
  if (title) li.appendChild(el("div", "msg-local-title", title));
  li.appendChild(el("div", "msg-text", text));
  return li;
}
