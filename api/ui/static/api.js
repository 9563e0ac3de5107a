// The /v1 API from the browser: the key from sessionStorage as a Bearer header, OpenAI-style errors as
// ApiError, and server-sent events read with fetch() (EventSource cannot send an Authorization header).

const KEY_NAME = "lorasp.apiKey";
export const TERMINAL = new Set(["succeeded", "failed", "cancelled"]);

export const getKey = () => sessionStorage.getItem(KEY_NAME);
export const setKey = (key) => sessionStorage.setItem(KEY_NAME, key);
export const clearKey = () => sessionStorage.removeItem(KEY_NAME);

export class ApiError extends Error {
  constructor(status, message, code) {
    super(message);
    this.status = status;
    this.code = code;
  }
}

async function raiseFor(response) {
  let message = `HTTP ${response.status}`;
  let code = null;
  try {
    const body = await response.json();
    message = body.error?.message ?? message;
    code = body.error?.code ?? null;
  } catch (_) { /* not JSON: keep the status line */ }
  if (response.status === 401) window.dispatchEvent(new CustomEvent("lorasp:unauthorized"));
  throw new ApiError(response.status, message, code);
}

// A raw Response (for streams and downloads); `key` overrides the stored one (sign-in checks a new key).
export async function request(path, { method = "GET", body, signal, key } = {}) {
  const headers = { Authorization: `Bearer ${key ?? getKey()}` };
  if (body !== undefined) headers["Content-Type"] = "application/json";
  const response = await fetch(`/v1${path}`, {
    method, headers, signal, body: body === undefined ? undefined : JSON.stringify(body),
  });
  if (!response.ok) await raiseFor(response);
  return response;
}

export async function api(path, options) {
  return (await request(path, options)).json();
}

// Every item of a list route, following `has_more` / `after` like OpenAI's pagination.
export async function listAll(path, { limit = 100, signal } = {}) {
  const items = [];
  let after = null;
  for (;;) {
    const query = new URLSearchParams({ limit: String(limit) });
    if (after) query.set("after", after);
    const page = await api(`${path}?${query}`, { signal });
    items.push(...page.data);
    if (!page.has_more || page.data.length === 0) return items;
    after = page.data[page.data.length - 1].id;
  }
}

// Yields {id, event, data} for each message of a text/event-stream body; comments are skipped.
export async function* sseMessages(response) {
  const reader = response.body.pipeThrough(new TextDecoderStream()).getReader();
  let buffer = "";
  for (;;) {
    const { value, done } = await reader.read();
    if (done) return;
    buffer += value.replace(/\r\n?/g, "\n");
    let end;
    while ((end = buffer.indexOf("\n\n")) >= 0) {
      const block = buffer.slice(0, end);
      buffer = buffer.slice(end + 2);
      const message = { id: null, event: "message", data: [] };
      for (const line of block.split("\n")) {
        if (line.startsWith(":")) continue;
        const colon = line.indexOf(":");
        const field = colon < 0 ? line : line.slice(0, colon);
        const text = colon < 0 ? "" : line.slice(colon + 1).replace(/^ /, "");
        if (field === "data") message.data.push(text);
        else if (field === "id") message.id = text;
        else if (field === "event") message.event = text;
      }
      if (message.data.length) yield { ...message, data: message.data.join("\n") };
    }
  }
}

export function formatSeconds(seconds) {
  if (seconds === null || seconds === undefined) return "";
  const s = Math.max(0, Math.round(seconds));
  const h = Math.floor(s / 3600), m = Math.floor((s % 3600) / 60);
  return h ? `${h}h ${m}m` : m ? `${m}m ${s % 60}s` : `${s}s`;
}

export const formatTime = (unix) => (unix ? new Date(unix * 1000).toLocaleString() : "");
