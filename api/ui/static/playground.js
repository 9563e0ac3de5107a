// Chat with any chat model of the tenant (base models, fine-tuned and checkpoint models), streaming:
// `stream: true` chat completions, read as SSE over fetch and appended delta by delta.
import { api, request, sseMessages } from "./api.js";
import { h } from "./dom.js";

export async function renderPlayground(main, _param, signal) {
  const models = (await api("/models", { signal })).data.filter((model) => model.lorasp?.task !== "seq-cls");
  const select = h("select", { id: "playground-model" },
    models.map((model) => h("option", { value: model.id }, model.id)));
  const temperature = h("input", { id: "playground-temperature", type: "number", min: 0, max: 2, step: 0.1, value: 0.7 });
  const maxTokens = h("input", { id: "playground-max-tokens", type: "number", min: 1, max: 2048, value: 64 });
  const input = h("textarea", { id: "playground-input", placeholder: "Say something…" });
  const log = h("div", { class: "chat", id: "playground-log" });
  const error = h("p", { class: "error", id: "playground-error" });
  const send = h("button", { type: "submit", id: "playground-send" }, "Send");
  let messages = [];
  const reset = h("button", { type: "button", onclick: () => { messages = []; log.replaceChildren(); } }, "New chat");
  const form = h("form", { class: "card" },
    h("div", { class: "row" }, h("label", {}, "Model ", select), h("label", {}, "Temperature ", temperature),
      h("label", {}, "Max tokens ", maxTokens), reset),
    log, input, h("div", { class: "row" }, send), error);
  main.append(h("h1", {}, "Playground"), form);

  form.addEventListener("submit", async (event) => {
    event.preventDefault();
    const content = input.value.trim();
    if (!content) return;
    error.textContent = "";
    send.disabled = true;
    messages.push({ role: "user", content });
    log.append(h("div", { class: "message user" }, content));
    const reply = h("div", { class: "message assistant", "data-done": "false" });
    log.append(reply);
    input.value = "";
    let text = "";
    try {
      const body = { model: select.value, messages, stream: true, temperature: Number(temperature.value),
        max_tokens: Number(maxTokens.value) };
      const response = await request("/chat/completions", { method: "POST", body, signal });
      for await (const message of sseMessages(response)) {
        if (message.data === "[DONE]") break;
        text += JSON.parse(message.data).choices?.[0]?.delta?.content ?? "";
        reply.textContent = text;
      }
      messages.push({ role: "assistant", content: text });
    } catch (failure) {
      messages.pop(); // the turn did not happen: it is not sent again with the next one
      error.textContent = failure.message;
    } finally {
      reply.dataset.done = "true";
      send.disabled = false;
    }
  });
}
