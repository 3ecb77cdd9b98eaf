import { api, authHeaders, el, fill, listAll, requireKey, showError, when } from "./common.js";

await requireKey();
const progress = document.getElementById("progress");
const result = document.getElementById("upload-result");
const drop = document.getElementById("drop");
const input = document.getElementById("file-input");

// XMLHttpRequest, not fetch: only it reports the upload's progress.
function upload(file) {
  showError(null);
  result.replaceChildren(`Uploading ${file.name}…`);
  progress.value = 0;
  const form = new FormData();
  form.append("purpose", "fine-tune");
  form.append("file", file, file.name);
  const xhr = new XMLHttpRequest();
  xhr.open("POST", "/v1/files");
  for (const [name, value] of Object.entries(authHeaders())) xhr.setRequestHeader(name, value);
  xhr.upload.addEventListener("progress", (e) => {
    if (e.lengthComputable) progress.value = Math.round((100 * e.loaded) / e.total);
  });
  xhr.addEventListener("load", () => {
    let body = null;
    try {
      body = JSON.parse(xhr.responseText);
    } catch {
      // not JSON: the status says it
    }
    if (xhr.status >= 200 && xhr.status < 300) {
      progress.value = 100;
      result.replaceChildren(`Uploaded ${body.filename} as ${body.id}.`);
      refresh();
    } else {
      showBadFile(file.name, body?.error?.message || `${xhr.status} ${xhr.statusText}`);
    }
  });
  xhr.addEventListener("error", () => showBadFile(file.name, "the connection failed"));
  xhr.send(form);
}

// The validator names each bad line ("line 2: not valid JSON (...)"; ...): one list item per problem.
function showBadFile(name, message) {
  progress.value = 0;
  const [summary, ...problems] = message.split("; ");
  result.replaceChildren(
    el("p", { class: "error" }, `${name} was refused: ${summary}`),
    problems.length ? el("ul", { class: "problems" }, problems.map((p) => el("li", {}, p))) : "",
  );
}

drop.addEventListener("dragover", (e) => {
  e.preventDefault();
  drop.classList.add("over");
});
drop.addEventListener("dragleave", () => drop.classList.remove("over"));
drop.addEventListener("drop", (e) => {
  e.preventDefault();
  drop.classList.remove("over");
  if (e.dataTransfer.files.length) upload(e.dataTransfer.files[0]);
});
input.addEventListener("change", () => {
  if (input.files.length) upload(input.files[0]);
  input.value = "";
});

async function remove(file) {
  try {
    await api(`/files/${encodeURIComponent(file.id)}`, { method: "DELETE" });
    showError(null);
    refresh();
  } catch (error) {
    showError(error); // 409: the job that uses it
  }
}

async function refresh() {
  try {
    const files = await listAll("/files");
    fill(
      document.querySelector("#files tbody"),
      files.map((f) =>
        el(
          "tr",
          {},
          el("td", {}, el("code", {}, f.id)),
          el("td", {}, f.filename),
          el("td", { class: "num" }, f.bytes),
          el("td", {}, when(f.created_at)),
          el("td", {}, f.status),
          el("td", {}, el("button", { type: "button", onclick: () => remove(f), "aria-label": `Delete ${f.filename}` }, "Delete")),
        ),
      ),
    );
  } catch (error) {
    showError(error);
  }
}

refresh();
