// Files, and models with their adapters: download (fetch + blob, so the key stays a header), and the
// serving cache's load / unload / pin with what is resident now.
import { api, formatTime, listAll, request } from "./api.js";
import { actionButton, h, table } from "./dom.js";

export async function renderFiles(main, _param, signal) {
  const files = await listAll("/files", { signal });
  main.append(h("h1", {}, "Files"), files.length === 0 ? h("p", {}, "No files.") : table(
    ["File", "Name", "Purpose", "Bytes", "Format", "Examples", "Created"],
    files.map((file) => h("tr", {}, h("td", {}, file.id), h("td", {}, file.filename), h("td", {}, file.purpose),
      h("td", { class: "num" }, file.bytes), h("td", {}, file.lorasp?.format ?? ""),
      h("td", { class: "num" }, file.lorasp?.examples ?? ""), h("td", {}, formatTime(file.created_at)))),
    { id: "files-table" }));
}

async function download(modelId) {
  const response = await request(`/adapters/${encodeURIComponent(modelId)}/download`);
  const disposition = response.headers.get("Content-Disposition") ?? "";
  const name = disposition.match(/filename="?([^";]+)"?/)?.[1] ?? `${modelId.replaceAll(":", "_")}.tar.gz`;
  const url = URL.createObjectURL(await response.blob());
  const link = h("a", { href: url, download: name });
  document.body.append(link);
  link.click();
  link.remove();
  setTimeout(() => URL.revokeObjectURL(url), 60_000);
}

export async function renderModels(main, _param, signal) {
  const residentBox = h("div", { id: "resident" });
  const modelBox = h("div");
  main.append(h("h1", {}, "Models"), modelBox, h("h2", {}, "Resident adapters (serving cache)"), residentBox);

  const refresh = async () => {
    const [models, loaded] = await Promise.all([api("/models", { signal }), api("/adapters/loaded", { signal })]);
    const resident = new Map(loaded.data.map((adapter) => [adapter.id, adapter]));
    const adapterPath = (id, verb) => `/adapters/${encodeURIComponent(id)}/${verb}`;
    const serve = (id, verb, body) => async () => { await api(adapterPath(id, verb), { method: "POST", body }); await refresh(); };
    modelBox.replaceChildren(table(["Model", "Kind", "Task", "Base", "Rank", "Resident", ""],
      models.data.map((model) => {
        const info = model.lorasp ?? {};
        const adapter = info.kind === "adapter";
        const state = resident.get(model.id);
        return h("tr", { "data-model-id": model.id }, h("td", {}, model.id), h("td", {}, info.kind ?? ""),
          h("td", {}, info.task ?? ""), h("td", {}, info.base_model ?? ""), h("td", {}, info.rank ?? ""),
          h("td", { class: "resident" }, state ? (state.pinned ? "pinned" : "yes") : ""),
          h("td", {}, adapter ? [
            actionButton("Download", () => download(model.id), { class: "download" }),
            actionButton("Load", serve(model.id, "load", {}), { class: "load" }),
            actionButton(state?.pinned ? "Unpin" : "Pin", serve(model.id, "load", { pin: !state?.pinned }),
              { class: "pin" }),
            state ? actionButton("Unload", serve(model.id, "unload"), { class: "unload" }) : null,
          ] : []));
      }), { id: "models-table" }));
    residentBox.replaceChildren(loaded.data.length === 0 ? h("p", {}, "None of your adapters is loaded.") : table(
      ["Adapter", "Pinned", "Hits", "Requests", "Tokens", "Mean latency (ms)", "Last used"],
      loaded.data.map((adapter) => h("tr", { "data-adapter-id": adapter.id },
        h("td", {}, adapter.id), h("td", {}, adapter.pinned ? "yes" : ""),
        h("td", { class: "num" }, adapter.hits), h("td", { class: "num" }, adapter.requests),
        h("td", { class: "num" }, adapter.tokens_generated),
        h("td", { class: "num" }, adapter.mean_latency_ms?.toFixed?.(1) ?? ""),
        h("td", {}, formatTime(adapter.last_used_at))))));
  };
  await refresh();
}
