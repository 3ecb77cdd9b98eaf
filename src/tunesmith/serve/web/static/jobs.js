import { TERMINAL, api, el, fill, listAll, progressBar, progressOf, requireKey, showError, when } from "./common.js";

await requireKey();
const form = document.getElementById("create-form");
const method = document.getElementById("method");
const graderResult = document.getElementById("grader-result");

// The hyperparameters each method takes (jobs/request.py): an empty box is "auto".
const HYPERPARAMETERS = {
  supervised: ["n_epochs", "batch_size", "learning_rate_multiplier"],
  dpo: ["n_epochs", "batch_size", "learning_rate_multiplier", "beta"],
  reinforcement: ["n_epochs", "batch_size", "learning_rate_multiplier", "compute_multiplier", "eval_interval", "eval_samples"],
};

function option(value, label = value) {
  return el("option", { value }, label);
}

function showMethod() {
  for (const node of document.querySelectorAll(".dpo-only")) node.hidden = method.value !== "dpo";
  for (const node of document.querySelectorAll(".rl-only")) node.hidden = method.value !== "reinforcement";
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

// The grader as the service reads it: parsed here, then checked by /fine_tuning/alpha/graders/validate,
// whose message names the field ("invalid grader: reference: ..."). Throws what the person must fix.
async function checkedGrader() {
  let grader;
  try {
    grader = JSON.parse(document.getElementById("grader").value);
  } catch (error) {
    throw new Error(`grader: not valid JSON (${error.message})`);
  }
  await api("/fine_tuning/alpha/graders/validate", { method: "POST", body: { grader } });
  return grader;
}

async function validateGrader() {
  graderResult.className = "";
  graderResult.textContent = "Checking…";
  try {
    const grader = await checkedGrader();
    graderResult.className = "ok";
    graderResult.textContent = `The grader ${grader.name ? `"${grader.name}" ` : ""}is valid.`;
    return grader;
  } catch (error) {
    graderResult.className = "error";
    graderResult.textContent = error.message;
    throw error;
  }
}

form.addEventListener("submit", async (event) => {
  event.preventDefault();
  showError(null);
  const type = method.value;
  const hyper = {};
  for (const name of HYPERPARAMETERS[type]) {
    const value = number(name);
    if (value !== undefined) hyper[name] = value;
  }
  const section = { hyperparameters: hyper };
  try {
    if (type === "reinforcement") section.grader = await validateGrader();
  } catch (error) {
    showError(error);
    document.getElementById("grader").focus();
    return;
  }
  const body = {
    model: document.getElementById("model").value,
    training_file: document.getElementById("training_file").value,
    method: { type, [type]: section },
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

// A finished job's progress does not change: read once.
const finished = new Map();

async function progress(job) {
  if (finished.has(job.id)) return finished.get(job.id);
  const events = await api(`/fine_tuning/jobs/${encodeURIComponent(job.id)}/events?limit=20`);
  const found = progressOf(events.data);
  if (TERMINAL.includes(job.status)) finished.set(job.id, found);
  return found;
}

let timer = null;

async function refresh() {
  try {
    const jobs = await listAll("/fine_tuning/jobs");
    const progresses = await Promise.all(jobs.map(progress));
    fill(
      document.querySelector("#jobs tbody"),
      jobs.map((j, i) =>
        el(
          "tr",
          {},
          el("td", {}, el("a", { href: `/ui/jobs/${encodeURIComponent(j.id)}` }, j.id)),
          el("td", {}, j.model),
          el("td", {}, j.method?.type || "supervised"),
          el("td", {}, el("span", { class: `status ${j.status}` }, j.status)),
          el("td", { class: "job-progress" }, progressBar(progresses[i], `Progress of ${j.id}`)),
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
document.getElementById("validate-grader").addEventListener("click", () => validateGrader().catch(() => {}));
showMethod();
loadChoices().catch(showError);
refresh();
