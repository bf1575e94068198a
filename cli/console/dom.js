// Building the page. Everything from a job (input, result, error, kind, messages) enters the document as
// text: elements are made with createElement and filled with text nodes, never with innerHTML.

// h("a", {href, class}, child, …): an element; children are nodes or text (null and false skipped).
export function h(tag, attrs, ...children) {
  const el = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs || {})) {
    if (v === undefined || v === null || v === false) continue;
    if (k.startsWith("on")) el.addEventListener(k.slice(2), v);
    else if (k === "class") el.className = v;
    else el.setAttribute(k, v === true ? "" : String(v));
  }
  for (const c of children.flat(Infinity)) {
    if (c === null || c === undefined || c === false) continue;
    el.append(c instanceof Node ? c : String(c));
  }
  return el;
}

export const TERMINAL = new Set(["completed", "failed", "cancelled", "dead_letter"]);
export const STATUSES = ["queued", "running", "retrying", "waiting", "completed", "failed", "cancelled", "dead_letter"];

export function jobHref(id) {
  return `#/jobs/${encodeURIComponent(id)}`;
}

export function badge(status) {
  return h("span", { class: `badge s-${STATUSES.includes(status) ? status : "queued"}` }, String(status).replace("_", " "));
}

export function bar(progress, wide) {
  const pct = Math.max(0, Math.min(100, Number(progress?.percent) || 0));
  return h("span", { class: wide ? "bar wide" : "bar", role: "progressbar", "aria-valuemin": 0, "aria-valuemax": 100, "aria-valuenow": pct, "aria-label": `progress ${pct}%`, title: progress?.message ? `${pct}% ${progress.message}` : `${pct}%` },
    h("span", { style: null, "data-pct": pct }));
}

// The CSP forbids inline style attributes set from markup, but not the CSSOM: widths are set here.
export function setBar(el, progress) {
  const pct = Math.max(0, Math.min(100, Number(progress?.percent) || 0));
  el.setAttribute("aria-valuenow", pct);
  el.setAttribute("aria-label", `progress ${pct}%`);
  el.title = progress?.message ? `${pct}% ${progress.message}` : `${pct}%`;
  el.firstChild.style.width = `${pct}%`;
}

export function progressBar(progress, wide) {
  const el = bar(progress, wide);
  setBar(el, progress);
  return el;
}

const ms = (t) => (t ? Date.parse(t) : NaN);

// 3 s, 4 min, 2 h 5 min, 3 d.
export function span(millis) {
  if (!Number.isFinite(millis) || millis < 0) return "—";
  if (millis < 1000) return `${Math.round(millis)} ms`;
  const s = Math.round(millis / 1000);
  if (s < 60) return `${s} s`;
  const m = Math.floor(s / 60);
  if (m < 60) return `${m} min${s % 60 && m < 10 ? ` ${s % 60} s` : ""}`;
  const hr = Math.floor(m / 60);
  if (hr < 48) return `${hr} h${m % 60 ? ` ${m % 60} min` : ""}`;
  return `${Math.floor(hr / 24)} d`;
}

export function age(t) {
  return `${span(Date.now() - ms(t))} ago`;
}

// How long it ran: started (or submitted) to finished, or to now while it runs.
export function duration(job) {
  const start = ms(job.started_at) || ms(job.submitted_at);
  const end = job.finished_at ? ms(job.finished_at) : TERMINAL.has(job.status) ? ms(job.updated_at) : Date.now();
  return span(end - start);
}

export function when(t) {
  if (!t) return "—";
  const d = new Date(t);
  return h("time", { datetime: t, title: t }, `${d.toLocaleString()} (${age(t)})`);
}

// A JSON value as a folded tree: objects and arrays are <details>, open to `open` levels deep.
export function jsonTree(value, open = 2) {
  return h("div", { class: "json mono" }, node(value, open, null));
}

function node(value, open, key) {
  const label = key === null ? null : h("span", { class: "k" }, `${JSON.stringify(key)}: `);
  if (value !== null && typeof value === "object") {
    const entries = Array.isArray(value) ? value.map((v, i) => [i, v]) : Object.entries(value);
    const [l, r] = Array.isArray(value) ? ["[", "]"] : ["{", "}"];
    if (entries.length === 0) return h("div", null, label, `${l}${r}`);
    const summary = Array.isArray(value) ? `${l} ${entries.length} item${entries.length === 1 ? "" : "s"} ${r}` : `${l} ${entries.map(([k]) => k).slice(0, 4).join(", ")}${entries.length > 4 ? ", …" : ""} ${r}`;
    return h("details", { open: open > 0 },
      h("summary", null, label, summary),
      entries.map(([k, v]) => node(v, open - 1, Array.isArray(value) ? null : k)));
  }
  const cls = typeof value === "string" ? "str" : "lit";
  return h("div", null, label, h("span", { class: cls }, JSON.stringify(value)));
}

// An error box with the API's code and message (what every failed action shows).
export function errorBox(err) {
  const code = err?.code ? `${err.code}: ` : "";
  return h("div", { class: "error", role: "alert" }, `${code}${err?.message ?? String(err)}`);
}

export function facts(rows) {
  return h("dl", { class: "facts" }, rows.filter(Boolean).map(([k, v]) => [h("dt", null, k), h("dd", null, v)]));
}

// el.replaceChildren(…) that skips null and false (which the DOM would write as "null").
export function fill(el, ...children) {
  el.replaceChildren(...children.flat(Infinity).filter((c) => c !== null && c !== undefined && c !== false).map((c) => (c instanceof Node ? c : String(c))));
  return el;
}
