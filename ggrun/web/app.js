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
  const FENCE = /^ {0,3}(`{3,}|~{3,})\s*([^\s`]*)/;
  const HEADING = /^ {0,3}(#{1,6})\s+(.*?)(?:\s+#+)?\s*$/;
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
    renderBlocks(String(text).split(/\r?\n/), frag);
    return frag;
  }

  function renderBlocks(lines, parent) {
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
        parent.append(inline(el("h" + m[1].length), m[2]));
        i++;
      } else if (RULE.test(line)) {
        parent.append(el("hr"));
        i++;
      } else if (QUOTE.test(line)) {
        const body = [];
        for (; i < lines.length && QUOTE.test(lines[i]); i++) body.push(lines[i].replace(QUOTE, ""));
        const quote = el("blockquote");
        renderBlocks(body, quote);
        parent.append(quote);
      } else if ((m = line.match(ITEM))) {
        i = renderList(lines, i, m, parent);
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

  function renderList(lines, i, first, parent) {
    const indent = first[1].length;
    const ordered = /\d/.test(first[2]);
    const list = el(ordered ? "ol" : "ul");
    if (ordered && parseInt(first[2], 10) !== 1) list.start = parseInt(first[2], 10);
    const items = [];
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
        items[items.length - 1].push(line.replace(new RegExp("^ {0," + (indent + 4) + "}"), ""));
      } else if (!startsBlock(line) && !blank(items[items.length - 1].at(-1))) {
        items[items.length - 1].push(line.trim());  // a lazy continuation line
      } else {
        break;
      }
      i++;
    }
    for (const body of items) {
      const li = el("li");
      renderBlocks(body, li);
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

  // One regex finds the next inline token; text between tokens stays text.
  const INLINE = new RegExp([
    "(`+)([^`]|[^`][\\s\\S]*?[^`])\\1(?!`)",       // 1,2 code span
    "\\*\\*(?=\\S)([\\s\\S]*?\\S)\\*\\*",           // 3 bold
    "(^|[^\\w])__(?=\\S)([\\s\\S]*?\\S)__(?!\\w)",  // 4,5 bold
    "~~(?=\\S)([\\s\\S]*?\\S)~~",                   // 6 strikethrough
    "\\*(?=[^\\s*])([\\s\\S]*?[^\\s*])\\*",         // 7 italic
    "(^|[^\\w])_(?=[^\\s_])([\\s\\S]*?[^\\s_])_(?!\\w)",  // 8,9 italic
    "\\[([^\\]\\n]+)\\]\\(([^)\\s]+)\\)",           // 10,11 link
    "\\\\([\\\\`*_{}\\[\\]()#+\\-.!~>|])",          // 12 escaped character
    "(\\n)",                                        // 13 line break
  ].join("|"), "g");

  function inline(parent, text) {
    const re = new RegExp(INLINE.source, "g");
    let at = 0, m;
    while ((m = re.exec(text))) {
      let start = m.index;
      if (m[4] !== undefined || m[8] !== undefined) {  // the prefix character is plain text
        start += (m[4] ?? m[8]).length;
      }
      if (start > at) parent.append(text.slice(at, start));
      if (m[2] !== undefined) parent.append(el("code", { textContent: m[2] }));
      else if (m[3] !== undefined) parent.append(inline(el("strong"), m[3]));
      else if (m[5] !== undefined) parent.append(inline(el("strong"), m[5]));
      else if (m[6] !== undefined) parent.append(inline(el("del"), m[6]));
      else if (m[7] !== undefined) parent.append(inline(el("em"), m[7]));
      else if (m[9] !== undefined) parent.append(inline(el("em"), m[9]));
      else if (m[10] !== undefined) parent.append(link(m[10], m[11]));
      else if (m[12] !== undefined) parent.append(m[12]);
      else if (m[13] !== undefined) parent.append(el("br"));
      at = re.lastIndex;
    }
    if (at < text.length) parent.append(text.slice(at));
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
  let chats = store.get(KEYS.chats, []);
  let current = store.get(KEYS.current, null);
  let settings = { system: "", temperature: "", maxTokens: "", think: true, model: "",
                   ...store.get(KEYS.settings, {}) };
  let controller = null;  // the AbortController of the reply being streamed

  const chat = () => chats.find((c) => c.id === current) || null;
  const saveChats = () => { store.set(KEYS.chats, chats); store.set(KEYS.current, current); };

  // ------------------------------------------------------------------ view
  function renderSidebar() {
    const list = $("chat-list");
    list.replaceChildren(...[...chats].sort((a, b) => b.updated - a.updated).map((c) => {
      const b = el("button", { type: "button", textContent: c.title || "New chat", title: c.title });
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
    if (c) for (const m of c.messages) box.append(messageView(m));
    box.scrollTop = box.scrollHeight;
  }

  function messageView(m) {
    const body = el("div", { className: "body" });
    const view = el("div", { className: "msg " + m.role }, body);
    if (m.role === "user") body.textContent = m.content;
    else paint(view, m);
    return view;
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
    body.replaceChildren(renderMarkdown(m.content));
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
      paint(view, reply, true);
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
      reply.stats = { completion: usage ? usage.completion_tokens : chunks, approx: !usage,
                      prompt: usage ? usage.prompt_tokens : undefined, finish: finish || undefined,
                      seconds: first !== null ? (last - first) / 1000 : 0,
                      ttft: first !== null ? (first - t0) / 1000 : undefined };
      if (!reply.reasoning) delete reply.reasoning;
      c.updated = Date.now();
      saveChats();
      paint(view, reply);
      setBusy(false, view);
      pollMetrics();
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
    const a = el("a", { href: URL.createObjectURL(blob),
                        download: `ggrun-chat-${new Date(c.created).toISOString().slice(0, 10)}.json` });
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
        chats = store.get(KEYS.chats, []);
        renderSidebar();
        renderChat();
      }
    });
  }

  function init() {
    $("system").value = settings.system;
    $("temperature").value = settings.temperature;
    $("max-tokens").value = settings.maxTokens;
    $("think").checked = settings.think;
    if (!chat()) current = null;
    bind();
    showKeyState();
    renderSidebar();
    renderChat();
    loadModels().then(pollMetrics);
    $("input").focus();
  }

  window.ggrun = Object.freeze({ renderMarkdown });
  init();
})();
