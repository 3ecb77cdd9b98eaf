import { api, download, el, fill, listAll, requireKey, showError, when } from "./common.js";

await requireKey();

// A fine-tuned model's parent is the model its job trained from: follow the chain up to a base model.
function lineage(id, parentOf) {
  const chain = [id];
  const seen = new Set(chain);
  while (parentOf.has(chain[0]) && !seen.has(parentOf.get(chain[0]))) {
    chain.unshift(parentOf.get(chain[0]));
    seen.add(chain[0]);
  }
  return chain;
}

async function remove(model) {
  try {
    await api(`/models/${encodeURIComponent(model.id)}`, { method: "DELETE" });
    showError(null);
    refresh();
  } catch (error) {
    showError(error); // 409: the fine-tunes trained from it
  }
}

function gguf(model, button) {
  button.disabled = true;
  button.textContent = "Exporting…";
  const name = `${model.id.replace(/[^A-Za-z0-9._-]/g, "_")}-f16.gguf`;
  download(`/models/${encodeURIComponent(model.id)}/content?format=gguf`, name)
    .catch(showError)
    .finally(() => {
      button.disabled = false;
      button.textContent = "Download GGUF";
    });
}

function actions(model, fineTuned) {
  if (!fineTuned) return el("td", {}, el("a", { href: `/ui/playground?model=${encodeURIComponent(model.id)}` }, "Try"));
  const exportButton = el("button", { type: "button", "aria-label": `Download ${model.id} as GGUF` }, "Download GGUF");
  exportButton.addEventListener("click", () => gguf(model, exportButton));
  return el(
    "td",
    { class: "actions" },
    el("a", { href: `/ui/playground?model=${encodeURIComponent(model.id)}` }, "Try"),
    exportButton,
    el("button", { type: "button", onclick: () => remove(model), "aria-label": `Delete ${model.id}` }, "Delete"),
  );
}

async function refresh() {
  try {
    const [models, jobs] = await Promise.all([api("/models"), listAll("/fine_tuning/jobs")]);
    const parentOf = new Map(jobs.filter((j) => j.fine_tuned_model).map((j) => [j.fine_tuned_model, j.model]));
    const jobOf = new Map(jobs.filter((j) => j.fine_tuned_model).map((j) => [j.fine_tuned_model, j.id]));
    fill(
      document.querySelector("#models tbody"),
      models.data.map((m) => {
        const fineTuned = m.owned_by !== "tunesmith";
        const chain = lineage(m.id, parentOf);
        return el(
          "tr",
          { class: fineTuned ? "fine-tuned" : "base" },
          el("td", {}, el("code", {}, m.id)),
          el(
            "td",
            { class: "lineage" },
            chain.length > 1 ? chain.join(" → ") : "base model",
            jobOf.has(m.id) ? [" (", el("a", { href: `/ui/jobs/${encodeURIComponent(jobOf.get(m.id))}` }, "job"), ")"] : [],
          ),
          el("td", {}, fineTuned ? when(m.created) : ""),
          actions(m, fineTuned),
        );
      }),
    );
  } catch (error) {
    showError(error);
  }
}

refresh();
