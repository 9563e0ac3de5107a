// The jobs list: status, model, progress (step/total from the latest metrics event), ETA, trained tokens,
// and cancel / pause / resume where the job's status allows them. Refreshes while any job is unfinished.
import { api, formatSeconds, formatTime, TERMINAL } from "./api.js";
import { actionButton, h, table } from "./dom.js";

const REFRESH_MS = 2000;
const PAGE = 50;
// A finished job's latest metrics never change: fetched once per page visit.
const finishedMetrics = new Map();

export async function latestMetrics(jobId, signal) {
  const page = await api(`/fine_tuning/jobs/${encodeURIComponent(jobId)}/events?limit=100`, { signal });
  return page.data.find((event) => event.type === "metrics")?.data ?? null;
}

function actions(job, refresh) {
  const post = (verb) => async () => {
    await api(`/fine_tuning/jobs/${encodeURIComponent(job.id)}/${verb}`, { method: "POST" });
    await refresh();
  };
  const buttons = [];
  const stopping = job.cancel_requested || job.pause_requested;
  if (!TERMINAL.has(job.status) && !job.cancel_requested) {
    buttons.push(actionButton("Cancel", post("cancel"), { class: "cancel" }));
  }
  if ((job.status === "queued" || job.status === "running") && !stopping) {
    buttons.push(actionButton("Pause", post("pause"), { class: "pause" }));
  }
  if (job.status === "paused") buttons.push(actionButton("Resume", post("resume"), { class: "resume" }));
  return buttons;
}

function row(job, metrics, refresh) {
  const step = metrics ? `${metrics.step}/${metrics.total_steps}` : "";
  const eta = !TERMINAL.has(job.status) && metrics ? formatSeconds(metrics.eta_seconds) : "";
  const tokens = job.trained_tokens ?? metrics?.trained_tokens ?? "";
  const asked = job.status !== "running" ? "" : job.cancel_requested ? " (cancelling)" : job.pause_requested ? " (pausing)" : "";
  const status = job.status + asked; // the request flags stay set after the worker has acted on them
  return h("tr", { "data-job-id": job.id },
    h("td", {}, h("a", { href: `#/jobs/${encodeURIComponent(job.id)}` }, job.id)),
    h("td", {}, h("span", { class: `status ${job.status}` }, status)),
    h("td", {}, job.model),
    h("td", { class: "num progress" }, step),
    h("td", { class: "num" }, eta),
    h("td", { class: "num" }, tokens),
    h("td", {}, job.fine_tuned_model ?? ""),
    h("td", {}, formatTime(job.created_at)),
    h("td", {}, actions(job, refresh)));
}

export async function renderJobs(main, _param, signal) {
  const body = h("div", { id: "jobs" });
  main.append(h("h1", {}, "Fine-tuning jobs"), body);
  let timer = null;
  const refresh = async () => {
    clearTimeout(timer);
    const page = await api(`/fine_tuning/jobs?limit=${PAGE}`, { signal });
    const metrics = await Promise.all(page.data.map(async (job) => {
      if (finishedMetrics.has(job.id)) return finishedMetrics.get(job.id);
      const latest = await latestMetrics(job.id, signal);
      if (TERMINAL.has(job.status)) finishedMetrics.set(job.id, latest);
      return latest;
    }));
    if (signal.aborted) return;
    body.replaceChildren(page.data.length === 0
      ? h("p", { id: "no-jobs" }, "No fine-tuning jobs yet.")
      : table(["Job", "Status", "Model", "Step", "ETA", "Trained tokens", "Fine-tuned model", "Created", ""],
        page.data.map((job, index) => row(job, metrics[index], refresh)), { id: "jobs-table" }));
    if (page.data.some((job) => !TERMINAL.has(job.status))) {
      timer = setTimeout(() => refresh().catch(() => {}), REFRESH_MS);
    }
  };
  signal.addEventListener("abort", () => clearTimeout(timer));
  await refresh();
}
