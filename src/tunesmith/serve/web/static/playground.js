import { api, authHeaders, el, errorOf, requireKey, showError } from "./common.js";

await requireKey();
const form = document.getElementById("play-form");

async function loadModels() {
  const models = (await api("/models")).data.map((m) => m.id);
  const wanted = new URLSearchParams(location.search).get("model");
  const fineTuned = models.filter((m) => m.startsWith("ft:") && !m.includes(":ckpt-"));
  for (const [id, pick] of [
    ["model-a", wanted && !wanted.startsWith("ft:") ? wanted : models[0]],
    ["model-b", wanted || fineTuned[fineTuned.length - 1] || models[0]],
  ]) {
    const select = document.getElementById(id);
    select.replaceChildren(...models.map((m) => new Option(m, m, false, m === pick)));
  }
}

// The tools box: empty is no tools; otherwise a JSON list, which the API checks tool by tool.
function tools() {
  const raw = document.getElementById("tools").value.trim();
  if (!raw) return null;
  let parsed;
  try {
    parsed = JSON.parse(raw);
  } catch (error) {
    throw new Error(`tools: not valid JSON (${error.message})`);
  }
  if (!Array.isArray(parsed)) throw new Error("tools: a JSON list of tools, [{...}, ...], not an object");
  return parsed;
}

// Tool calls arrive as deltas by index: the opening one names the function, later ones add arguments.
function addCallDeltas(calls, deltas) {
  for (const delta of deltas) {
    const call = (calls[delta.index] ??= { name: "", arguments: "" });
    call.name += delta.function?.name || "";
    call.arguments += delta.function?.arguments || "";
  }
}

function showCalls(list, calls) {
  list.replaceChildren(
    ...calls.filter(Boolean).map((c) => el("li", {}, el("code", {}, `${c.name}(${c.arguments})`))),
  );
}

// One answer, streamed: chat completions' server-sent events read from fetch's body as they arrive.
async function stream(model, request, output, callList, speed) {
  output.textContent = "";
  callList.replaceChildren();
  speed.textContent = "waiting…";
  const body = { model, ...request, stream: true, stream_options: { include_usage: true } };
  const started = performance.now();
  const response = await fetch("/v1/chat/completions", {
    method: "POST",
    headers: authHeaders({ "Content-Type": "application/json" }),
    body: JSON.stringify(body),
  });
  if (!response.ok) throw await errorOf(response);
  const reader = response.body.pipeThrough(new TextDecoderStream()).getReader();
  let buffer = "";
  let chunks = 0;
  let tokens = null;
  const calls = [];
  for (;;) {
    const { value, done } = await reader.read();
    if (done) break;
    buffer += value;
    const events = buffer.split("\n\n");
    buffer = events.pop();
    for (const event of events) {
      const data = event
        .split("\n")
        .filter((line) => line.startsWith("data:"))
        .map((line) => line.slice(5).trim())
        .join("");
      if (!data || data === "[DONE]") continue;
      const chunk = JSON.parse(data);
      if (chunk.error) throw new Error(chunk.error.message);
      const piece = chunk.choices?.[0]?.delta?.content;
      if (piece) {
        output.textContent += piece;
        chunks += 1;
      }
      const callDeltas = chunk.choices?.[0]?.delta?.tool_calls;
      if (callDeltas) {
        addCallDeltas(calls, callDeltas);
        showCalls(callList, calls);
      }
      if (chunk.usage) tokens = chunk.usage.completion_tokens;
    }
    const seconds = (performance.now() - started) / 1000;
    speed.textContent = `${tokens ?? chunks} tokens in ${seconds.toFixed(2)} s`;
  }
  const seconds = (performance.now() - started) / 1000;
  const n = tokens ?? chunks;
  speed.textContent = `${n} tokens in ${seconds.toFixed(2)} s · ${(n / seconds).toFixed(1)} tokens/s`;
  output.dataset.chunks = String(chunks);
  output.dataset.done = "true";
}

form.addEventListener("submit", (event) => {
  event.preventDefault();
  showError(null);
  const messages = [];
  const system = document.getElementById("system").value.trim();
  if (system) messages.push({ role: "system", content: system });
  messages.push({ role: "user", content: document.getElementById("user").value });
  const request = {
    messages,
    temperature: Number(document.getElementById("temperature").value),
    max_tokens: Number(document.getElementById("max_tokens").value),
  };
  try {
    const offered = tools();
    if (offered) Object.assign(request, { tools: offered, tool_choice: document.getElementById("tool_choice").value });
  } catch (error) {
    showError(error);
    return;
  }
  for (const side of ["a", "b"]) {
    const output = document.getElementById(`answer-${side}`);
    const callList = document.getElementById(`calls-${side}`);
    const speed = document.getElementById(`speed-${side}`);
    delete output.dataset.done;
    stream(document.getElementById(`model-${side}`).value, request, output, callList, speed).catch((error) => {
      speed.textContent = "";
      showError(error);
    });
  }
});

loadModels().catch(showError);
