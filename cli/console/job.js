// One job: status and times, input / result / error as folded JSON, the timeline of its recorded steps
// (durable steps, waitpoints, model turns and tool calls), webhook deliveries, its pathway, and the
// actions (cancel, run again, complete a waitpoint). Live over the job's own event stream.

import { h, fill, badge, progressBar, setBar, when, duration, span, jsonTree, errorBox, facts, jobHref, TERMINAL } from "./dom.js";
import { call, get, query, streamPath } from "./api.js";

export function jobView(main, id) {
  let job = null;
  let source = null;
  let closed = false;
  let stepsTimer = null;
  const title = h("h1", { tabindex: -1 }, h("span", { class: "mono" }, id));
  const headRest = h("div");
  const head = h("div", null, title, headRest);
  const actionErr = h("div", { "aria-live": "polite" });
  const body = h("div");
  const stepsBox = h("div", null, h("p", { class: "muted" }, "Loading…"));
  main.append(h("p", null, h("a", { href: "#/" }, "← Jobs")), head, actionErr, body, h("h2", null, "Timeline"), stepsBox);

  async function load() {
    try {
      job = await get(`/jobs/${encodeURIComponent(id)}`);
    } catch (e) {
      fill(headRest, errorBox(e));
      return;
    }
    render();
    loadSteps();
    follow();
  }

  function render() {
    const running = job.status === "running";
    // What has focus is found again by its id after the re-render (a keyboard user stays put).
    const focused = main.contains(document.activeElement) ? document.activeElement.id : "";
    fill(title, h("span", { class: "mono" }, job.job_id), " ", badge(job.status));
    fill(headRest,
      h("p", { class: "muted" }, h("strong", null, job.kind), ` · attempt ${job.attempts} of ${job.max_attempts} · ${TERMINAL.has(job.status) ? "took" : "for"} ${duration(job)}`,
        job.cancel_requested ? " · cancel requested" : ""),
      running || (job.progress && job.status !== "completed") ? h("p", { class: "progress-line" }, progressBar(job.progress, true), " ", h("span", { id: "progress-text" }, progressText(job.progress))) : null,
      actions(),
      job.waiting_for ? waiting(job.waiting_for) : null);
    fill(body, 
      h("div", { class: "grid2" },
        h("section", { class: "panel", "aria-label": "Times" }, facts([
          ["Submitted", when(job.submitted_at)],
          ["Started", when(job.started_at)],
          job.finished_at && ["Finished", when(job.finished_at)],
          ["Updated", when(job.updated_at)],
          job.parent_id && ["Parent", h("a", { href: jobHref(job.parent_id), class: "mono" }, job.parent_id)],
          job.pathway && ["Next stage", job.pathway],
          job.next && ["Children", h("span", null, job.next.map((c, i) => [i ? ", " : "", h("a", { href: jobHref(c), class: "mono" }, c)]))],
          job.callback_url && ["Callback", h("span", { class: "mono" }, job.callback_url)],
          tokens(job) && ["Tokens", tokens(job)],
        ])),
        job.webhook ? h("section", { class: "panel", "aria-label": "Webhook" }, h("strong", null, "Webhook"), facts([
          ["Delivery", h("span", { class: `badge ${job.webhook.status === "delivered" ? "s-completed" : job.webhook.status === "failed" ? "s-failed" : "s-queued"}` }, job.webhook.status)],
          ["Attempts", String(job.webhook.attempts)],
          job.webhook.last_status && ["Last status", String(job.webhook.last_status)],
          job.webhook.last_error && ["Last error", job.webhook.last_error],
          job.webhook.delivered_at && ["Delivered", when(job.webhook.delivered_at)],
          job.webhook.next_attempt_at && ["Next attempt", when(job.webhook.next_attempt_at)],
          ["Event id", h("span", { class: "mono" }, job.webhook.id)],
        ])) : null),
      job.error ? [h("h2", null, "Error"), h("div", { class: "panel" }, jsonTree(job.error, 3))] : null,
      h("h2", null, "Input"), h("div", { class: "panel", id: "input" }, jsonTree(job.input)),
      "result" in job ? [h("h2", null, "Result"), h("div", { class: "panel", id: "result" }, jsonTree(job.result))] : null,
      job.warnings ? [h("h2", null, "Warnings"), h("div", { class: "panel" }, jsonTree(job.warnings))] : null);
    if (focused && !main.contains(document.activeElement)) {
      const again = document.getElementById(focused);
      (again && !again.disabled ? again : title).focus();
    }
  }

  function actions() {
    const cancel = h("button", { type: "button", class: "danger", id: "cancel", disabled: TERMINAL.has(job.status) || job.cancel_requested }, job.cancel_requested ? "Cancel requested" : "Cancel");
    cancel.addEventListener("click", () => act(cancel, async () => {
      job = await call("DELETE", `/jobs/${encodeURIComponent(job.job_id)}`);
      render();
    }));
    const again = h("button", { type: "button", id: "again" }, "Run again");
    again.addEventListener("click", () => act(again, async () => {
      const accepted = await call("POST", "/jobs", { kind: job.kind, input: job.input }, { "idempotency-key": crypto.randomUUID() });
      location.hash = jobHref(accepted.job_id);
    }));
    return h("div", { class: "actions" }, cancel, again);
  }

  // A delayed start (run_at, delay_seconds) is a timer, not something to approve.
  function waiting(wp) {
    if (wp.name === "start" && job.attempts === 0) return h("p", { class: "note" }, "Starts ", when(wp.expires_at));
    return waitpointForm(wp);
  }

  function waitpointForm(wp) {
    const reason = h("input", { id: "reason", type: "text", placeholder: "reason (sent with a rejection)", "aria-label": "Reason" });
    const complete = (payload) => async () => {
      job = await call("POST", `/jobs/${encodeURIComponent(job.job_id)}/waitpoints/${encodeURIComponent(wp.name)}`, payload);
      render();
    };
    const approve = h("button", { type: "button", class: "primary", id: "approve" }, "Approve");
    approve.addEventListener("click", () => act(approve, complete({ approve: true })));
    const reject = h("button", { type: "button", class: "danger", id: "reject" }, "Reject");
    reject.addEventListener("click", () => act(reject, complete({ approve: false, reason: reason.value })));
    return h("section", { class: "note", "aria-label": "Waitpoint" },
      h("p", null, "Waiting for ", h("strong", { class: "mono" }, wp.name), " until ", when(wp.expires_at)),
      wp.detail !== undefined ? jsonTree(wp.detail, 1) : null,
      h("div", { class: "actions" }, approve, reason, reject),
      h("p", { class: "hint" }, "Completes the waitpoint with {\"approve\": true} or {\"approve\": false, \"reason\": …} as its payload."));
  }

  // Runs an action; its failure shows the API's error under the header.
  async function act(button, fn) {
    fill(actionErr);
    button.disabled = true;
    try {
      await fn();
    } catch (e) {
      fill(actionErr, errorBox(e));
      button.disabled = false;
    }
  }

  // The job's stream: status and progress as they happen; the job again at `done`. A stream cut off
  // (its token lasts 15 minutes) is opened again with a fresh events_url.
  function follow() {
    if (closed || !job.events_url || TERMINAL.has(job.status) || source) return;
    source = new EventSource(streamPath(job.events_url));
    source.addEventListener("progress", (e) => {
      const p = JSON.parse(e.data);
      job.progress = p;
      const bar = head.querySelector("[role=progressbar]");
      if (bar) { setBar(bar, p); document.getElementById("progress-text").textContent = progressText(p); } else render();
    });
    // Parked on a waitpoint (again): the job says which.
    source.addEventListener("waiting", () => refetch());
    source.addEventListener("status", async (e) => {
      const s = JSON.parse(e.data);
      if (s.status !== job.status || s.attempts !== job.attempts) await refetch();
    });
    source.addEventListener("done", (e) => {
      source.close();
      source = null;
      job = JSON.parse(e.data);
      render();
      loadSteps();
    });
    source.onerror = () => {
      if (source && source.readyState === EventSource.CLOSED) {
        source = null;
        setTimeout(() => refetch().then(follow), 2000);
      }
    };
  }

  async function refetch() {
    try {
      job = await get(`/jobs/${encodeURIComponent(id)}`);
      render();
      loadSteps();
    } catch (e) {
      fill(actionErr, errorBox(e));
    }
  }

  async function loadSteps() {
    clearTimeout(stepsTimer);
    const steps = [];
    try {
      let cursor = null;
      do {
        const page = await get(`/jobs/${encodeURIComponent(id)}/steps${query({ limit: 100, cursor })}`);
        steps.push(...page.steps);
        cursor = page.next_cursor;
      } while (cursor && steps.length < 1000);
    } catch (e) {
      fill(stepsBox, e.status === 404 && e.code === "route_not_found" ? h("p", { class: "muted" }, "This API does not serve steps (GET /jobs/{id}/steps).") : errorBox(e));
      return;
    }
    fill(stepsBox, timeline(job, steps));
    // Steps appear as they finish: while the job runs, read them again now and then.
    if (!closed && !TERMINAL.has(job.status)) stepsTimer = setTimeout(loadSteps, 3000);
  }

  load();
  return () => { closed = true; clearTimeout(stepsTimer); if (source) source.close(); };
}

function progressText(p) {
  if (!p) return "";
  return `${p.percent}%${p.message ? ` · ${p.message}` : ""}`;
}

function timeline(job, steps) {
  const items = [h("li", { class: "ok" }, h("div", { class: "step-head" }, h("strong", null, "submitted"), h("span", { class: "muted" }, when(job.submitted_at))))];
  if (job.started_at) items.push(h("li", { class: "ok" }, h("div", { class: "step-head" }, h("strong", null, `attempt ${job.attempts} started`), h("span", { class: "muted" }, when(job.started_at)))));
  for (const s of steps) items.push(step(s));
  if (job.finished_at) items.push(h("li", { class: job.status === "completed" ? "ok" : "bad" }, h("div", { class: "step-head" }, h("strong", null, job.status.replace("_", " ")), h("span", { class: "muted" }, when(job.finished_at)))));
  return h("div", null, steps.length === 0 ? h("p", { class: "muted" }, "No recorded steps (a handler's ctx.step, waitpoints and agent turns show here).") : null, h("ol", { class: "timeline", "aria-label": "Timeline" }, items));
}

const KIND_LABEL = { step: "step", waitpoint: "waitpoint", model_turn: "model turn", tool_call: "tool call" };

function step(s) {
  const cls = s.error || s.state === "timed_out" ? "bad" : s.state === "pending" ? "wait" : "ok";
  const usage = s.usage ?? s.output?.usage;
  return h("li", { class: cls, "data-step": s.name },
    h("div", { class: "step-head" },
      h("strong", { class: "mono" }, s.name),
      h("span", { class: "badge s-queued" }, KIND_LABEL[s.kind] ?? s.kind),
      h("span", null, s.state.replace("_", " ")),
      s.started_at ? h("span", { class: "muted" }, when(s.started_at)) : null,
      s.duration_ms !== null && s.duration_ms !== undefined ? h("span", { class: "muted" }, span(s.duration_ms)) : null,
      usage ? h("span", { class: "muted" }, `${usage.input_tokens} in / ${usage.output_tokens} out tokens`) : null,
      s.expires_at && s.state === "pending" ? h("span", { class: "muted" }, "expires ", when(s.expires_at)) : null),
    s.error ? errorBox(s.error) : null,
    s.kind === "model_turn" && s.output?.tool_calls?.length ? h("div", null, s.output.tool_calls.map((c) => h("details", null, h("summary", null, `calls ${c.name ?? c.tool ?? "tool"}`), jsonTree(c.input ?? c.arguments ?? c, 2)))) : null,
    s.kind === "model_turn" && s.output?.text ? h("p", null, s.output.text) : null,
    "output" in s && s.output !== null ? h("details", null, h("summary", null, "output"), jsonTree(s.output, 1)) : null);
}

// An agent job's token usage by model (its result's, or a failed run's `error.details`), linking to
// the caller's usage of the day; null for a job that reports none.
function tokens(job) {
  const from = job.result?.usage ? job.result : job.error?.details?.usage ? job.error.details : null;
  if (!from) return null;
  const u = from.usage;
  return h("span", { id: "job-tokens" }, from.model ? [h("span", { class: "mono" }, from.model), ": "] : null,
    `${u.input_tokens} in / ${u.output_tokens} out (${u.input_tokens + u.output_tokens})`, " · ", h("a", { href: "#/usage" }, "today's usage"));
}
