// The API, as the page calls it: same origin only (the CSP's connect-src is 'self'). In `jobctl dev` that
// is the API itself; in `jobctl console` a local proxy that adds the caller's token.

export class ApiError extends Error {
  constructor(status, code, message) {
    super(message);
    this.status = status;
    this.code = code;
  }
}

export async function call(method, path, body, headers = {}) {
  const init = { method, headers: { accept: "application/json", ...headers }, cache: "no-store" };
  if (body !== undefined) {
    init.headers["content-type"] = "application/json";
    init.body = typeof body === "string" ? body : JSON.stringify(body);
  }
  let resp;
  try {
    resp = await fetch(path, init);
  } catch (e) {
    throw new ApiError(0, "unreachable", `cannot reach the server: ${e.message}`);
  }
  const text = await resp.text();
  let data = null;
  try {
    data = text ? JSON.parse(text) : null;
  } catch {
    data = null;
  }
  if (!resp.ok) {
    const e = data?.error;
    throw new ApiError(resp.status, e?.code ?? `http_${resp.status}`, e?.message ?? data?.message ?? (text || resp.statusText));
  }
  return data;
}

export const get = (path) => call("GET", path);

export function query(params) {
  const q = new URLSearchParams();
  for (const [k, v] of Object.entries(params)) if (v !== undefined && v !== null && v !== "") q.set(k, v);
  const s = q.toString();
  return s ? `?${s}` : "";
}

// The stream of a job, on this origin: the path and token of its events_url (in `jobctl console` the
// proxy forwards it to the events function that URL names).
export function streamPath(eventsUrl) {
  const u = new URL(eventsUrl, location.href);
  const at = u.pathname.indexOf("/jobs/");
  return `${u.pathname.slice(at)}${u.search}`;
}

let kindsCache = null;
export async function kinds() {
  if (!kindsCache) kindsCache = get("/kinds").then((r) => r.kinds).catch((e) => { kindsCache = null; throw e; });
  return kindsCache;
}
