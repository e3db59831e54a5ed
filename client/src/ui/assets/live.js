// Ferry UI: keeps a running run's states and a running step's log live over
// server-sent events. Text from the server is only ever set as textContent.
"use strict";

function setState(el, state) {
  if (!el) return;
  el.textContent = state;
  el.className = "state state-" + state;
}

function followRun(root) {
  const run = root.dataset.run;
  const events = new EventSource("/runs/" + encodeURIComponent(run) + "/events");
  events.addEventListener("update", (message) => {
    const update = JSON.parse(message.data);
    const problem = document.getElementById("live-problem");
    if (problem) problem.remove();
    setState(document.getElementById("run-state"), update.state);
    const steps = document.getElementById("run-steps");
    if (steps) steps.textContent = update.steps;
    for (const box of update.boxes) {
      const node = document.querySelector('#dag g.node[data-step="' + CSS.escape(box.key) + '"]');
      if (node) {
        node.setAttribute("data-state", box.state);
        const detail = node.querySelector("text.detail");
        if (detail && box.detail) detail.textContent = box.detail;
      }
      const head = document.querySelector('tr.sweep-head[data-box="' + CSS.escape(box.key) + '"]');
      if (head) {
        setState(head.querySelector(".state"), box.state);
        const detail = head.querySelector(".detail");
        if (detail) detail.textContent = box.detail;
      }
    }
    for (const [name, state] of Object.entries(update.step_states)) {
      const row = document.querySelector('#steps tr[data-step="' + CSS.escape(name) + '"]');
      if (row) setState(row.querySelector(".state"), state);
    }
    if (update.done) {
      events.close();
      root.dataset.live = "false";
      const cancel = document.getElementById("cancel-form");
      if (cancel) cancel.remove();
    }
  });
  events.addEventListener("problem", (message) => {
    let problem = document.getElementById("live-problem");
    if (!problem) {
      problem = document.createElement("p");
      problem.id = "live-problem";
      problem.className = "error";
      root.insertBefore(problem, root.firstChild);
    }
    problem.textContent = "Live updates: " + message.data;
  });
}

function followLog(pre) {
  const status = document.getElementById("follow-status");
  const events = new EventSource(pre.dataset.follow);
  let lines = 0;
  events.addEventListener("line", (message) => {
    const line = JSON.parse(message.data);
    const span = document.createElement("span");
    span.className = line.stream === "stderr" ? "stderr" : "stdout";
    span.dataset.attempt = String(line.attempt);
    span.textContent = line.text + "\n";
    const atBottom = window.innerHeight + window.scrollY >= document.body.scrollHeight - 4;
    pre.appendChild(span);
    lines += 1;
    if (atBottom) window.scrollTo(0, document.body.scrollHeight);
  });
  events.addEventListener("problem", (message) => {
    if (status) status.textContent = "stopped: " + message.data;
  });
  events.addEventListener("end", (message) => {
    events.close();
    pre.dataset.ended = "true";
    if (message.data && message.data !== "ended") {
      setState(document.getElementById("step-state"), message.data);
    }
    if (status) {
      status.textContent = "ended (" + lines + " lines)";
      status.className = "ended";
    }
  });
}

document.addEventListener("DOMContentLoaded", () => {
  const run = document.getElementById("run");
  if (run && run.dataset.live === "true") followRun(run);
  const log = document.getElementById("log");
  if (log && log.dataset.follow) followLog(log);
});
