import { LineChart, align } from "./chart.js";
import {
  TERMINAL,
  api,
  download,
  el,
  fill,
  listAll,
  metricsOf,
  progressBar,
  progressOf,
  requireKey,
  showError,
  when,
} from "./common.js";

await requireKey();
const jobId = document.getElementById("job").dataset.jobId;
const path = `/fine_tuning/jobs/${encodeURIComponent(jobId)}`;
const loss = new LineChart(document.getElementById("loss-chart"), "loss");
const reward = new LineChart(document.getElementById("reward-chart"), "mean reward");
const accuracy = new LineChart(document.getElementById("acc-chart"), "token accuracy");
// Each button is shown only in the states its route accepts (routes/jobs.py).
const BUTTONS = {
  pause: ["queued", "running"],
  resume: ["paused"],
  cancel: ["validating_files", "queued", "running", "paused"],
};
// The checkpoint metrics shown, where any checkpoint has them.
const CHECKPOINT_COLUMNS = [
  ["train_loss", "Train loss"],
  ["valid_loss", "Validation loss"],
  ["train_mean_token_accuracy", "Train accuracy"],
  ["valid_mean_token_accuracy", "Validation accuracy"],
  ["train_reward", "Train reward"],
  ["val_reward", "Validation reward"],
  ["train_pass_rate", "Train pass rate"],
];
let job = null;
let shownResults = "";

function fact(term, value) {
  return [el("dt", {}, term), el("dd", {}, value ?? "")];
}

function showJob(progress) {
  const hyper = job.hyperparameters || {};
  const grader = job.method?.reinforcement?.grader;
  const facts = [
    fact("Status", el("span", { id: "status", class: `status ${job.status}` }, job.status)),
    fact("Progress", progressBar(progress, "Training progress")),
    fact("Base model", job.model),
    fact("Method", job.method?.type),
    fact("Training file", job.training_file),
    fact("Validation file", job.validation_file || "none"),
    ...Object.entries(hyper).map(([k, v]) => fact(k, String(v))),
    grader ? fact("Grader", el("code", {}, JSON.stringify(grader))) : [],
    fact("Seed", job.seed),
    fact("Created", when(job.created_at)),
    job.estimated_finish ? fact("Estimated finish", when(job.estimated_finish)) : [],
    job.finished_at ? fact("Finished", when(job.finished_at)) : [],
    fact("Trained tokens", job.trained_tokens),
    fact(
      "Fine-tuned model",
      job.fine_tuned_model
        ? el("a", { href: `/ui/playground?model=${encodeURIComponent(job.fine_tuned_model)}` }, job.fine_tuned_model)
        : "",
    ),
  ];
  if (job.error?.message) facts.push(fact("Error", el("span", { class: "error" }, job.error.message)));
  document.getElementById("summary").replaceChildren(...facts.flat());
  for (const [id, states] of Object.entries(BUTTONS)) {
    const button = document.getElementById(id);
    button.hidden = !states.includes(job.status);
    button.disabled = false;
  }
}

// The result files (step_metrics.csv; an evaluation report where the job wrote one), each a download.
async function showResults() {
  const ids = job.result_files || [];
  if (ids.join() === shownResults) return;
  shownResults = ids.join();
  const files = await Promise.all(ids.map((id) => api(`/files/${encodeURIComponent(id)}`)));
  document.getElementById("results").replaceChildren(
    ...files.map((file) => {
      const label = /\.html?$/.test(file.filename) ? "Open evaluation report" : `Download ${file.filename}`;
      const button = el("button", { type: "button", class: "secondary", "data-file": file.id }, label);
      button.addEventListener("click", () =>
        download(`/files/${encodeURIComponent(file.id)}/content`, `${jobId}-${file.filename}`).catch(showError),
      );
      return button;
    }),
  );
}

function pairs(rows, key) {
  return rows.filter((r) => typeof r[key] === "number").map((r) => [r.step, r[key]]);
}

function showMetrics(events) {
  const rows = metricsOf(events);
  const reinforcement = job.method?.type === "reinforcement";
  loss.update(["train loss", "validation loss"], align([pairs(rows, "train_loss"), pairs(rows, "valid_loss")]));
  // GRPO reports the grader's reward, not token accuracy.
  document.getElementById("reward-section").hidden = !reinforcement;
  document.getElementById("acc-section").hidden = reinforcement;
  if (reinforcement) {
    reward.update(["train reward", "validation reward"], align([pairs(rows, "train_reward"), pairs(rows, "val_reward")]));
  } else {
    accuracy.update(
      ["train accuracy", "validation accuracy"],
      align([pairs(rows, "train_mean_token_accuracy"), pairs(rows, "valid_mean_token_accuracy")]),
    );
  }
}

function showEvents(events) {
  document.getElementById("events").replaceChildren(
    ...events
      .filter((e) => e.type !== "metrics")
      .map((e) => el("li", { class: e.level }, el("time", {}, when(e.created_at)), " ", e.message)),
  );
}

function fixed(value) {
  return typeof value === "number" ? value.toFixed(4) : "";
}

function showCheckpoints(checkpoints) {
  const columns = CHECKPOINT_COLUMNS.filter(([key]) => checkpoints.some((c) => typeof c.metrics?.[key] === "number"));
  document
    .querySelector("#checkpoints thead")
    .replaceChildren(
      el(
        "tr",
        {},
        el("th", { scope: "col" }, "Step"),
        columns.map(([, label]) => el("th", { scope: "col" }, label)),
        el("th", { scope: "col" }, "Model"),
      ),
    );
  fill(
    document.querySelector("#checkpoints tbody"),
    checkpoints.map((c) =>
      el(
        "tr",
        {},
        el("td", { class: "num" }, c.step_number),
        columns.map(([key]) => el("td", { class: "num" }, fixed(c.metrics?.[key]))),
        el(
          "td",
          {},
          el("code", {}, c.fine_tuned_model_checkpoint),
          " ",
          el("a", { href: `/ui/playground?model=${encodeURIComponent(c.fine_tuned_model_checkpoint)}` }, "Try"),
        ),
      ),
    ),
  );
}

let timer = null;

// Polled every 2 s while the job can still change; once more after it ends, so the last events show.
async function refresh() {
  clearTimeout(timer);
  try {
    const [fresh, events, checkpoints] = await Promise.all([
      api(path),
      listAll(`${path}/events`, 1000),
      listAll(`${path}/checkpoints`, 100),
    ]);
    job = fresh;
    showJob(progressOf(events));
    showMetrics(events);
    showEvents(events);
    showCheckpoints(checkpoints);
    await showResults();
    if (!TERMINAL.includes(job.status)) timer = setTimeout(refresh, 2000);
  } catch (error) {
    showError(error);
  }
}

for (const action of Object.keys(BUTTONS)) {
  const button = document.getElementById(action);
  button.addEventListener("click", async () => {
    button.disabled = true;
    showError(null);
    try {
      await api(`${path}/${action}`, { method: "POST" });
    } catch (error) {
      showError(error); // e.g. "the job is succeeded: only a paused job can be resumed"
    }
    refresh();
  });
}

refresh();
