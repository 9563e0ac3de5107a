// Sign-in and hash routing. Each page renders into <main> and stops its timers and streams when the
// AbortSignal it gets fires (on navigation or sign-out).
import { api, clearKey, getKey, setKey } from "./api.js";
import { h } from "./dom.js";
import { renderFiles, renderModels } from "./pages.js";
import { renderJob } from "./job.js";
import { renderJobs } from "./jobs.js";
import { renderPlayground } from "./playground.js";

const main = document.getElementById("main");
const nav = document.getElementById("nav");
let current = null;

const ROUTES = [
  [/^#\/jobs\/([^/]+)$/, renderJob],
  [/^#\/files$/, renderFiles],
  [/^#\/models$/, renderModels],
  [/^#\/playground$/, renderPlayground],
  [/^#\/jobs$/, renderJobs],
];

function showSignIn(message = "") {
  nav.hidden = true;
  main.replaceChildren(document.getElementById("sign-in-template").content.cloneNode(true));
  const form = document.getElementById("sign-in");
  document.getElementById("sign-in-error").textContent = message;
  form.addEventListener("submit", async (event) => {
    event.preventDefault();
    const key = document.getElementById("api-key").value.trim();
    try {
      await api("/fine_tuning/jobs?limit=1", { key }); // checks the key before keeping it
      setKey(key);
      if (!location.hash || location.hash === "#/sign-in") location.hash = "#/jobs";
      else route();
    } catch (error) {
      document.getElementById("sign-in-error").textContent = error.message;
    }
  });
}

async function route() {
  current?.abort();
  current = new AbortController();
  if (!getKey()) return showSignIn();
  nav.hidden = false;
  const hash = location.hash || "#/jobs";
  for (const [pattern, render] of ROUTES) {
    const match = hash.match(pattern);
    if (!match) continue;
    main.replaceChildren();
    try {
      await render(main, decodeURIComponent(match[1] ?? ""), current.signal);
    } catch (error) {
      if (error.name !== "AbortError") main.append(h("p", { class: "error", id: "page-error" }, error.message));
    }
    return;
  }
  location.hash = "#/jobs";
}

document.getElementById("sign-out").addEventListener("click", () => {
  clearKey();
  current?.abort();
  showSignIn();
});
window.addEventListener("lorasp:unauthorized", () => {
  clearKey();
  current?.abort();
  showSignIn("The key was refused (revoked or unknown): sign in again.");
});
window.addEventListener("hashchange", route);
route();
