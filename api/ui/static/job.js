// One job: its details and progress, live curves from its metrics events, its events and checkpoints.
// History is paged through GET .../events; a job that is not finished is then followed over the SSE
// stream (read with fetch, resuming with `after` after a dropped connection) until it ends.
import { api, formatSeconds, formatTime, listAll, request, sseMessages, TERMINAL } from "./api.js";
import { JobCharts } from "./charts.js";
import { actionButton, h, table } from "./dom.js";

const RECONNECT_MS = 1000;
const EVENTS_SHOWN = 200;

const sleep = (ms, signal) => new Promise((resolve) => {
  const timer = setTimeout(resolve, ms);
  signal.addEventListener("abort", () => { clearTimeout(timer); resolve(); }, { once: true });
});

function details(job, metrics) {
  const progress = metrics ? `step ${metrics.step}/${metrics.total_steps}` : "not started";
  const eta = metrics && !TERMINAL.has(job.status) ? ` · ETA ${formatSeconds(metrics.eta_seconds)}` : "";
  const tokens = job.trained_tokens ?? metrics?.trained_tokens;
  return h("dl", { class: "details" },
    h("dt", {}, "Status"), h("dd", { id: "job-status", class: `status ${job.status}` }, job.status),
    h("dt", {}, "Model"), h("dd", {}, job.model),
    h("dt", {}, "Progress"), h("dd", { id: "job-progress" }, progress + eta),
    h("dt", {}, "Trained tokens"), h("dd", {}, tokens ?? ""),
    h("dt", {}, "Fine-tuned model"), h("dd", { id: "job-model" }, job.fine_tuned_model ?? ""),
    job.error ? h("dd", { class: "error" }, job.error.message) : null);
}

function eventRow(event) {
  return h("tr", {}, h("td", {}, formatTime(event.created_at)), h("td", {}, event.level),
    h("td", {}, event.type), h("td", {}, event.message));
}

async function checkpoints(jobId, signal) {
  const items = await listAll(`/fine_tuning/jobs/${encodeURIComponent(jobId)}/checkpoints`, { signal });
  if (items.length === 0) return h("p", {}, "No checkpoint models (yet).");
  return table(["Step", "Model", "Train loss", "Valid loss", "Created"], items.map((item) => h("tr", {},
    h("td", {}, item.step_number), h("td", {}, item.fine_tuned_model_checkpoint),
    h("td", {}, item.metrics.train_loss?.toFixed(4) ?? ""), h("td", {}, item.metrics.valid_loss?.toFixed(4) ?? ""),
    h("td", {}, formatTime(item.created_at)))), { id: "checkpoints-table" });
}

export async function renderJob(main, jobId, signal) {
  const path = `/fine_tuning/jobs/${encodeURIComponent(jobId)}`;
  let job = await api(path, { signal });
  let latest = null;
  const head = h("div", { class: "card" });
  const chartBox = h("div", { class: "charts" });
  const eventRows = h("tbody");
  const checkpointBox = h("div", { id: "checkpoints" });
  main.append(h("h1", {}, job.id), head, chartBox,
    h("h2", {}, "Events"), h("div", { class: "events" }, h("table", { id: "events-table" }, eventRows)),
    h("h2", {}, "Checkpoints"), checkpointBox);
  const charts = new JobCharts(chartBox);

  const showHead = () => {
    const post = (verb) => async () => { job = await api(`${path}/${verb}`, { method: "POST" }); showHead(); };
    const buttons = [];
    const button = (label, verb) => actionButton(label, post(verb), { class: verb, id: `job-${verb}` });
    if (!TERMINAL.has(job.status) && !job.cancel_requested) buttons.push(button("Cancel", "cancel"));
    if (job.status === "paused") buttons.push(button("Resume", "resume"));
    else if (!TERMINAL.has(job.status) && !job.pause_requested) buttons.push(button("Pause", "pause"));
    head.replaceChildren(details(job, latest), h("div", { class: "row" }, buttons));
  };
  const take = (event) => {
    if (event.type === "metrics") {
      charts.add(event.data);
      if (!latest || event.data.step >= latest.step) latest = event.data;
    }
    eventRows.prepend(eventRow(event));
    while (eventRows.children.length > EVENTS_SHOWN) eventRows.lastChild.remove();
  };

  const history = await listAll(`${path}/events`, { signal });
  history.reverse().forEach(take); // the list is newest first
  charts.draw();
  showHead();
  checkpointBox.replaceChildren(await checkpoints(jobId, signal));
  let after = history.length ? history[history.length - 1].id : null;

  while (!TERMINAL.has(job.status) && !signal.aborted) {
    try {
      const query = new URLSearchParams({ stream: "true" });
      if (after) query.set("after", after);
      const response = await request(`${path}/events?${query}`, { signal });
      for await (const message of sseMessages(response)) {
        const event = JSON.parse(message.data);
        after = event.id;
        take(event);
        // A message event may be a status change (started, paused, done): the job object says which.
        if (event.type === "message") job = await api(path, { signal });
        showHead();
      }
    } catch (error) {
      if (signal.aborted) return;
      if (error.status && error.status < 500) throw error;
    }
    job = await api(path, { signal }); // the stream ended or dropped: finished, or reconnect
    showHead();
    if (!TERMINAL.has(job.status)) await sleep(RECONNECT_MS, signal);
  }
  if (!signal.aborted) checkpointBox.replaceChildren(await checkpoints(jobId, signal));
}
