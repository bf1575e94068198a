// The console's router: #/ (jobs), #/jobs/ID (a job), #/submit, #/usage, #/ops. Each view renders into <main>
// and returns a function that stops its timers and streams when the page moves on.

import { h, fill, errorBox } from "./dom.js";
import { jobsView } from "./jobs.js";
import { jobView } from "./job.js";
import { submitView } from "./submit.js";
import { opsView } from "./ops.js";
import { usageView } from "./usage.js";

const main = document.getElementById("main");
let leave = null;

function route() {
  const hash = location.hash.replace(/^#/, "") || "/";
  const [path, search] = hash.split("?");
  const params = new URLSearchParams(search || "");
  const parts = path.split("/").filter(Boolean);
  if (parts.length === 0) return ["jobs", () => jobsView(main, params)];
  if (parts[0] === "jobs" && parts[1]) return ["jobs", () => jobView(main, decodeURIComponent(parts[1]))];
  if (parts[0] === "submit") return ["submit", () => submitView(main, params)];
  if (parts[0] === "ops") return ["ops", () => opsView(main)];
  if (parts[0] === "usage") return ["usage", () => usageView(main, params)];
  return [null, () => { fill(main, h("h1", null, "Not found"), h("p", null, h("a", { href: "#/" }, "Back to the jobs"))); return null; }];
}

function show() {
  if (leave) leave();
  leave = null;
  const [section, render] = route();
  for (const a of document.querySelectorAll("[data-nav]")) {
    if (a.dataset.nav === section) a.setAttribute("aria-current", "page");
    else a.removeAttribute("aria-current");
  }
  fill(main);
  try {
    leave = render();
  } catch (e) {
    fill(main, errorBox(e));
  }
  // Keyboard users land on the new view's heading, as after a page load.
  const heading = main.querySelector("h1");
  if (heading && document.activeElement?.closest?.("main") === null) {
    heading.setAttribute("tabindex", "-1");
    heading.focus({ preventScroll: true });
  }
}

// "/" focuses the search box, as in most consoles; "n" opens the submit form.
document.addEventListener("keydown", (e) => {
  if (e.target.closest("input, textarea, select, dialog") || e.ctrlKey || e.metaKey || e.altKey) return;
  if (e.key === "/") {
    const search = document.getElementById("search");
    if (search) { e.preventDefault(); search.focus(); }
  } else if (e.key === "n") {
    location.hash = "#/submit";
  }
});

window.addEventListener("hashchange", show);
show();
