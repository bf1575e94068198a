// Submit a job: a kind from GET /kinds, its input from a form built from the kind's input schema (or as
// raw JSON); the API's answer, or its error, shown as it came.

import { h, fill, errorBox, jobHref } from "./dom.js";
import { call, kinds } from "./api.js";

export function submitView(main, params) {
  const err = h("div", { "aria-live": "polite" });
  const kindSel = h("select", { id: "submit-kind", "aria-label": "Kind", required: true });
  const fields = h("div", { class: "fields" });
  const raw = h("textarea", { id: "raw-input", "aria-label": "Input (JSON)", spellcheck: "false", hidden: true }, "{}");
  const rawToggle = h("input", { type: "checkbox", id: "raw-toggle" });
  const schemaHint = h("p", { class: "hint" });
  const go = h("button", { type: "submit", class: "primary", id: "submit" }, "Submit");
  let list = [];
  let form = null; // the current kind's field readers, or null when the schema has no form

  main.append(h("h1", null, "Submit a job"),
    h("form", { class: "panel", onsubmit: submit },
      h("div", { class: "toolbar" }, h("label", null, "Kind", kindSel), h("label", { class: "check" }, rawToggle, "Raw JSON")),
      schemaHint, fields, raw,
      h("div", { class: "actions" }, go)),
    err);

  kinds().then((ks) => {
    list = ks;
    for (const k of ks) kindSel.append(h("option", { value: k.kind }, k.kind));
    kindSel.value = params.get("kind") && ks.some((k) => k.kind === params.get("kind")) ? params.get("kind") : ks[0]?.kind ?? "";
    build();
  }).catch((e) => fill(err, errorBox(e)));
  kindSel.addEventListener("change", build);
  rawToggle.addEventListener("change", () => {
    if (rawToggle.checked && form) raw.value = JSON.stringify(readForm(), null, 2);
    showMode();
  });

  function build() {
    const info = list.find((k) => k.kind === kindSel.value);
    const schema = info?.input_schema;
    schemaHint.textContent = schema?.description ?? (info ? `Runs on the ${info.lane} lane.` : "");
    form = formFor(schema);
    fill(fields, ...(form ? form.elements : []));
    if (!form) rawToggle.checked = true;
    rawToggle.disabled = !form;
    showMode();
  }

  function showMode() {
    const useRaw = rawToggle.checked || !form;
    raw.hidden = !useRaw;
    fields.hidden = useRaw;
  }

  function readForm() {
    const out = {};
    for (const [name, read] of form.readers) {
      const v = read();
      if (v !== undefined) out[name] = v;
    }
    return out;
  }

  async function submit(e) {
    e.preventDefault();
    fill(err);
    let input;
    try {
      input = raw.hidden ? readForm() : JSON.parse(raw.value);
    } catch (x) {
      fill(err, errorBox({ code: "malformed_json", message: `the input is not JSON: ${x.message}` }));
      return;
    }
    go.disabled = true;
    try {
      const accepted = await call("POST", "/jobs", { kind: kindSel.value, input }, { "idempotency-key": crypto.randomUUID() });
      location.hash = jobHref(accepted.job_id);
    } catch (x) {
      fill(err, errorBox(x));
      go.disabled = false;
    }
  }
}

// A form for an object schema with typed properties; null for anything else (raw JSON then).
function formFor(schema) {
  if (!schema || schema.type !== "object" || !schema.properties) return null;
  const required = new Set(schema.required ?? []);
  const elements = [];
  const readers = [];
  for (const [name, prop] of Object.entries(schema.properties)) {
    const id = `f-${name}`;
    const types = [].concat(prop.type ?? []);
    const type = types.find((t) => t !== "null");
    const label = `${name}${required.has(name) ? " *" : ""}`;
    const hint = prop.description ? h("span", { class: "hint" }, prop.description) : null;
    let input;
    let read;
    if (prop.enum) {
      input = h("select", { id }, prop.enum.map((v) => h("option", { value: JSON.stringify(v) }, String(v))));
      read = () => JSON.parse(input.value);
    } else if (type === "boolean") {
      input = h("input", { id, type: "checkbox", checked: prop.default === true });
      elements.push(h("label", { class: "check" }, input, label, hint));
      readers.push([name, () => input.checked]);
      continue;
    } else if (type === "integer" || type === "number") {
      input = h("input", { id, type: "number", step: type === "integer" ? 1 : "any", min: prop.minimum, max: prop.maximum, value: prop.default, required: required.has(name) });
      read = () => (input.value === "" ? undefined : Number(input.value));
    } else if (type === "string") {
      input = h("input", { id, type: "text", value: prop.default, required: required.has(name), maxlength: prop.maxLength });
      read = () => (input.value === "" && !required.has(name) ? undefined : input.value);
    } else {
      input = h("textarea", { id, spellcheck: "false" }, prop.default !== undefined ? JSON.stringify(prop.default, null, 2) : "");
      read = () => (input.value.trim() === "" ? undefined : JSON.parse(input.value));
    }
    elements.push(h("label", null, label, input, hint));
    readers.push([name, read]);
  }
  return { elements, readers };
}
