// A small, safe Markdown subset for the companion's replies. Everything is
// built from DOM nodes whose text goes in as text nodes: nothing is ever parsed
// as HTML, so "<img onerror=…>" in a reply is shown as those characters.
//
// Blocks: paragraphs (a single newline is a line break), fenced code blocks
// (``` or ~~~; an unclosed fence runs to the end, as while a reply streams),
// bullet lists (-, *, +) and numbered lists (1. or 1)), nested by indentation,
// "#" headings (shown as a bold line) and "---" rules. Inline: `code`,
// **strong** / __strong__, *emphasis* / _emphasis_, backslash escapes.
// Links ([text](url)) and bare URLs stay plain text: "text (url)".

const FENCE = /^( {0,3})(`{3,}|~{3,})(.*)$/;
const BULLET = /^( *)([-*+])( +|$)(.*)$/;
const ORDERED = /^( *)(\d{1,9})([.)])( +|$)(.*)$/;
const HEADING = /^ {0,3}(#{1,6}) +(.*?[^ #].*?)(?: +#+)? *$/;
const RULE = /^ {0,3}([-*_])(?: *\1){2,} *$/;
const ESCAPABLE = /[\\`*_{}[\]()#+\-.!|~<>"']/;
const MAX_INLINE_DEPTH = 6;
const MAX_BLOCK_DEPTH = 8;

function node(tag, className) {
  const n = document.createElement(tag);
  if (className) n.className = className;
  return n;
}

function isBlank(line) {
  return line.trim() === "";
}

function indentOf(line) {
  const m = /^ */.exec(line);
  return m ? m[0].length : 0;
}

/** A list marker line: {indent, ordered, number, width, rest} or null. */
function listItem(line) {
  let m = BULLET.exec(line);
  if (m) {
    return {
      indent: m[1].length,
      ordered: false,
      number: 0,
      width: m[1].length + 1 + Math.min(m[3].length || 1, 4),
      rest: m[4],
    };
  }
  m = ORDERED.exec(line);
  if (m) {
    return {
      indent: m[1].length,
      ordered: true,
      number: parseInt(m[2], 10),
      width: m[1].length + m[2].length + 1 + Math.min(m[4].length || 1, 4),
      rest: m[5],
    };
  }
  return null;
}

/** Whether ``line`` starts a block other than a paragraph (so it ends one). */
function startsBlock(line) {
  if (FENCE.test(line) || HEADING.test(line) || RULE.test(line)) return true;
  const item = listItem(line);
  // A numbered line interrupts a paragraph only when it starts at 1 ("In
  // 1999. we…" stays text), and an empty bullet never does.
  return item !== null && item.rest.trim() !== "" && (!item.ordered || item.number === 1);
}

/** Renders ``text`` into a new DocumentFragment. */
export function renderMarkdown(text) {
  const fragment = document.createDocumentFragment();
  const source = typeof text === "string" ? text : "";
  const lines = source.replace(/\r\n?/g, "\n").replace(/\t/g, "    ").split("\n");
  renderBlocks(fragment, lines, 0);
  return fragment;
}

/** Appends the blocks of ``lines`` to ``parent``. */
function renderBlocks(parent, lines, depth) {
  let i = 0;
  while (i < lines.length) {
    const line = lines[i];
    if (isBlank(line)) {
      i += 1;
      continue;
    }
    const fence = FENCE.exec(line);
    if (fence) {
      i = renderFence(parent, lines, i, fence);
      continue;
    }
    const heading = HEADING.exec(line);
    if (heading) {
      const p = node("p", "md-heading md-heading-" + heading[1].length);
      const strong = node("strong");
      renderInline(strong, heading[2] || "", 0);
      p.appendChild(strong);
      parent.appendChild(p);
      i += 1;
      continue;
    }
    if (RULE.test(line)) {
      parent.appendChild(node("hr", "md-rule"));
      i += 1;
      continue;
    }
    const item = listItem(line);
    if (item && depth < MAX_BLOCK_DEPTH) {
      i = renderList(parent, lines, i, item, depth);
      continue;
    }
    // A paragraph: up to a blank line or the start of another block.
    const paragraph = [line.trim()];
    i += 1;
    while (i < lines.length && !isBlank(lines[i]) && !startsBlock(lines[i])) {
      paragraph.push(lines[i].trim());
      i += 1;
    }
    const p = node("p");
    renderLines(p, paragraph);
    parent.appendChild(p);
  }
}

/** Inline text with a <br> between the lines. */
function renderLines(parent, lines) {
  lines.forEach((text, n) => {
    if (n > 0) parent.appendChild(node("br"));
    renderInline(parent, text, 0);
  });
}

function renderFence(parent, lines, start, open) {
  const indent = open[1].length;
  const marker = open[2];
  const info = open[3].trim().split(/\s+/)[0] || "";
  const body = [];
  let i = start + 1;
  for (; i < lines.length; i += 1) {
    const close = FENCE.exec(lines[i]);
    const closes =
      close && close[2][0] === marker[0] && close[2].length >= marker.length && !close[3].trim();
    if (closes) {
      i += 1;
      break;
    }
    // Drop up to the fence's own indentation from each line.
    body.push(lines[i].slice(Math.min(indent, indentOf(lines[i]))));
  }
  const pre = node("pre", "md-code");
  const code = node("code");
  code.textContent = body.join("\n");
  if (/^[\w+#.-]{1,24}$/.test(info)) {
    pre.dataset.lang = info;
    code.setAttribute("aria-label", info + " code");
  }
  pre.appendChild(code);
  parent.appendChild(pre);
  return i;
}

/**
 * A list starting at ``lines[start]``: its items and everything indented
 * under them (rendered again as blocks: nested lists, code, paragraphs).
 * Returns the index of the first line after it.
 */
function renderList(parent, lines, start, first, depth) {
  const list = node(first.ordered ? "ol" : "ul", "md-list");
  if (first.ordered && first.number !== 1) list.setAttribute("start", String(first.number));
  let i = start;
  while (i < lines.length) {
    const item = listItem(lines[i]);
    if (!item || item.ordered !== first.ordered || item.indent >= first.indent + 2) break;
    const content = [item.rest];
    i += 1;
    let inFence = FENCE.test(item.rest);
    while (i < lines.length) {
      const line = lines[i];
      const indent = indentOf(line);
      const dedented = line.slice(Math.min(indent, item.width));
      if (inFence) {
        // Inside a code block of the item: everything up to its closing fence.
        content.push(dedented);
        if (FENCE.test(dedented)) inFence = false;
        i += 1;
        continue;
      }
      if (isBlank(line)) {
        // Part of the item only if what follows the blank lines is indented under it.
        let j = i;
        while (j < lines.length && isBlank(lines[j])) j += 1;
        if (j < lines.length && indentOf(lines[j]) > item.indent && !isSibling(lines[j], item)) {
          for (; i < j; i += 1) content.push("");
          continue;
        }
        break;
      }
      if (indent > item.indent && !isSibling(line, item)) {
        if (FENCE.test(dedented)) inFence = true;
        content.push(dedented);
        i += 1;
        continue;
      }
      // A lazy continuation of the item's text: not blank, starts nothing new.
      if (!startsBlock(line) && !listItem(line) && content[content.length - 1].trim() !== "") {
        content.push(line.trim());
        i += 1;
        continue;
      }
      break;
    }
    const li = node("li");
    renderItem(li, content, depth + 1);
    list.appendChild(li);
    // A blank line between two items keeps the list going.
    let j = i;
    while (j < lines.length && isBlank(lines[j])) j += 1;
    if (j > i && j < lines.length && isSibling(lines[j], first)) i = j;
  }
  parent.appendChild(list);
  return i;
}

function isSibling(line, item) {
  const other = listItem(line);
  return other !== null && other.ordered === item.ordered && other.indent < item.indent + 2;
}

/**
 * One list item. In a tight item (no blank line) its first lines of text go
 * straight into the <li>, then anything else (a nested list, code) as blocks;
 * a loose item is all blocks.
 */
function renderItem(li, content, depth) {
  if (content.some(isBlank)) {
    renderBlocks(li, content, depth);
    return;
  }
  let n = startsBlock(content[0]) ? 0 : 1;
  while (n > 0 && n < content.length && !startsBlock(content[n]) && !listItem(content[n])) n += 1;
  if (n > 0) renderLines(li, content.slice(0, n).map((line) => line.trim()));
  if (n < content.length) renderBlocks(li, content.slice(n), depth);
}

// --- inline -------------------------------------------------------------------

function isWordChar(ch) {
  return ch !== undefined && /[\p{L}\p{N}]/u.test(ch);
}

function isSpace(ch) {
  return ch === undefined || /\s/u.test(ch);
}

/** Where the run of ``n`` ``ch`` closing an emphasis opened at ``from`` starts, or -1. */
function findCloser(text, from, ch, n) {
  for (let i = from; i < text.length; i += 1) {
    const c = text[i];
    if (c === "\\") {
      i += 1;
      continue;
    }
    if (c === "`") {
      // Skip a code span: emphasis markers inside it are not markers.
      const end = codeSpanEnd(text, i);
      if (end > 0) i = end - 1;
      continue;
    }
    if (c !== ch) continue;
    let run = 1;
    while (text[i + run] === ch) run += 1;
    if (run >= n && !isSpace(text[i - 1]) && i > from) {
      if (ch === "_" && isWordChar(text[i + n])) {
        i += run - 1;
        continue;
      }
      // For a single marker, a run of exactly one closes; for a double, the
      // last two of a run close (so "***x***" closes the strong).
      if (n === 1 && run === 1) return i;
      if (n === 1 && run === 3) return i;
      if (n === 2 && run >= 2) return i + run - 2;
    }
    i += run - 1;
  }
  return -1;
}

/** The index just after the code span opening at ``start``, or -1. */
function codeSpanEnd(text, start) {
  let n = 0;
  while (text[start + n] === "`") n += 1;
  let i = start + n;
  while (i < text.length) {
    const at = text.indexOf("`", i);
    if (at < 0) return -1;
    let run = 0;
    while (text[at + run] === "`") run += 1;
    if (run === n) return at + run;
    i = at + run;
  }
  return -1;
}

const LINK = /^\[([^\]\n]{1,500})\]\(\s*<?([^)\s>]{1,2000})>?(?:\s+"[^"\n]*")?\s*\)/;

/** Appends ``text`` with its inline markup to ``parent``. */
function renderInline(parent, text, depth) {
  let buffer = "";
  const flush = () => {
    if (buffer) parent.appendChild(document.createTextNode(buffer));
    buffer = "";
  };
  let i = 0;
  while (i < text.length) {
    const ch = text[i];
    if (ch === "\\" && i + 1 < text.length && ESCAPABLE.test(text[i + 1])) {
      buffer += text[i + 1];
      i += 2;
      continue;
    }
    if (ch === "`") {
      let n = 0;
      while (text[i + n] === "`") n += 1;
      const end = codeSpanEnd(text, i);
      if (end < 0) {
        buffer += "`".repeat(n);
        i += n;
        continue;
      }
      flush();
      let inside = text.slice(i + n, end - n);
      if (/^ .*[^ ].* $/.test(inside)) inside = inside.slice(1, -1);
      const code = node("code", "md-code-inline");
      code.textContent = inside;
      parent.appendChild(code);
      i = end;
      continue;
    }
    if ((ch === "*" || ch === "_") && depth < MAX_INLINE_DEPTH) {
      let run = 0;
      while (text[i + run] === ch) run += 1;
      const before = text[i - 1];
      const after = text[i + run];
      const canOpen = !isSpace(after) && !(ch === "_" && isWordChar(before));
      if (canOpen && run >= 2) {
        const close = findCloser(text, i + 2, ch, 2);
        if (close > i + 2) {
          flush();
          const strong = node("strong");
          renderInline(strong, text.slice(i + 2, close), depth + 1);
          parent.appendChild(strong);
          i = close + 2;
          continue;
        }
      }
      if (canOpen && (run === 1 || run === 3)) {
        const close = findCloser(text, i + 1, ch, 1);
        if (close > i + 1) {
          flush();
          const em = node("em");
          renderInline(em, text.slice(i + 1, close), depth + 1);
          parent.appendChild(em);
          i = close + 1;
          continue;
        }
      }
      buffer += ch.repeat(run);
      i += run;
      continue;
    }
    if (ch === "[") {
      const link = LINK.exec(text.slice(i, i + 2600));
      if (link) {
        // Shown, never followed: the words, then the address as plain text.
        flush();
        const words = node("span", "md-link-text");
        renderInline(words, link[1], depth + 1);
        parent.appendChild(words);
        if (link[2] !== link[1]) {
          parent.appendChild(document.createTextNode(" "));
          const url = node("span", "md-url");
          url.textContent = "(" + link[2] + ")";
          parent.appendChild(url);
        }
        i += link[0].length;
        continue;
      }
    }
    buffer += ch;
    i += 1;
  }
  flush();
}
