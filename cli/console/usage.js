// Usage: the caller's model tokens of a UTC day (today by default, live every 5 s), by model, against the
// daily token budget when the deployment sets one (GET /usage).

import { h, fill, errorBox, span } from "./dom.js";
import { get, query } from "./api.js";

const EVERY_MS = 5000;
const fmt = (n) => Number(n).toLocaleString("en-US");

export function usageView(main, params) {
  const day = params.get("day") || "";
  const picker = h("input", { id: "usage-day", type: "date", value: day, "aria-label": "UTC day" });
  const cards = h("div", { class: "cards", "aria-live": "polite" });
  const table = h("div");
  main.append(h("h1", null, "Usage"),
    h("form", { class: "toolbar", onsubmit: (e) => e.preventDefault() }, h("label", null, "Day (UTC)", picker),
      h("span", { class: "hint" }, "Model tokens of your agent jobs; kept 35 days.")),
    cards, h("h2", null, "By model"), table);
  picker.addEventListener("change", () => { location.hash = `#/usage${query({ day: picker.value })}`; });

  let stopped = false;
  let timer = null;
  async function refresh() {
    try {
      const u = await get(`/usage${query({ day })}`);
      if (stopped) return;
      if (!picker.value) picker.value = u.day;
      fill(cards, summary(u));
      fill(table, models(u));
    } catch (e) {
      if (!stopped) fill(cards, errorBox(e));
    }
    // Today's usage moves; a past day's does not.
    if (!stopped && !day) timer = setTimeout(refresh, EVERY_MS);
  }
  refresh();
  return () => { stopped = true; clearTimeout(timer); };
}

function card(id, label, value, hint) {
  return h("section", { class: "panel card", id, "aria-label": label }, h("div", { class: "hint" }, label), h("div", { class: "big" }, value), hint ? h("div", { class: "hint" }, hint) : null);
}

function summary(u) {
  return [
    card("usage-total", `Tokens on ${u.day}`, fmt(u.total_tokens), "input and output, every model"),
    card("usage-limit", "Daily budget", u.limit === null ? "none" : fmt(u.limit), u.limit === null ? "no limit is set" : "tokens a user may spend a UTC day"),
    card("usage-remaining", "Remaining", u.remaining === null ? "—" : fmt(u.remaining), h("span", null, "resets at midnight UTC, ", h("time", { datetime: u.resets_at, title: u.resets_at }, `in ${span(Date.parse(u.resets_at) - Date.now())}`))),
  ];
}

function models(u) {
  const rows = Object.entries(u.models);
  if (rows.length === 0) return h("p", { class: "muted", id: "usage-empty" }, "No model calls that day.");
  return h("div", { class: "scroll" }, h("table", { "aria-label": "Tokens by model", id: "usage-models" },
    h("thead", null, h("tr", null, h("th", null, "Model"), h("th", { class: "num" }, "Input"), h("th", { class: "num" }, "Output"), h("th", { class: "num" }, "Total"), h("th", { class: "num" }, "Requests"))),
    h("tbody", null, rows.map(([model, m]) => h("tr", { "data-model": model },
      h("td", { class: "mono" }, model), h("td", { class: "num" }, fmt(m.input_tokens)), h("td", { class: "num" }, fmt(m.output_tokens)),
      h("td", { class: "num" }, fmt(m.input_tokens + m.output_tokens)), h("td", { class: "num" }, fmt(m.requests)))))));
}
