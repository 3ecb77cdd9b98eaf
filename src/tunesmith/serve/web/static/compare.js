import { LineChart, align } from "./chart.js";
import { el, listAll, metricsOf, requireKey, showError } from "./common.js";

await requireKey();
const chart = new LineChart(document.getElementById("compare-chart"), "training loss");
const ROWS = [
  ["Base model", (j) => j.model],
  ["Method", (j) => j.method?.type],
  ["Status", (j) => j.status],
  ["Seed", (j) => j.seed],
  ["Trained tokens", (j) => j.trained_tokens],
  ["Fine-tuned model", (j) => j.fine_tuned_model],
];
let jobs = [];

async function show() {
  const chosen = jobs.filter((j) => document.getElementById(`pick-${j.id}`).checked);
  const url = new URL(location.href);
  url.searchParams.set("jobs", chosen.map((j) => j.id).join(","));
  history.replaceState(null, "", url);
  try {
    const curves = await Promise.all(
      chosen.map(async (j) => {
        const rows = metricsOf(await listAll(`/fine_tuning/jobs/${encodeURIComponent(j.id)}/events`, 1000));
        return rows.filter((r) => typeof r.train_loss === "number").map((r) => [r.step, r.train_loss]);
      }),
    );
    chart.update(
      chosen.map((j) => j.id),
      align(curves),
    );
  } catch (error) {
    showError(error);
  }
  const keys = [...new Set(chosen.flatMap((j) => Object.keys(j.hyperparameters || {})))];
  const rows = [...ROWS, ...keys.map((k) => [k, (j) => j.hyperparameters?.[k]])];
  document
    .querySelector("#hyper thead")
    .replaceChildren(el("tr", {}, el("th", { scope: "col" }, ""), chosen.map((j) => el("th", { scope: "col" }, j.id))));
  document.querySelector("#hyper tbody").replaceChildren(
    ...rows.map(([label, get]) =>
      el("tr", {}, el("th", { scope: "row" }, label), chosen.map((j) => el("td", {}, String(get(j) ?? "")))),
    ),
  );
}

async function load() {
  jobs = await listAll("/fine_tuning/jobs");
  const wanted = (new URLSearchParams(location.search).get("jobs") || "").split(",").filter(Boolean);
  const preset = wanted.length ? wanted : jobs.slice(0, 2).map((j) => j.id);
  document.getElementById("choices").replaceChildren(
    ...jobs.map((j) =>
      el(
        "div",
        {},
        el("input", { type: "checkbox", id: `pick-${j.id}`, checked: preset.includes(j.id), onchange: show }),
        el("label", { for: `pick-${j.id}` }, `${j.id} · ${j.model} · ${j.status}`),
      ),
    ),
  );
  show();
}

load().catch(showError);
