// ctxfold view: the page. Everything from a trace is put on the page as text (textContent and
// text nodes, never innerHTML), so model-written code and output are shown, never run.
"use strict";

const state = { target: null, file: "", lastJson: "", open: new Set(), cache: new Map(), timer: 0 };

// -- helpers ---------------------------------------------------------------------------------

function el(tag, attrs, ...children) {
  const node = document.createElement(tag);
  for (const [key, value] of Object.entries(attrs || {})) {
    if (value === null || value === undefined || value === false) continue;
    if (key.startsWith("on")) node.addEventListener(key.slice(2), value);
    else node.setAttribute(key, value === true ? "" : String(value));
  }
  for (const child of children.flat()) {
    if (child === null || child === undefined || child === false) continue;
    node.append(child instanceof Node ? child : document.createTextNode(String(child)));
  }
  return node;
}

async function api(path, params) {
  const query = new URLSearchParams(params || {});
  if (state.file && !query.has("file")) query.set("file", state.file);
  const response = await fetch(`/api/${path}?${query}`);
  const body = await response.json();
  if (!response.ok) throw new Error(body.error || `HTTP ${response.status}`);
  return body;
}

const fmt = {
  int: (n) => (n === null || n === undefined ? "–" : Number(n).toLocaleString("en-US")),
  s: (n) => (n === null || n === undefined ? "–" : `${Number(n).toFixed(n < 10 ? 2 : 1)} s`),
  usd: (n) => (n ? `$${Number(n).toFixed(4)}` : "$0"),
};

function folded(text, limit = 1500, cls = "") {
  text = text || "";
  if (text.length <= limit) return el("pre", { class: cls }, text);
  const pre = el("pre", { class: cls }, text.slice(0, limit));
  const more = el("button", {
    onclick: () => { pre.textContent = text; more.remove(); },
  }, `show all (${fmt.int(text.length)} characters)`);
  return el("div", {}, pre, more);
}

const KEYWORDS = new Set(("False None True and as assert async await break class continue def " +
  "del elif else except finally for from global if import in is lambda nonlocal not or pass " +
  "raise return try while with yield").split(" "));
const NAMES = new Set(["llm_query", "llm_batch", "rlm_query", "rlm_batch", "cite", "FINAL",
  "FINAL_VAR", "print", "len", "range", "answer", "context"]);
const TOKEN = /(#[^\n]*)|("""[\s\S]*?"""|'''[\s\S]*?'''|"(?:\\.|[^"\\\n])*"|'(?:\\.|[^'\\\n])*')|(\b\d+(?:\.\d+)?\b)|([A-Za-z_][A-Za-z0-9_]*)/g;

function highlighted(code) {
  const pre = el("pre", { class: "code" });
  let at = 0;
  for (const m of (code || "").matchAll(TOKEN)) {
    if (m.index > at) pre.append(code.slice(at, m.index));
    let cls = "";
    if (m[1]) cls = "com";
    else if (m[2]) cls = "str";
    else if (m[3]) cls = "numtok";
    else if (KEYWORDS.has(m[4])) cls = "kw";
    else if (NAMES.has(m[4])) cls = "fn";
    pre.append(cls ? el("span", { class: cls }, m[0]) : m[0]);
    at = m.index + m[0].length;
  }
  pre.append(code.slice(at));
  return pre;
}

function tokensOf(usage) {
  if (!usage) return null;
  return ["root", "sub"].reduce((sum, part) =>
    sum + (usage[part]?.input_tokens || 0) + (usage[part]?.output_tokens || 0), 0);
}

// -- routing ---------------------------------------------------------------------------------

async function start() {
  try {
    state.target = await api("target");
  } catch (error) {
    return show(el("p", { class: "bad" }, `The viewer cannot start: ${error.message}`));
  }
  window.addEventListener("hashchange", route);
  route();
}

function route() {
  clearTimeout(state.timer);
  state.lastJson = "";
  state.open.clear();
  const params = new URLSearchParams(location.hash.slice(1));
  state.file = params.get("file") || "";
  document.getElementById("where").textContent =
    state.file ? `${state.target.name} / ${state.file}` : state.target.name;
  if (state.target.kind === "trace" || state.file) refreshTrace();
  else showFolder();
}

function show(...nodes) {
  const main = document.getElementById("main");
  main.replaceChildren(...nodes);
}

// -- a folder --------------------------------------------------------------------------------

async function showFolder() {
  let folder;
  try {
    folder = await api("folder");
  } catch (error) {
    return show(el("p", { class: "bad" }, error.message));
  }
  const parts = [];
  if (folder.bench) {
    parts.push(el("h2", {}, `Bench results (${folder.bench.length} runs)`));
    parts.push(el("table", { id: "bench" },
      el("tr", {}, ["task", "instance", "method", "score", "tokens", "cost", "time", "run"]
        .map((h) => el("th", { class: ["score", "tokens", "cost", "time"].includes(h) ? "num" : "" }, h))),
      folder.bench.map((row) => el("tr", {},
        el("td", {}, row.task), el("td", {}, row.instance), el("td", {}, row.method),
        el("td", { class: "num" }, row.error ? el("span", { class: "bad", title: row.error }, "error") : row.score),
        el("td", { class: "num" }, fmt.int(row.tokens)), el("td", { class: "num" }, fmt.usd(row.cost_usd)),
        el("td", { class: "num" }, fmt.s(row.wall_s)),
        el("td", {}, row.trace ? el("a", { href: `#file=${encodeURIComponent(row.trace)}` }, "open") : "–")))));
  }
  if (folder.plots.length) {
    parts.push(el("h2", {}, "Plots"));
    parts.push(el("div", {}, folder.plots.map((name) =>
      el("img", { class: "plot", src: `/files/${encodeURIComponent(name)}`, alt: name }))));
  }
  parts.push(el("h2", {}, `Traces (${folder.traces.length})`));
  parts.push(folder.traces.length ? el("table", { id: "traces" },
    el("tr", {}, ["file", "question", "model", "stop", "tokens", "cost", "time"].map((h) => el("th", {}, h))),
    folder.traces.map((t) => el("tr", {},
      el("td", {}, el("a", { href: `#file=${encodeURIComponent(t.file)}` }, t.file)),
      t.problem ? el("td", { class: "bad", colspan: 6 }, t.problem) : [
        el("td", {}, t.question + (t.runs > 1 ? ` (+${t.runs - 1} more)` : "")),
        el("td", {}, t.model), el("td", {}, t.stop_reason || "running"),
        el("td", { class: "num" }, fmt.int(t.tokens)), el("td", { class: "num" }, fmt.usd(t.cost_usd)),
        el("td", { class: "num" }, fmt.s(t.seconds))]))) : el("p", { class: "muted" }, "No trace files here."));
  show(...parts);
}

// -- a trace ---------------------------------------------------------------------------------

async function refreshTrace() {
  let summary;
  try {
    summary = await api("trace");
  } catch (error) {
    show(el("p", { class: "bad", id: "problem" }, error.message));
    state.timer = setTimeout(refreshTrace, 2000);
    return;
  }
  const text = JSON.stringify(summary);
  const live = !summary.runs.length || summary.runs.some((r) => !r.ended);
  document.getElementById("live").hidden = !live;
  if (text !== state.lastJson) {
    state.lastJson = text;
    const y = window.scrollY;
    show(...renderTrace(summary));
    window.scrollTo(0, y);
  }
  if (live) state.timer = setTimeout(refreshTrace, 1000);
}

function renderTrace(summary) {
  if (!summary.runs.length) return [el("p", { class: "muted" }, "Waiting for the run to start…")];
  const nodes = [];
  if (summary.bad_lines) nodes.push(el("p", { class: "bad" }, `${summary.bad_lines} line(s) of this file are not trace events and were skipped.`));
  for (const run of summary.runs) nodes.push(el("section", { class: "run", "data-run": run.index }, renderRun(run, summary.runs.length)));
  return nodes;
}

function renderRun(run, count) {
  const used = tokensOf(run.usage);
  const budget = run.budget || {};
  const parts = [
    count > 1 ? el("h2", {}, `Question ${run.index + 1} of ${count}`) : null,
    el("div", { class: "card" },
      el("div", { class: "question" }, run.question),
      el("div", { class: "facts" },
        el("span", {}, "model ", el("b", {}, run.model), run.sub_model !== run.model ? [" · sub ", el("b", {}, run.sub_model)] : null),
        el("span", {}, "input ", el("b", {}, run.contexts.join("; ") || "none")))),
    run.prompt_messages ? renderPrompt(run) : null,
    el("h2", {}, "Answer"),
    el("div", { class: "card", id: `answer-${run.index}` },
      run.ended ? el("div", { class: "answer" }, run.answer || "(no answer)") : el("div", { class: "muted" }, "Running…"),
      el("div", { class: "facts" },
        el("span", {}, "stop ", el("b", { class: run.ready ? "ok" : "bad" }, run.ended ? `${run.stop_reason}${run.ready ? "" : " (not final)"}` : "running")),
        el("span", {}, "turns ", el("b", {}, `${run.turns.length}${budget.iterations ? ` / ${budget.iterations}` : ""}`)),
        el("span", {}, "tokens ", el("b", {}, `${fmt.int(used)}${budget.tokens ? ` / ${fmt.int(budget.tokens)}` : ""}`)),
        el("span", {}, "sub-calls ", el("b", {}, fmt.int(run.subcall_count))),
        el("span", {}, "cost ", el("b", {}, fmt.usd(run.usage?.cost_usd))),
        el("span", {}, "time ", el("b", {}, fmt.s(run.seconds))))),
  ];
  if (run.citations.length) {
    parts.push(el("h2", {}, `Citations (${run.citations.length})`));
    for (const c of run.citations) {
      parts.push(el("div", { class: "card citation" }, el("div", {}, el("b", {}, c.where)),
        el("div", { class: "cite" }, c.before ? `…${c.before}` : "", el("mark", {}, c.quote), c.after ? `${c.after}…` : "")));
    }
  }
  parts.push(el("h2", {}, "Recursion tree"), renderTree(run));
  parts.push(el("h2", {}, "Timeline"), renderTimeline(run));
  parts.push(el("h2", {}, `Turns (${run.turns.length})`));
  parts.push(el("div", { class: "turns" }, run.turns.map((t) => renderTurn(run, t))));
  parts.push(el("h2", {}, `Sub-calls (${fmt.int(run.subcall_count)})`));
  parts.push(renderSubcalls(run));
  return parts;
}

function renderPrompt(run) {
  const key = `prompt:${run.index}`;
  const body = el("div", { class: "body" }, el("p", { class: "muted" }, "Loading…"));
  const details = el("details", { class: "prompt", "data-key": key },
    el("summary", {}, `What the root model was told first (${run.prompt_messages} messages)`), body);
  const fill = async () => {
    try {
      const { messages } = await api("prompt", { run: run.index });
      body.replaceChildren(...messages.map((m) => el("div", { class: "note" }, el("b", {}, m.role), folded(m.content, 2000))));
    } catch (error) {
      body.replaceChildren(el("p", { class: "bad" }, error.message));
    }
  };
  details.addEventListener("toggle", () => {
    if (details.open) { state.open.add(key); fill(); } else state.open.delete(key);
  });
  if (state.open.has(key)) { details.open = true; fill(); }
  return details;
}

function renderTree(run) {
  return el("table", { class: "tree" },
    el("tr", {}, el("th", {}, "node"), el("th", { class: "num" }, "depth"), el("th", { class: "num" }, "tokens"),
      el("th", { class: "num" }, "cost"), el("th", { class: "num" }, "wall time")),
    run.tree.map((node) => el("tr", {},
      el("td", {}, node.depth ? `${"  ".repeat(node.depth)}└ ${node.label}` : node.label),
      el("td", { class: "num" }, node.depth), el("td", { class: "num" }, fmt.int(node.tokens)),
      el("td", { class: "num" }, node.cost_usd === null ? "–" : fmt.usd(node.cost_usd)),
      el("td", { class: "num" }, fmt.s(node.seconds)))));
}

function renderTimeline(run) {
  const rows = run.timeline;
  const end = Math.max(run.seconds || 0, ...rows.map((r) => r[2] ?? r[1]), 0.001);
  const turns = run.turns.filter((t) => t.t !== undefined);
  const lanes = [];
  let inFlight = 0, most = 0;
  const edges = [];
  for (const r of rows) { edges.push([r[1], 1], [r[2] ?? end, -1]); }
  edges.sort((a, b) => a[0] - b[0] || a[1] - b[1]);
  for (const [, d] of edges) { inFlight += d; most = Math.max(most, inFlight); }
  const placed = rows.slice().sort((a, b) => a[1] - b[1]).map((r) => {
    let lane = lanes.findIndex((free) => free <= r[1]);
    if (lane < 0) { lane = lanes.length; lanes.push(0); }
    lanes[lane] = r[2] ?? end;
    return [r, lane];
  });
  const shown = Math.min(lanes.length, 80);
  const canvas = el("canvas", { id: `timeline-${run.index}`, height: 28 + shown * 5 + 10, width: 1200 });
  const ctx = canvas.getContext("2d");
  const x = (t) => 8 + (t / end) * (canvas.width - 16);
  ctx.fillStyle = "#2458c6";
  for (const t of turns) ctx.fillRect(x(t.t), 6, Math.max(2, x(t.t + t.latency_s) - x(t.t)), 12);
  for (const [r, lane] of placed) {
    if (lane >= shown) continue;
    ctx.fillStyle = r[5] ? "#b3261e" : r[4] === "rlm" ? "#8a2be2" : "#1e7a3c";
    ctx.fillRect(x(r[1]), 28 + lane * 5, Math.max(1, x(r[2] ?? end) - x(r[1])), 4);
  }
  return el("div", {}, canvas, el("div", { class: "facts" },
    el("span", {}, "blue: root turns · green: sub-calls · purple: child RLMs · red: failed"),
    el("span", {}, "at most ", el("b", {}, most), " sub-calls in flight at once"),
    el("span", {}, "span ", el("b", {}, fmt.s(end)))));
}

function renderTurn(run, turn) {
  const key = `turn:${run.index}:${turn.turn}`;
  const body = el("div", { class: "body" }, el("p", { class: "muted" }, "Loading…"));
  const details = el("details", { "data-key": key, class: "turn" },
    el("summary", {}, `Turn ${turn.turn}`,
      el("span", { class: "tag" }, `${fmt.int(turn.input_tokens)} in / ${fmt.int(turn.output_tokens)} out`),
      el("span", { class: "tag" }, fmt.s(turn.latency_s)),
      turn.errors ? el("span", { class: "tag bad" }, `${turn.errors} error(s)`) : null,
      turn.guards.length ? el("span", { class: "tag bad" }, "guard") : null,
      el("span", { class: "muted" }, " ", turn.preview.split("\n")[0].slice(0, 100))),
    body);
  details.addEventListener("toggle", () => {
    if (details.open) { state.open.add(key); fillTurn(run, turn, body); } else state.open.delete(key);
  });
  if (state.open.has(key)) { details.open = true; fillTurn(run, turn, body); }
  return details;
}

async function fillTurn(run, turn, body) {
  let detail;
  try {
    detail = await api("turn", { run: run.index, turn: turn.turn });
  } catch (error) {
    return body.replaceChildren(el("p", { class: "bad" }, error.message));
  }
  const parts = [el("h3", {}, "The root model's reply"), folded(detail.reply)];
  detail.cells.forEach((cell, i) => {
    parts.push(el("h3", {}, `Cell ${i + 1}`, el("span", { class: "tag" }, fmt.s(cell.duration_s)),
      cell.timed_out ? el("span", { class: "tag bad" }, "timed out") : null));
    parts.push(highlighted(cell.code));
    if (cell.stdout) parts.push(el("h3", {}, "Output"), folded(cell.stdout));
    if (cell.stderr) parts.push(el("h3", {}, "Stderr"), folded(cell.stderr, 1500, "err"));
    if (cell.error) parts.push(el("h3", { class: "bad" }, "Error"), folded(cell.error, 1500, "err"));
  });
  for (const note of detail.notes) {
    parts.push(el("div", { class: `note ${note.kind}` }, el("b", {}, note.kind), folded(note.text, 800)));
  }
  body.replaceChildren(...parts);
}

function renderSubcalls(run) {
  const table = el("table", { class: "subcalls" },
    el("tr", {}, ["#", "kind", "model", "depth", "tokens in / out", "latency", "prompt", "reply"]
      .map((h) => el("th", {}, h))));
  const more = el("button", {}, "show more");
  let offset = 0;
  const load = async () => {
    more.disabled = true;
    let rows;
    try {
      ({ rows } = await api("subcalls", { run: run.index, offset, limit: 100 }));
    } catch (error) {
      return table.after(el("p", { class: "bad" }, error.message));
    }
    offset += rows.length;
    for (const row of rows) table.append(...subcallRow(run, row));
    more.disabled = false;
    more.hidden = offset >= run.subcall_count;
  };
  more.addEventListener("click", load);
  more.hidden = true;
  if (run.subcall_count) load();
  return el("div", {}, table, more);
}

function subcallRow(run, row) {
  const detail = el("tr", { hidden: true }, el("td", { colspan: 8 }));
  const line = el("tr", { class: "clickable", "data-id": row.id, onclick: async () => {
    detail.hidden = !detail.hidden;
    if (detail.hidden || detail.dataset.loaded) return;
    detail.dataset.loaded = "1";
    try {
      const call = await api("subcall", { run: run.index, id: row.id });
      const prompt = call.prompt_chars > call.prompt_preview.length
        ? `${call.prompt_preview}… (${fmt.int(call.prompt_chars)} characters; the trace keeps the first ${call.prompt_preview.length})`
        : call.prompt_preview;
      detail.firstChild.replaceChildren(el("h3", {}, "Prompt"), folded(prompt), el("h3", {}, "Reply"),
        folded(call.response || "", 2000), call.error ? folded(call.error, 800, "err") : "",
        (call.tools || []).map((t) => el("div", { class: "note" }, el("b", {}, `tool ${t.tool}`), folded(JSON.stringify(t.arguments)), folded(t.result || t.error || "", 800))));
    } catch (error) {
      detail.firstChild.replaceChildren(el("p", { class: "bad" }, error.message));
    }
  } },
  el("td", {}, row.id), el("td", {}, row.kind), el("td", {}, row.model), el("td", {}, row.depth),
  el("td", {}, `${fmt.int(row.input_tokens)} / ${fmt.int(row.output_tokens)}`), el("td", {}, fmt.s(row.latency_s)),
  el("td", {}, row.prompt_preview.slice(0, 80)),
  el("td", { class: row.error ? "bad" : "" }, row.error ? row.error.slice(0, 80) : row.response_preview.slice(0, 80)));
  return [line, detail];
}

start();
