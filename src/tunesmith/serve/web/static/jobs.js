import { TERMINAL, api, el, fill, listAll, requireKey, showError, when } from "./common.js";

await requireKey();
const form = document.getElementById("create-form");
const method = document.getElementById("method");

function option(value, label = value) {
  return el("option", { value }, label);
}

function showMethod() {
  for (const node of document.querySelectorAll(".dpo-only")) node.hidden = method.value !== "dpo";
}

async function loadChoices() {
  const [models, files] = await Promise.all([api("/models"), listAll("/files")]);
  const trainable = files.filter((f) => f.purpose === "fine-tune");
  document.getElementById("model").replaceChildren(...models.data.map((m) => option(m.id)));
  document
    .getElementById("training_file")
    .replaceChildren(...trainable.map((f) => option(f.id, `${f.filename} (${f.id})`)));
  document
    .getElementById("validation_file")
    .replaceChildren(option("", "none"), ...trainable.map((f) => option(f.id, `${f.filename} (${f.id})`)));
}

// An empty box is "auto"; anything else is sent as typed, as a number where it reads as one, so the
// API's own message names a bad value.
function number(id) {
  const raw = document.getElementById(id).value.trim();
  if (raw === "" || raw === "auto") return undefined;
  const value = Number(raw);
  return Number.isFinite(value) ? value : raw;
}

form.addEventListener("submit", async (event) => {
  event.preventDefault();
  showError(null);
  const hyper = {};
  const names = ["n_epochs", "batch_size", "learning_rate_multiplier", ...(method.value === "dpo" ? ["beta"] : [])];
  for (const name of names) {
    const value = number(name);
    if (value !== undefined) hyper[name] = value;
  }
  const body = {
    model: document.getElementById("model").value,
    training_file: document.getElementById("training_file").value,
    method: { type: method.value, [method.value]: { hyperparameters: hyper } },
  };
  const validation = document.getElementById("validation_file").value;
  if (validation) body.validation_file = validation;
  const suffix = document.getElementById("suffix").value.trim();
  if (suffix) body.suffix = suffix;
  const seed = number("seed");
  if (seed !== undefined) body.seed = seed;
  try {
    const job = await api("/fine_tuning/jobs", { method: "POST", body });
    location.assign(`/ui/jobs/${encodeURIComponent(job.id)}`);
  } catch (error) {
    showError(error);
  }
});

let timer = null;

async function refresh() {
  try {
    const jobs = await listAll("/fine_tuning/jobs");
    fill(
      document.querySelector("#jobs tbody"),
      jobs.map((j) =>
        el(
          "tr",
          {},
          el("td", {}, el("a", { href: `/ui/jobs/${encodeURIComponent(j.id)}` }, j.id)),
          el("td", {}, j.model),
          el("td", {}, j.method?.type || "supervised"),
          el("td", {}, el("span", { class: `status ${j.status}` }, j.status)),
          el("td", {}, j.fine_tuned_model || ""),
          el("td", {}, when(j.created_at)),
        ),
      ),
    );
    clearTimeout(timer);
    if (jobs.some((j) => !TERMINAL.includes(j.status))) timer = setTimeout(refresh, 2000);
  } catch (error) {
    showError(error);
  }
}

method.addEventListener("change", showMethod);
showMethod();
loadChoices().catch(showError);
refresh();
