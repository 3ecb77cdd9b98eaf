// Shared by every page: the key (sessionStorage only), calls to the /v1 API, errors, small DOM helpers.
// Text goes in with textContent, never innerHTML: file names and model output are the user's data.

const KEY = "tunesmith-key";

export const TERMINAL = ["succeeded", "failed", "cancelled"];

export function apiKey() {
  return sessionStorage.getItem(KEY);
}

export function setKey(key) {
  sessionStorage.setItem(KEY, key);
}

// A page other than the login page needs a key: without one, go and ask for it. Pages await this; it
// never settles while the browser leaves for the login page, so nothing calls the API without a key.
export function requireKey() {
  if (!apiKey()) {
    location.replace("/ui/login");
    return new Promise(() => {});
  }
  const logout = document.getElementById("logout");
  logout?.addEventListener("click", () => {
    sessionStorage.removeItem(KEY);
    location.assign("/ui/login");
  });
  return Promise.resolve();
}

export function authHeaders(extra = {}) {
  return { Authorization: `Bearer ${apiKey()}`, ...extra };
}

// The API's own message for a failed call ({"error": {"message": ...}}), never a stack trace.
export async function errorOf(response) {
  let message = `${response.status} ${response.statusText}`;
  try {
    const body = await response.json();
    message = body?.error?.message || message;
  } catch {
    // not JSON (a proxy's page): the status line says enough
  }
  const error = new Error(message);
  error.status = response.status;
  return error;
}

export async function api(path, { method = "GET", body } = {}) {
  const init = { method, headers: authHeaders() };
  if (body !== undefined) {
    init.headers["Content-Type"] = "application/json";
    init.body = JSON.stringify(body);
  }
  const response = await fetch(`/v1${path}`, init);
  if (response.status === 401) {
    sessionStorage.removeItem(KEY);
  }
  if (!response.ok) throw await errorOf(response);
  return response.json();
}

// Every page of a list (OpenAI's has_more / after paging).
export async function listAll(path, limit = 100) {
  const out = [];
  let after = null;
  for (;;) {
    const sep = path.includes("?") ? "&" : "?";
    const page = await api(`${path}${sep}limit=${limit}${after ? `&after=${encodeURIComponent(after)}` : ""}`);
    out.push(...page.data);
    if (!page.has_more || !page.data.length) return out;
    after = page.data[page.data.length - 1].id;
  }
}

export function showError(error) {
  const box = document.getElementById("error");
  if (!error) {
    box.hidden = true;
    box.textContent = "";
    return;
  }
  box.textContent = error.message || String(error);
  box.hidden = false;
}

export function el(tag, attrs = {}, ...children) {
  const node = document.createElement(tag);
  for (const [name, value] of Object.entries(attrs)) {
    if (value === undefined || value === null || value === false) continue;
    if (name.startsWith("on")) node.addEventListener(name.slice(2), value);
    else node.setAttribute(name, value === true ? "" : value);
  }
  for (const child of children.flat()) {
    if (child !== null && child !== undefined) node.append(child instanceof Node ? child : String(child));
  }
  return node;
}

export function when(seconds) {
  return seconds ? new Date(seconds * 1000).toLocaleString() : "";
}

// Each cell is labelled with its column's heading (data-label): at phone widths a row is shown as a
// card of "heading: value" lines (dashboard.css), as a wide table does not fit.
export function fill(tbody, rows) {
  const headings = [...tbody.closest("table").querySelectorAll("thead th")].map((th) => th.textContent.trim());
  for (const row of rows) {
    [...row.children].forEach((cell, i) => {
      if (headings[i]) cell.dataset.label = headings[i];
    });
  }
  tbody.replaceChildren(...rows);
}

// A file the API serves behind the key (a link cannot carry the header): fetched, then saved.
export async function download(path, filename) {
  const response = await fetch(`/v1${path}`, { headers: authHeaders() });
  if (!response.ok) throw await errorOf(response);
  const url = URL.createObjectURL(await response.blob());
  const link = el("a", { href: url, download: filename });
  document.body.append(link);
  link.click();
  link.remove();
  setTimeout(() => URL.revokeObjectURL(url), 10000);
}

// The step metrics a job's events carry, oldest first (events are listed newest first).
export function metricsOf(events) {
  return events
    .filter((e) => e.type === "metrics" && e.data && typeof e.data.step === "number")
    .map((e) => e.data)
    .sort((a, b) => a.step - b.step);
}

// How far a job has trained: its newest metrics event says "Step 3/10: ..." (the step of total).
export function progressOf(events) {
  for (const event of events) {
    if (event.type !== "metrics") continue;
    const match = /^Step (\d+)\/(\d+)/.exec(event.message || "");
    if (match) return { step: Number(match[1]), total: Number(match[2]) };
  }
  return null;
}

// A <progress> with its words beside it ("3 / 10 steps"), or a dash before the first step.
export function progressBar(progress, label) {
  if (!progress) return el("span", { class: "help" }, "–");
  const { step, total } = progress;
  return el(
    "span",
    { class: "progress" },
    el("progress", { max: total, value: Math.min(step, total), "aria-label": label }),
    ` ${step} / ${total} steps`,
  );
}
