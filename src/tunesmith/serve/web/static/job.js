import { LineChart, align } from "./chart.js";
import { TERMINAL, api, download, el, fill, listAll, metricsOf, requireKey, showError, when } from "./common.js";

await requireKey();
const jobId = document.getElementById("job").dataset.jobId;
const path = `/fine_tuning/jobs/${encodeURIComponent(jobId)}`;
const loss = new LineChart(document.getElementById("loss-chart"), "loss");
const accuracy = new LineChart(document.getElementById("acc-chart"), "token accuracy");
const cancel = document.getElementById("cancel");
const csv = document.getElementById("csv");
let job = null;

function fact(term, value) {
  return [el("dt", {}, term), el("dd", {}, value ?? "")];
}

function showJob() {
  const hyper = job.hyperparameters || {};
  const facts = [
    fact("Status", el("span", { id: "status", class: `status ${job.status}` }, job.status)),
    fact("Base model", job.model),
    fact("Method", job.method?.type),
    fact("Training file", job.training_file),
    fact("Validation file", job.validation_file || "none"),
    ...Object.entries(hyper).map(([k, v]) => fact(k, String(v))),
    fact("Seed", job.seed),
    fact("Created", when(job.created_at)),
    fact("Finished", when(job.finished_at)),
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
  cancel.hidden = TERMINAL.includes(job.status);
  csv.hidden = !(job.result_files && job.result_files.length);
}

function pairs(rows, key) {
  return rows.filter((r) => typeof r[key] === "number").map((r) => [r.step, r[key]]);
}

function showMetrics(events) {
  const rows = metricsOf(events);
  loss.update(["train loss", "validation loss"], align([pairs(rows, "train_loss"), pairs(rows, "valid_loss")]));
  accuracy.update(
    ["train accuracy", "validation accuracy"],
    align([pairs(rows, "train_mean_token_accuracy"), pairs(rows, "valid_mean_token_accuracy")]),
  );
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
  fill(
    document.querySelector("#checkpoints tbody"),
    checkpoints.map((c) =>
      el(
        "tr",
        {},
        el("td", { class: "num" }, c.step_number),
        el("td", { class: "num" }, fixed(c.metrics?.train_loss)),
        el("td", { class: "num" }, fixed(c.metrics?.valid_loss)),
        el("td", {}, el("code", {}, c.fine_tuned_model_checkpoint)),
      ),
    ),
  );
}

// Polled every 2 s while the job runs; once more after it ends, so the last events show.
async function refresh() {
  try {
    const [fresh, events, checkpoints] = await Promise.all([
      api(path),
      listAll(`${path}/events`, 1000),
      listAll(`${path}/checkpoints`, 100),
    ]);
    job = fresh;
    showJob();
    showMetrics(events);
    showEvents(events);
    showCheckpoints(checkpoints);
    if (!TERMINAL.includes(job.status)) setTimeout(refresh, 2000);
  } catch (error) {
    showError(error);
  }
}

cancel.addEventListener("click", async () => {
  try {
    await api(`${path}/cancel`, { method: "POST" });
    refresh();
  } catch (error) {
    showError(error);
  }
});

csv.addEventListener("click", () => {
  const file = job.result_files[0];
  download(`/files/${encodeURIComponent(file)}/content`, `${jobId}-metrics.csv`).catch(showError);
});

refresh();
