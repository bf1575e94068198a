// The jobs list: newest first, filtered by status and kind (by the API), searched by id (on the page),
// and live: the first page is read again every 2 s, rows update in place and new ones slide in on top.

import { h, fill, badge, progressBar, setBar, age, duration, jobHref, STATUSES, errorBox } from "./dom.js";
import { get, query, kinds } from "./api.js";

const EVERY_MS = 2000;
const PAGE = 50;

export function jobsView(main, params) {
  const state = { status: params.get("status") || "", kind: params.get("kind") || "", search: "", more: [], cursor: null, first: [], rows: new Map(), seen: new Set() };
  const statusSel = h("select", { id: "status", "aria-label": "Status" }, h("option", { value: "" }, "any status"), STATUSES.map((s) => h("option", { value: s }, s.replace("_", " "))));
  statusSel.value = state.status;
  const kindSel = h("select", { id: "kind", "aria-label": "Kind" }, h("option", { value: "" }, "any kind"));
  const search = h("input", { id: "search", type: "search", placeholder: "job id  ( / )", "aria-label": "Search by job id", autocomplete: "off", spellcheck: "false" });
  const err = h("div");
  const tbody = h("tbody");
  const empty = h("p", { class: "muted", hidden: true }, "No jobs yet. ", h("a", { href: "#/submit" }, "Submit one"), ".");
  const moreBtn = h("button", { type: "button", hidden: true, onclick: () => loadMore() }, "Load more");
  const live = document.getElementById("live");

  main.append(
    h("h1", null, "Jobs"),
    h("form", { class: "toolbar", role: "search", onsubmit: (e) => { e.preventDefault(); openExact(); } },
      h("label", null, "Status", statusSel), h("label", null, "Kind", kindSel), h("label", null, "Job id", search),
      h("a", { href: "#/submit", class: "hide-narrow" }, "Submit a job (n)")),
    err,
    h("div", { class: "scroll" }, h("table", { "aria-label": "Jobs" },
      h("thead", null, h("tr", null, h("th", null, "Job"), h("th", null, "Kind"), h("th", null, "Status"), h("th", { class: "num hide-narrow" }, "Attempts"), h("th", { class: "num" }, "Age"), h("th", { class: "num hide-narrow" }, "Duration"), h("th", { class: "hide-narrow" }, "Progress"))),
      tbody)),
    empty, moreBtn);

  kinds().then((list) => {
    for (const k of list) kindSel.append(h("option", { value: k.kind }, k.kind));
    kindSel.value = state.kind;
  }).catch(() => {});

  const filterChanged = () => {
    state.status = statusSel.value;
    state.kind = kindSel.value;
    const q = query({ status: state.status, kind: state.kind });
    history.replaceState(null, "", `#/${q}`);
    state.more = [];
    state.cursor = null;
    refresh();
  };
  statusSel.addEventListener("change", filterChanged);
  kindSel.addEventListener("change", filterChanged);
  search.addEventListener("input", () => { state.search = search.value.trim().toUpperCase(); render(); });

  // A full id (26 characters) opens that job even when it is not on the loaded pages.
  function openExact() {
    const id = search.value.trim().toUpperCase();
    if (/^[0-9A-HJKMNP-TV-Z]{26}$/.test(id)) location.hash = jobHref(id);
  }

  let stopped = false;
  async function refresh() {
    try {
      const filters = { status: state.status, kind: state.kind };
      const page = await get(`/jobs${query({ ...filters, limit: PAGE })}`);
      // An answer that came after the page moved on, or for filters changed since it was asked.
      if (stopped || filters.status !== state.status || filters.kind !== state.kind) return;
      state.first = page.jobs;
      if (state.more.length === 0) state.cursor = page.next_cursor;
      fill(err);
      live.textContent = `live · ${new Date().toLocaleTimeString()}`;
      live.classList.remove("stale");
      render();
    } catch (e) {
      if (stopped) return;
      fill(err, errorBox(e));
      live.textContent = "not updating";
      live.classList.add("stale");
    }
  }

  async function loadMore() {
    if (!state.cursor) return;
    try {
      const filters = { status: state.status, kind: state.kind };
      const page = await get(`/jobs${query({ ...filters, limit: PAGE, cursor: state.cursor })}`);
      if (filters.status !== state.status || filters.kind !== state.kind) return;
      state.more.push(...page.jobs);
      state.cursor = page.next_cursor;
      render();
    } catch (e) {
      fill(err, errorBox(e));
    }
  }

  function render() {
    const byId = new Map();
    for (const j of [...state.first, ...state.more]) if (!byId.has(j.job_id)) byId.set(j.job_id, j);
    const jobs = [...byId.values()]
      .filter((j) => !state.search || j.job_id.includes(state.search))
      .sort((a, b) => (a.submitted_at < b.submitted_at ? 1 : a.submitted_at > b.submitted_at ? -1 : a.job_id < b.job_id ? 1 : -1));
    const keep = new Set(jobs.map((j) => j.job_id));
    for (const [id, row] of state.rows) if (!keep.has(id)) { row.tr.remove(); state.rows.delete(id); }
    jobs.forEach((job, i) => {
      let row = state.rows.get(job.job_id);
      if (!row) {
        row = makeRow(job.job_id);
        state.rows.set(job.job_id, row);
        if (state.seen.size > 0 && !state.seen.has(job.job_id)) row.tr.classList.add("fresh");
      }
      state.seen.add(job.job_id);
      update(row, job);
      // Only rows out of place move (a moved element loses focus; a row being read stays put).
      if (tbody.children[i] !== row.tr) tbody.insertBefore(row.tr, tbody.children[i] ?? null);
    });
    empty.hidden = jobs.length > 0;
    moreBtn.hidden = !state.cursor;
  }

  const timer = setInterval(() => { if (!document.hidden) refresh(); }, EVERY_MS);
  const ticker = setInterval(() => { for (const [, row] of state.rows) tick(row); }, 1000);
  refresh();
  return () => { stopped = true; clearInterval(timer); clearInterval(ticker); live.textContent = ""; };
}

function makeRow(id) {
  const link = h("a", { href: jobHref(id), class: "mono job-link" }, id);
  const cells = { kind: h("td"), status: h("td"), attempts: h("td", { class: "num hide-narrow" }), age: h("td", { class: "num" }), duration: h("td", { class: "num hide-narrow" }), progress: h("td", { class: "hide-narrow" }) };
  const tr = h("tr", { "data-job": id }, h("td", null, link), cells.kind, cells.status, cells.attempts, cells.age, cells.duration, cells.progress);
  return { tr, link, cells, job: null, bar: null };
}

function update(row, job) {
  const prev = row.job;
  row.job = job;
  const c = row.cells;
  if (prev && prev.status !== job.status) row.tr.classList.remove("fresh"), void row.tr.offsetWidth, row.tr.classList.add("fresh");
  c.kind.textContent = job.kind;
  if (!prev || prev.status !== job.status || prev.cancel_requested !== job.cancel_requested) {
    fill(c.status, badge(job.status), job.cancel_requested && job.status === "running" ? h("span", { class: "hint" }, " cancelling") : null);
  }
  c.attempts.textContent = `${job.attempts}/${job.max_attempts}`;
  if (job.status === "running") {
    if (!row.bar) { row.bar = progressBar(job.progress); fill(c.progress, row.bar); }
    setBar(row.bar, job.progress);
  } else if (row.bar || !prev) {
    row.bar = null;
    fill(c.progress, job.progress && job.status !== "completed" ? h("span", { class: "hint" }, `${job.progress.percent}%`) : "");
  }
  tick(row);
}

function tick(row) {
  row.cells.age.textContent = age(row.job.submitted_at);
  row.cells.duration.textContent = row.job.status === "queued" || row.job.status === "waiting" && !row.job.started_at ? "—" : duration(row.job);
}

// j / k move between rows, Enter opens (the link has focus).
document.addEventListener("keydown", (e) => {
  if (e.key !== "j" && e.key !== "k") return;
  if (e.target.closest("input, textarea, select, dialog") || e.ctrlKey || e.metaKey || e.altKey) return;
  const links = [...document.querySelectorAll("a.job-link")];
  if (links.length === 0) return;
  const at = links.indexOf(document.activeElement);
  const next = at < 0 ? 0 : Math.max(0, Math.min(links.length - 1, at + (e.key === "j" ? 1 : -1)));
  links[next].focus();
  e.preventDefault();
});
