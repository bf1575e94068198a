// Operators: the queues (depth, age of the oldest message), throughput and failures over the last hour,
// and the dead-letter queue with its last errors, redrive and purge. Served by `jobctl dev` and by
// `jobctl console` with AWS credentials; elsewhere the API's 503 says what is needed.

import { h, fill, errorBox, jobHref, span, when } from "./dom.js";
import { call, get } from "./api.js";

const EVERY_MS = 5000;

export function opsView(main) {
  const queuesBox = h("div");
  const chartBox = h("div", { class: "panel" });
  const dlqBox = h("div");
  const actionErr = h("div", { "aria-live": "polite" });
  const dialog = h("dialog", { id: "confirm" });
  main.append(h("h1", null, "Operators"), h("h2", null, "Queues"), queuesBox,
    h("h2", null, "Last hour"), chartBox,
    h("h2", null, "Dead letters"), actionErr, dlqBox, dialog);

  async function refresh() {
    await Promise.all([
      get("/ops/queues").then((q) => fill(queuesBox, queues(q)), (e) => fill(queuesBox, unavailable(e))),
      get("/ops/throughput?minutes=60").then((t) => fill(chartBox, chart(t)), (e) => fill(chartBox, unavailable(e))),
      get("/ops/dlq?limit=50").then((d) => fill(dlqBox, dlq(d)), (e) => fill(dlqBox, unavailable(e))),
    ]);
  }

  // Asks before an action that cannot be undone (or moves many jobs); resolves true when confirmed.
  function confirm(text, verb) {
    return new Promise((resolve) => {
      const yes = h("button", { type: "button", class: "danger", id: "confirm-yes" }, verb);
      const no = h("button", { type: "button", id: "confirm-no" }, "Keep them");
      fill(dialog, h("p", null, text), h("div", { class: "actions" }, no, yes));
      const done = (v) => { dialog.close(); resolve(v); };
      yes.addEventListener("click", () => done(true));
      no.addEventListener("click", () => done(false));
      dialog.addEventListener("cancel", () => resolve(false), { once: true });
      dialog.showModal();
      no.focus();
    });
  }

  async function act(button, fn) {
    fill(actionErr);
    button.disabled = true;
    try {
      const out = await fn();
      if (out) fill(actionErr, h("p", { class: "muted", role: "status" }, out));
      await refresh();
    } catch (e) {
      fill(actionErr, errorBox(e));
    } finally {
      button.disabled = false;
    }
  }

  function dlq(d) {
    const msgs = d.messages;
    const redriveAll = h("button", { type: "button", id: "redrive-all", disabled: msgs.length === 0 }, "Redrive all");
    redriveAll.addEventListener("click", async () => {
      if (await confirm("Send every dead-lettered message back to the jobs queue (their jobs become queued again)?", "Redrive all")) act(redriveAll, () => redrive({}));
    });
    const purge = h("button", { type: "button", class: "danger", id: "purge", disabled: msgs.length === 0 }, "Purge");
    purge.addEventListener("click", async () => {
      if (await confirm("Delete every message in the dead-letter queue? Job records are kept; this cannot be undone.", "Purge")) act(purge, async () => summary(await call("POST", "/ops/dlq/purge", {})));
    });
    const rows = msgs.map((m) => {
      const id = m.job_id;
      const btn = h("button", { type: "button", class: "redrive", "data-job": id }, "Redrive");
      btn.addEventListener("click", async () => {
        if (await confirm(`Send job ${id} back to the jobs queue?`, "Redrive")) act(btn, () => redrive({ job_ids: [id] }));
      });
      const err = m.error;
      return h("tr", { "data-job": id },
        h("td", null, id ? h("a", { href: jobHref(id), class: "mono" }, id) : "—"),
        h("td", null, m.kind ?? "—"),
        h("td", { class: "hide-narrow" }, m.user_id ?? "—"),
        h("td", { class: "num hide-narrow" }, m.attempts ?? "—"),
        h("td", null, err ? `${err.code ? `${err.code}: ` : ""}${err.message ?? ""}` : "—"),
        h("td", { class: "hide-narrow" }, m.dead_at ? when(m.dead_at) : "—"),
        h("td", null, id ? btn : null));
    });
    return h("div", null,
      h("div", { class: "actions" }, redriveAll, purge),
      msgs.length === 0 ? h("p", { class: "muted" }, "The dead-letter queue is empty.") :
        h("table", { "aria-label": "Dead letters" },
          h("thead", null, h("tr", null, ["Job", "Kind", "User", "Attempts", "Last error", "Dead since", ""].map((t, i) => h("th", { class: i === 3 ? "num hide-narrow" : i === 2 || i === 5 ? "hide-narrow" : null }, t)))),
          h("tbody", null, rows)));
  }

  async function redrive(body) {
    return summary(await call("POST", "/ops/dlq/redrive", body));
  }

  refresh();
  const timer = setInterval(() => { if (!document.hidden && !dialog.open) refresh(); }, EVERY_MS);
  return () => clearInterval(timer);
}

function summary(out) {
  if (!out || typeof out !== "object") return "Done.";
  return Object.entries(out).filter(([, v]) => typeof v !== "object").map(([k, v]) => `${k.replace(/_/g, " ")}: ${v}`).join(" · ") || "Done.";
}

function unavailable(e) {
  if (e.code === "operator_unavailable" || e.status === 404) {
    return h("div", { class: "note", role: "status" }, h("strong", null, "Not available here. "),
      e.code === "operator_unavailable" ? e.message : "This server has no operator endpoints: use jobctl dev, or jobctl console with AWS credentials and the stack's env.");
  }
  return errorBox(e);
}

// Each queue as a card: messages waiting, in flight, and the age of the oldest.
function queues(q) {
  const list = q.queues;
  return h("div", { class: "cards" }, list.map((x) => h("div", { class: "panel card", "data-queue": x.name },
    h("div", { class: "muted" }, x.name),
    h("div", { class: "big" }, String(x.depth)),
    h("div", { class: "hint" }, `waiting · ${x.in_flight} in flight${x.delayed ? ` · ${x.delayed} delayed` : ""}`),
    h("div", { class: "hint" }, `oldest: ${x.oldest_age_seconds !== undefined && x.oldest_age_seconds !== null ? span(x.oldest_age_seconds * 1000) : "—"}`))));
}

// Completed and failed jobs per minute as stacked bars (SVG made with createElementNS: no markup strings).
function chart(t) {
  const points = t.minutes;
  const NS = "http://www.w3.org/2000/svg";
  const W = 600, H = 120;
  const max = Math.max(1, ...points.map((p) => (p.completed ?? 0) + (p.failed ?? 0)));
  const svg = document.createElementNS(NS, "svg");
  svg.setAttribute("viewBox", `0 0 ${W} ${H}`);
  svg.setAttribute("preserveAspectRatio", "none");
  svg.setAttribute("class", "chart");
  svg.setAttribute("role", "img");
  const total = points.reduce((a, p) => [a[0] + (p.completed ?? 0), a[1] + (p.failed ?? 0)], [0, 0]);
  svg.setAttribute("aria-label", `last ${points.length} minutes: ${total[0]} completed, ${total[1]} failed`);
  const w = W / Math.max(1, points.length);
  points.forEach((p, i) => {
    const ok = ((p.completed ?? 0) / max) * (H - 4);
    const bad = ((p.failed ?? 0) / max) * (H - 4);
    for (const [cls, height, y] of [["ok", ok, H - ok], ["bad", bad, H - ok - bad]]) {
      if (height <= 0) continue;
      const r = document.createElementNS(NS, "rect");
      r.setAttribute("x", i * w + 1);
      r.setAttribute("width", Math.max(1, w - 2));
      r.setAttribute("y", y);
      r.setAttribute("height", height);
      r.setAttribute("class", cls);
      const title = document.createElementNS(NS, "title");
      title.textContent = `${new Date(p.at).toLocaleTimeString()}: ${p.completed ?? 0} completed, ${p.failed ?? 0} failed`;
      r.append(title);
      svg.append(r);
    }
  });
  return h("div", null, svg,
    h("div", { class: "axis hint", "aria-hidden": "true" }, h("span", null, `${points.length} min ago`), h("span", null, "now")),
    h("p", { class: "hint" }, h("span", { class: "key-ok" }, "■"), ` ${total[0]} completed  `, h("span", { class: "key-bad" }, "■"), ` ${total[1]} failed in the last ${points.length} minutes`));
}
