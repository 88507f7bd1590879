// The ggrun chat page. One file, no framework, no build step.
//
// It speaks the server's own OpenAI API on this origin: GET /v1/models fills the model
// picker, POST /v1/chat/completions streams replies as server-sent events (delta.content,
// delta.reasoning_content, usage on the last chunk), GET /metrics shows busy slots.
// Conversations, settings and the API key live in localStorage. Model text is never
// parsed as HTML: renderMarkdown builds DOM nodes with createElement and text nodes only.
"use strict";
(() => {
  const $ = (id) => document.getElementById(id);
  const KEYS = { chats: "ggrun.chats", current: "ggrun.current", settings: "ggrun.settings",
                 apiKey: "ggrun.apiKey" };

  const store = {
    get(key, fallback) {
      try { const v = localStorage.getItem(key); return v === null ? fallback : JSON.parse(v); }
      catch { return fallback; }
    },
    set(key, value) {
      try { localStorage.setItem(key, JSON.stringify(value)); return true; }
      catch (e) { console.warn("ggrun: could not save", key, e); return false; }
    },
    remove(key) { try { localStorage.removeItem(key); } catch { /* private mode */ } },
  };

  function el(tag, props, ...children) {
    const node = document.createElement(tag);
    Object.assign(node, props || {});
    node.append(...children);
    return node;
  }

  // ------------------------------------------------------------------ markdown
  // Blocks: fenced code, headings, rules, quotes, lists, tables, paragraphs. Inline: code,
  // bold, italic, strikethrough, http(s) links. Unclosed fences render (for streaming).
  // Model text is hostile input: quotes and lists nest at most MAX_DEPTH deep (deeper text
  // stays plain text), emphasis MAX_INLINE_DEPTH deep, and no pattern backtracks over a
  // long line, so that no reply can overflow the stack or freeze the page.
  const MAX_DEPTH = 16;
  const MAX_INLINE_DEPTH = 8;
  const FENCE = /^ {0,3}(`{3,}|~{3,})\s*([^\s`]*)/;
  const HEADING = /^ {0,3}(#{1,6})(?:\s(.*))?$/;
  const RULE = /^ {0,3}([-*_])(?:\s*\1){2,}\s*$/;
  const QUOTE = /^ {0,3}> ?/;
  const ITEM = /^( *)([-*+]|\d{1,9}[.)])\s+(.*)$/;
  const TABLE_SEP = /^\s*\|?\s*:?-+:?\s*(\|\s*:?-+:?\s*)*\|?\s*$/;
  const blank = (line) => /^\s*$/.test(line);
  const startsBlock = (line) => FENCE.test(line) || HEADING.test(line) || RULE.test(line) ||
    QUOTE.test(line) || ITEM.test(line);
  const cells = (line) => line.trim().replace(/^\|/, "").replace(/\|$/, "").split("|")
    .map((c) => c.trim());

  function renderMarkdown(text) {
    const frag = document.createDocumentFragment();
    renderBlocks(String(text).split(/\r?\n/), frag, 0);
    return frag;
  }

  function plainText(parent, text) {  // text as it is, its line breaks kept
    String(text).split(/\r?\n/).forEach((line, k) => {
      if (k) parent.append(el("br"));
      parent.append(line);
    });
    return parent;
  }

  function headingText(rest) {  // "# Title ##" -> "Title", without a backtracking pattern
    let s = (rest || "").trim();
    let k = s.length;
    while (k > 0 && s[k - 1] === "#") k--;
    if (k < s.length && (k === 0 || /\s/.test(s[k - 1]))) s = s.slice(0, k).trimEnd();
    return s;
  }

  function renderBlocks(lines, parent, depth) {
    if (depth >= MAX_DEPTH) {  // nested too deep: the rest is shown as plain text
      parent.append(plainText(el("p"), lines.join("\n")));
      return;
    }
    let i = 0;
    while (i < lines.length) {
      const line = lines[i];
      let m;
      if (blank(line)) { i++; continue; }
      if ((m = line.match(FENCE))) {
        const close = new RegExp("^ {0,3}" + m[1][0] + "{" + m[1].length + ",}\\s*$");
        const body = [];
        for (i++; i < lines.length && !close.test(lines[i]); i++) body.push(lines[i]);
        i++;
        parent.append(codeBlock(body.join("\n"), m[2]));
      } else if ((m = line.match(HEADING))) {
        parent.append(inline(el("h" + m[1].length), headingText(m[2])));
        i++;
      } else if (RULE.test(line)) {
        parent.append(el("hr"));
        i++;
      } else if (QUOTE.test(line)) {
        const body = [];
        for (; i < lines.length && QUOTE.test(lines[i]); i++) body.push(lines[i].replace(QUOTE, ""));
        const quote = el("blockquote");
        renderBlocks(body, quote, depth + 1);
        parent.append(quote);
      } else if ((m = line.match(ITEM))) {
        i = renderList(lines, i, m, parent, depth);
      } else if (line.includes("|") && i + 1 < lines.length && TABLE_SEP.test(lines[i + 1]) &&
                 lines[i + 1].includes("-")) {
        const head = cells(line);
        const table = el("table");
        const tr = el("tr");
        head.forEach((c) => tr.append(inline(el("th"), c)));
        table.append(el("thead", null, tr));
        const tbody = el("tbody");
        for (i += 2; i < lines.length && lines[i].includes("|") && !blank(lines[i]); i++) {
          const row = el("tr");
          cells(lines[i]).forEach((c) => row.append(inline(el("td"), c)));
          tbody.append(row);
        }
        table.append(tbody);
        parent.append(el("div", { className: "table" }, table));
      } else {
        const body = [line];
        for (i++; i < lines.length && !blank(lines[i]) && !startsBlock(lines[i]); i++) {
          body.push(lines[i]);
        }
        parent.append(inline(el("p"), body.join("\n")));
      }
    }
  }

  function renderList(lines, i, first, parent, depth) {
    const indent = first[1].length;
    const ordered = /\d/.test(first[2]);
    const list = el(ordered ? "ol" : "ul");
    if (ordered && parseInt(first[2], 10) !== 1) list.start = parseInt(first[2], 10);
    const items = [];
    const inner = new RegExp("^ {0," + (indent + 4) + "}");
    let loose = false;
    while (i < lines.length) {
      const line = lines[i];
      const m = line.match(ITEM);
      if (m && m[1].length === indent && /\d/.test(m[2]) === ordered) {
        items.push([m[3]]);
      } else if (blank(line)) {
        const next = (lines[i + 1] || "").match(ITEM);
        const sameList = next && next[1].length === indent && /\d/.test(next[2]) === ordered;
        if (!sameList && !/^\s+\S/.test(lines[i + 1] || "")) break;
        loose = true;
        items[items.length - 1].push("");
      } else if (line.length - line.trimStart().length > indent) {
        items[items.length - 1].push(line.replace(inner, ""));
      } else if (!startsBlock(line) && !blank(items[items.length - 1].at(-1))) {
        items[items.length - 1].push(line.trim());  // a lazy continuation line
      } else {
        break;
      }
      i++;
    }
    for (const body of items) {
      const li = el("li");
      renderBlocks(body, li, depth + 1);
      if (!loose && li.firstChild && li.firstChild.tagName === "P") {
        li.firstChild.replaceWith(...li.firstChild.childNodes);  // tight lists: no <p>
      }
      list.append(li);
    }
    parent.append(list);
    return i;
  }

  function codeBlock(code, lang) {
    const copy = el("button", { type: "button", className: "btn", textContent: "Copy" });
    copy.addEventListener("click", async () => {
      copy.textContent = (await copyText(code)) ? "Copied" : "Copy failed";
      setTimeout(() => { copy.textContent = "Copy"; }, 1500);
    });
    const head = el("div", { className: "code-head" }, el("span", { textContent: lang || "code" }), copy);
    return el("div", { className: "code" }, head, el("pre", null, el("code", { textContent: code })));
  }

  async function copyText(text) {
    try { await navigator.clipboard.writeText(text); return true; } catch { /* not secure */ }
    const area = el("textarea", { value: text });
    document.body.append(area);
    area.select();
    const ok = document.execCommand("copy");
    area.remove();
    return ok;
  }

  // Inline markup, in one pass over the text: at each position the first token that opens
  // there and has a closer wins (code span, **bold**, __bold__, ~~strike~~, *em*, _em_, a
  // link, an escaped character, a line break); anything else is text. Every closer is
  // looked up in a sorted list of the places it occurs (built once per paragraph), so an
  // opener without a closer costs a lookup, never a scan to the end of the text.
  const isSpace = (c) => c === undefined || /\s/.test(c);
  const isWord = (c) => c !== undefined && /\w/.test(c);
  const ESCAPABLE = "\\`*_{}[]()#+-.!~>|";

  function positions(text, test) {
    const out = [];
    for (let j = 0; j < text.length; j++) if (test(j)) out.push(j);
    return out;
  }

  function firstAtLeast(list, min) {  // binary search: the first entry >= min, or -1
    let lo = 0, hi = list.length;
    while (lo < hi) {
      const mid = (lo + hi) >> 1;
      if (list[mid] < min) lo = mid + 1; else hi = mid;
    }
    return lo < list.length ? list[lo] : -1;
  }

  function inlineIndex(t) {
    const at = (j, s) => t.startsWith(s, j);
    const runs = new Map();  // backtick run length -> where such runs start
    for (let j = 0; j < t.length; j++) {
      if (t[j] !== "`" || t[j - 1] === "`") continue;
      let n = 1;
      while (t[j + n] === "`") n++;
      if (!runs.has(n)) runs.set(n, []);
      runs.get(n).push(j);
    }
    return {
      runs,
      // closers: each with the conditions on its own surroundings
      "**": positions(t, (j) => at(j, "**") && !isSpace(t[j - 1])),
      "__": positions(t, (j) => at(j, "__") && !isSpace(t[j - 1]) && !isWord(t[j + 2])),
      "~~": positions(t, (j) => at(j, "~~") && !isSpace(t[j - 1])),
      "*": positions(t, (j) => t[j] === "*" && !isSpace(t[j - 1]) && t[j - 1] !== "*"),
      "_": positions(t, (j) => t[j] === "_" && !isSpace(t[j - 1]) && t[j - 1] !== "_" &&
                              !isWord(t[j + 1])),
      labelEnd: positions(t, (j) => t[j] === "]" || t[j] === "\n"),
      urlEnd: positions(t, (j) => t[j] === ")" || isSpace(t[j])),
    };
  }

  function inline(parent, text) {
    const t = String(text);
    inlineRange(parent, t, inlineIndex(t), 0, t.length, 0);
    return parent;
  }

  function inlineRange(parent, t, ix, from, to, depth) {
    if (depth >= MAX_INLINE_DEPTH) {  // emphasis nested too deep: plain text
      plainText(parent, t.slice(from, to));
      return parent;
    }
    const closer = (kind, min, len) => {
      const j = firstAtLeast(ix[kind], min);
      return j >= 0 && j + len <= to ? j : -1;
    };
    const wrap = (tag, a, b) => inlineRange(el(tag), t, ix, a, b, depth + 1);
    let text = from, i = from;
    const flush = (upTo) => { if (upTo > text) parent.append(t.slice(text, upTo)); };
    while (i < to) {
      const c = t[i];
      let node = null, next = i;
      if (c === "`" && t[i - 1] !== "`") {
        let n = 1;
        while (t[i + n] === "`") n++;
        const list = ix.runs.get(n) || [];
        const j = firstAtLeast(list, i + n + 1);
        if (j >= 0 && j + n <= to) {
          node = el("code", { textContent: t.slice(i + n, j) });
          next = j + n;
        } else {
          i += n;  // a run without its closer is text
          continue;
        }
      } else if (c === "*" || c === "~" || c === "_") {
        const pair = t[i + 1] === c;
        const before = c !== "_" || !isWord(t[i - 1]);
        if (pair) {
          const j = before && !isSpace(t[i + 2]) ? closer(c + c, i + 3, 2) : -1;
          if (j >= 0) {
            node = wrap(c === "~" ? "del" : "strong", i + 2, j);
            next = j + 2;
          }
        }
        if (!node && c !== "~" && before && !isSpace(t[i + 1]) && t[i + 1] !== c) {
          const j = closer(c, i + 2, 1);
          if (j >= 0) {
            node = wrap("em", i + 1, j);
            next = j + 1;
          }
        }
      } else if (c === "[") {
        const k = firstAtLeast(ix.labelEnd, i + 1);
        if (k > i + 1 && k < to && t[k] === "]" && t[k + 1] === "(") {
          const e = firstAtLeast(ix.urlEnd, k + 2);
          if (e > k + 2 && e < to && t[e] === ")") {
            node = link(t.slice(i + 1, k), t.slice(k + 2, e));
            next = e + 1;
          }
        }
      } else if (c === "\\" && i + 1 < to && ESCAPABLE.includes(t[i + 1])) {
        node = document.createTextNode(t[i + 1]);
        next = i + 2;
      } else if (c === "\n") {
        node = el("br");
        next = i + 1;
      }
      if (node) {
        flush(i);
        parent.append(node);
        text = i = next;
      } else {
        i++;
      }
    }
    flush(to);
    return parent;
  }

  function link(label, href) {
    if (!/^https?:\/\//i.test(href)) return label + " (" + href + ")";
    return inline(el("a", { href, target: "_blank", rel: "noopener noreferrer" }), label);
  }

  // ------------------------------------------------------------------ the API
  let keyPrompt = null;

  async function api(path, init = {}, { prompt = true } = {}) {
    for (;;) {
      const headers = new Headers(init.headers);
      if (init.body !== undefined) headers.set("Content-Type", "application/json");
      const key = store.get(KEYS.apiKey, "");
      if (key) headers.set("Authorization", "Bearer " + key);
      const res = await fetch(path, { ...init, headers });
      if (res.status !== 401 || !prompt || !(await askKey(Boolean(key)))) return res;
    }
  }

  function askKey(refused) {  // one dialog for every request that got a 401 meanwhile
    if (keyPrompt) return keyPrompt;
    keyPrompt = new Promise((resolve) => {
      const dialog = $("key-dialog"), form = $("key-form"), input = $("key-input");
      $("key-error").hidden = !refused;
      input.value = "";
      const done = (ok) => {
        form.removeEventListener("submit", onSubmit);
        dialog.removeEventListener("cancel", onCancel);
        $("key-cancel").removeEventListener("click", onCancel);
        if (dialog.open) dialog.close();
        keyPrompt = null;
        showKeyState();
        resolve(ok);
      };
      const onSubmit = (e) => {
        e.preventDefault();
        store.set(KEYS.apiKey, input.value.trim());
        done(true);
      };
      const onCancel = (e) => { e.preventDefault(); done(false); };
      form.addEventListener("submit", onSubmit);
      dialog.addEventListener("cancel", onCancel);
      $("key-cancel").addEventListener("click", onCancel);
      dialog.showModal();
      input.focus();
    });
    return keyPrompt;
  }

  function showKeyState() { $("forget-key").hidden = !store.get(KEYS.apiKey, ""); }

  async function errorMessage(res) {
    try { return (await res.json()).error.message; } catch { return `HTTP ${res.status}`; }
  }

  async function* events(res) {  // server-sent events: yields each event's data
    const reader = res.body.getReader();
    const decoder = new TextDecoder();
    let buf = "", data = [];
    for (;;) {
      const { value, done } = await reader.read();
      if (done) break;
      buf += decoder.decode(value, { stream: true });
      let nl;
      while ((nl = buf.search(/\r\n|\r|\n/)) >= 0) {
        if (nl === buf.length - 1 && buf[nl] === "\r") break;  // maybe half of \r\n
        const line = buf.slice(0, nl);
        buf = buf.slice(nl + (buf.startsWith("\r\n", nl) ? 2 : 1));
        if (line === "" && data.length) { yield data.join("\n"); data = []; }
        else if (line.startsWith("data:")) data.push(line.slice(5).replace(/^ /, ""));
      }
    }
    if (data.length) yield data.join("\n");
  }

  // ------------------------------------------------------------------ state
  // Stored conversations are read defensively: whatever is in localStorage (an older
  // page's, another tab's, a hand-edited one), each chat that has an id is kept and shown.
  function loadChats() {
    const raw = store.get(KEYS.chats, []);
    if (!Array.isArray(raw)) return [];
    return raw.filter((c) => c && typeof c === "object" && ["string", "number"].includes(typeof c.id))
      .map((c) => ({ ...c, messages: Array.isArray(c.messages) ? c.messages.filter(
        (m) => m && typeof m === "object") : [] }));
  }

  let chats = loadChats();
  let current = store.get(KEYS.current, null);
  let settings = (() => {
    const saved = store.get(KEYS.settings, {});
    const text = (v) => (typeof v === "string" || typeof v === "number" ? String(v) : "");
    const s = saved && typeof saved === "object" ? saved : {};
    return { system: text(s.system), temperature: text(s.temperature), maxTokens: text(s.maxTokens),
             think: s.think !== false, model: text(s.model) };
  })();
  let controller = null;  // the AbortController of the reply being streamed

  const chat = () => chats.find((c) => c.id === current) || null;
  const saveChats = () => { store.set(KEYS.chats, chats); store.set(KEYS.current, current); };

  // ------------------------------------------------------------------ view
  function renderSidebar() {
    const list = $("chat-list");
    list.replaceChildren(...[...chats].sort((a, b) => (b.updated || 0) - (a.updated || 0)).map((c) => {
      const title = String(c.title || "New chat");
      const b = el("button", { type: "button", textContent: title, title });
      if (c.id === current) b.setAttribute("aria-current", "true");
      b.addEventListener("click", () => { if (!controller) { select(c.id); closeDrawer(); } });
      return el("li", null, b);
    }));
    $("export-chat").disabled = $("delete-chat").disabled = !chat();
  }

  function renderChat() {
    const box = $("messages");
    const c = chat();
    box.replaceChildren($("empty"));
    $("empty").hidden = Boolean(c && c.messages.length);
    if (c) {
      let views;
      try {
        views = c.messages.map((m) => messageView(m));
      } catch (e) {  // this chat cannot be rendered: show its text as it is; others are fine
        console.error("ggrun: chat", c.id, "is shown as plain text:", e);
        views = c.messages.map((m) => messageView(m, true));
      }
      box.append(...views);
    }
    box.scrollTop = box.scrollHeight;
  }

  function messageView(m, plain = false) {
    const body = el("div", { className: "body" });
    const view = el("div", { className: "msg " + (m.role === "user" ? "user" : "assistant") }, body);
    if (m.role === "user") {
      body.textContent = String(m.content ?? "");
    } else if (plain) {
      body.append(plainText(el("p"), m.content ?? ""));
      if (m.error) body.append(el("p", { className: "error-text", textContent: String(m.error) }));
    } else {
      paint(view, m);
    }
    return view;
  }

  function markdownOrText(text) {  // a reply the renderer chokes on still shows, as text
    try {
      return renderMarkdown(text);
    } catch (e) {
      console.error("ggrun: a reply is shown as plain text:", e);
      return plainText(el("p"), text);
    }
  }

  function paint(view, m, streaming = false) {
    const body = view.querySelector(".body");
    if (m.reasoning) {
      let details = view.querySelector("details");
      if (!details) {
        details = el("details", { className: "reasoning", open: streaming && !m.content },
                     el("summary"), el("div", { className: "text" }));
        view.prepend(details);
      }
      if (streaming && m.content && details.dataset.closed !== "1") {
        details.open = false;  // the answer started: fold the thinking away once
        details.dataset.closed = "1";
      }
      details.querySelector("summary").textContent =
        streaming && !m.content ? "Thinking…" : "Reasoning";
      details.querySelector(".text").textContent = m.reasoning;
    }
    body.replaceChildren(markdownOrText(m.content ?? ""));
    if (m.error) body.append(el("p", { className: "error-text", textContent: m.error }));
    let stats = view.querySelector(".stats");
    if (m.stats && !stats) view.append((stats = el("div", { className: "stats" })));
    if (stats) stats.textContent = statsLine(m.stats);
  }

  function statsLine(s) {
    const parts = [];
    if (s.completion !== undefined) parts.push(`${s.approx ? "≈" : ""}${s.completion} tokens`);
    if (s.completion > 1 && s.seconds > 0) {
      parts.push(`${((s.completion - 1) / s.seconds).toFixed(1)} tok/s`);
    }
    if (s.ttft !== undefined) parts.push(`first token ${s.ttft.toFixed(2)} s`);
    if (s.prompt !== undefined) parts.push(`prompt ${s.prompt} tokens`);
    if (s.finish && s.finish !== "stop") parts.push(s.finish);
    return parts.join(" · ");
  }

  function select(id) {
    current = id;
    store.set(KEYS.current, current);
    renderSidebar();
    renderChat();
  }

  function nearBottom(box) { return box.scrollHeight - box.scrollTop - box.clientHeight < 80; }

  // ------------------------------------------------------------------ sending
  async function send() {
    const input = $("input");
    const text = input.value.trim();
    if (!text || controller) return;
    let c = chat();
    if (!c) {
      c = { id: Date.now().toString(36) + Math.random().toString(36).slice(2, 6),
            title: "", created: Date.now(), updated: Date.now(), messages: [] };
      chats.push(c);
      current = c.id;
    }
    if (!c.title) c.title = text.replace(/\s+/g, " ").slice(0, 60);
    c.messages.push({ role: "user", content: text });
    input.value = "";
    autosize();
    const reply = { role: "assistant", content: "", reasoning: "", model: $("model").value };
    const history = c.messages.filter((m) => !m.error).map((m) => ({ role: m.role, content: m.content }));
    c.messages.push(reply);
    c.updated = Date.now();
    saveChats();
    renderSidebar();
    renderChat();
    const view = $("messages").lastElementChild;
    await stream(c, history, reply, view);
  }

  async function stream(c, history, reply, view) {
    const box = $("messages");
    const body = { messages: history, stream: true, stream_options: { include_usage: true },
                   chat_template_kwargs: { enable_thinking: $("think").checked } };
    if ($("model").value) body.model = $("model").value;
    if (settings.system.trim()) body.messages.unshift({ role: "system", content: settings.system });
    if (settings.temperature !== "") body.temperature = Number(settings.temperature);
    if (settings.maxTokens !== "") body.max_tokens = parseInt(settings.maxTokens, 10);

    controller = new AbortController();
    setBusy(true, view);
    const t0 = performance.now();
    let first = null, last = null, chunks = 0, usage = null, finish = null, frame = 0;
    const repaint = () => {
      frame = 0;
      const stick = nearBottom(box);
      try { paint(view, reply, true); } catch (e) { console.error("ggrun: repaint:", e); }
      if (stick) box.scrollTop = box.scrollHeight;
    };
    try {
      const res = await api("/v1/chat/completions",
                            { method: "POST", body: JSON.stringify(body), signal: controller.signal });
      if (!res.ok) throw new Error(await errorMessage(res));
      for await (const data of events(res)) {
        if (data === "[DONE]") break;
        const ev = JSON.parse(data);
        if (ev.error) throw new Error(ev.error.message);
        const choice = (ev.choices || [])[0] || {};
        const delta = choice.delta || {};
        if (delta.content || delta.reasoning_content) {
          last = performance.now();
          if (first === null) first = last;
          chunks++;
          reply.content += delta.content || "";
          reply.reasoning += delta.reasoning_content || "";
          if (!frame) frame = requestAnimationFrame(repaint);
        }
        if (choice.finish_reason) finish = choice.finish_reason;
        if (ev.usage) usage = ev.usage;
      }
    } catch (e) {
      if (e.name === "AbortError") finish = "stopped";
      else reply.error = e.message || String(e);
    } finally {
      if (frame) cancelAnimationFrame(frame);
      controller = null;
      try {  // whatever happens here, the page leaves its busy state below
        reply.stats = { completion: usage ? usage.completion_tokens : chunks, approx: !usage,
                        prompt: usage ? usage.prompt_tokens : undefined, finish: finish || undefined,
                        seconds: first !== null ? (last - first) / 1000 : 0,
                        ttft: first !== null ? (first - t0) / 1000 : undefined };
        if (!reply.reasoning) delete reply.reasoning;
        c.updated = Date.now();
        saveChats();
        paint(view, reply);
      } catch (e) {
        console.error("ggrun: finishing a reply:", e);
        view.querySelector(".body").textContent = reply.content;
      } finally {
        setBusy(false, view);
        pollMetrics();
      }
    }
  }

  function setBusy(busy, view) {
    view.setAttribute("aria-busy", String(busy));
    $("send").hidden = busy;
    $("stop").hidden = !busy;
    $("new-chat").disabled = $("delete-chat").disabled = busy;
    if (!busy) $("input").focus();
  }

  function stop() { if (controller) controller.abort(); }

  // ------------------------------------------------------------------ models, metrics
  async function loadModels() {
    const picker = $("model");
    try {
      const res = await api("/v1/models");
      if (!res.ok) throw new Error(await errorMessage(res));
      const ids = (await res.json()).data.map((m) => m.id);
      picker.replaceChildren(...ids.map((id) => el("option", { value: id, textContent: id })));
      if (ids.includes(settings.model)) picker.value = settings.model;
    } catch (e) {
      picker.replaceChildren(el("option", { value: "", textContent: "no model: " + e.message }));
    }
  }

  let metricsTimer = 0;
  async function pollMetrics() {
    clearTimeout(metricsTimer);
    const slots = $("slots");
    try {
      const res = await api("/metrics", {}, { prompt: false });
      if (!res.ok) throw new Error(String(res.status));
      const text = await res.text();
      const read = (name) => (text.match(new RegExp("^" + name + " (\\d+)", "m")) || [])[1];
      const active = read("ggrun_requests_active"), total = read("ggrun_slots");
      const queued = read("ggrun_queue_length");
      slots.textContent = `${active}/${total} slots busy` + (queued > 0 ? ` · ${queued} queued` : "");
    } catch {
      slots.textContent = "";
    }
    if (!document.hidden) metricsTimer = setTimeout(pollMetrics, 4000);
  }

  // ------------------------------------------------------------------ controls
  function autosize() {
    const input = $("input");
    input.style.height = "auto";
    input.style.height = input.scrollHeight + 2 + "px";
  }

  function saveSettings() {
    settings = { system: $("system").value, temperature: $("temperature").value,
                 maxTokens: $("max-tokens").value, think: $("think").checked,
                 model: $("model").value };
    store.set(KEYS.settings, settings);
  }

  function openDrawer() {
    $("app").classList.add("drawer-open");
    $("backdrop").hidden = false;
    $("menu").setAttribute("aria-expanded", "true");
    $("new-chat").focus();
  }

  function closeDrawer() {
    if (!$("app").classList.contains("drawer-open")) return;
    $("app").classList.remove("drawer-open");
    $("backdrop").hidden = true;
    $("menu").setAttribute("aria-expanded", "false");
  }

  function exportChat() {
    const c = chat();
    if (!c) return;
    const blob = new Blob([JSON.stringify(c, null, 2)], { type: "application/json" });
    const created = new Date(c.created);  // a stored chat may hold anything here
    const day = (isNaN(created) ? new Date() : created).toISOString().slice(0, 10);
    const a = el("a", { href: URL.createObjectURL(blob), download: `ggrun-chat-${day}.json` });
    document.body.append(a);
    a.click();
    a.remove();
    setTimeout(() => URL.revokeObjectURL(a.href), 1000);
  }

  function deleteChat() {
    const c = chat();
    if (!c || controller || !confirm(`Delete "${c.title}"?`)) return;
    chats = chats.filter((x) => x !== c);
    current = null;
    saveChats();
    renderSidebar();
    renderChat();
    $("input").focus();
  }

  function bind() {
    const input = $("input");
    $("composer").addEventListener("submit", (e) => { e.preventDefault(); send(); });
    input.addEventListener("keydown", (e) => {
      if (e.key === "Enter" && !e.shiftKey && !e.isComposing) { e.preventDefault(); send(); }
      else if (e.key === "Escape" && controller) stop();
    });
    input.addEventListener("input", autosize);
    $("stop").addEventListener("click", stop);
    $("new-chat").addEventListener("click", () => { select(null); closeDrawer(); input.focus(); });
    $("export-chat").addEventListener("click", exportChat);
    $("delete-chat").addEventListener("click", deleteChat);
    $("menu").addEventListener("click", () =>
      $("app").classList.contains("drawer-open") ? closeDrawer() : openDrawer());
    $("backdrop").addEventListener("click", closeDrawer);
    document.addEventListener("keydown", (e) => {
      if (e.key === "Escape" && $("app").classList.contains("drawer-open")) {
        closeDrawer();
        $("menu").focus();
      }
    });
    $("settings-btn").addEventListener("click", () => {
      const panel = $("settings");
      panel.hidden = !panel.hidden;
      $("settings-btn").setAttribute("aria-expanded", String(!panel.hidden));
      if (!panel.hidden) $("system").focus();
    });
    for (const id of ["system", "temperature", "max-tokens", "think", "model"]) {
      $(id).addEventListener("input", saveSettings);
      $(id).addEventListener("change", saveSettings);
    }
    $("forget-key").addEventListener("click", () => { store.remove(KEYS.apiKey); showKeyState(); });
    document.addEventListener("visibilitychange", () => { if (!document.hidden) pollMetrics(); });
    window.addEventListener("storage", (e) => {  // another tab changed the conversations
      if (e.key === KEYS.chats && !controller) {
        chats = loadChats();
        safely(renderSidebar, renderChat);
      }
    });
  }

  function safely(...steps) {  // one step that throws does not stop the others
    for (const step of steps) {
      try { step(); } catch (e) { console.error("ggrun:", step.name, e); }
    }
  }

  function init() {
    safely(() => {
      $("system").value = settings.system;
      $("temperature").value = settings.temperature;
      $("max-tokens").value = settings.maxTokens;
      $("think").checked = settings.think;
    });
    if (!chat()) current = null;
    bind();
    safely(showKeyState, renderSidebar, renderChat);
    loadModels().then(pollMetrics);
    $("input").focus();
  }

  window.ggrun = Object.freeze({ renderMarkdown });
  init();
})();
