// The fleet page: polls /ui/api/fleet and redraws its tables. Everything
// derived (rates, quantiles, warnings) comes computed from the server; this
// script only lays it out, as text (never as HTML).
"use strict";

const REFRESH_MS = 2000;
const cell = ui.cell;

function fill(tbody, rows) {
  tbody.replaceChildren(...rows);
}

function handlerRow(h) {
  const tr = document.createElement("tr");
  tr.dataset.handler = h.handler;
  tr.dataset.runtime = h.runtime;
  tr.className = h.state === "serving" ? "" : "attention";
  cell(tr, "handler", h.handler);
  cell(tr, "runtime", h.runtime);
  cell(tr, "version", h.version);
  cell(tr, "state", h.state);
  cell(tr, "per_second", h.per_second == null ? null : h.per_second.toFixed(1), true);
  for (const field of ["received", "succeeded", "failed", "retried", "dead_lettered", "in_flight"]) {
    cell(tr, field, h[field], true);
  }
  cell(tr, "pending", h.lag && h.lag.pending, true);
  cell(tr, "ack_pending", h.lag && h.lag.ack_pending, true);
  cell(tr, "dead_letters", h.dead_letters, true);
  cell(tr, "p50", h.p50, true);
  cell(tr, "p99", h.p99, true);
  cell(tr, "refused", h.refused ? h.refused.split("\n")[0] : "");
  return tr;
}

function runtimeRow(r) {
  const tr = document.createElement("tr");
  tr.dataset.runtime = r.runtime;
  cell(tr, "runtime", r.runtime);
  cell(tr, "host", r.host);
  cell(tr, "pid", r.pid, true);
  cell(tr, "eventhost", r.eventhost);
  cell(tr, "up", r.up_seconds + " s", true);
  cell(tr, "handlers", r.handlers, true);
  cell(tr, "leases", r.leases, true);
  cell(tr, "source", r.source);
  return tr;
}

function draw(view) {
  fill(document.querySelector("#handlers tbody"), view.handlers.map(handlerRow));
  fill(document.querySelector("#runtimes tbody"), view.runtimes.map(runtimeRow));
  $("no-handlers").hidden = view.handlers.length > 0;
  const problems = view.warnings.concat(view.unreadable.map((what) => "could not read " + what));
  const list = $("warnings");
  list.replaceChildren(...problems.map((text) => {
    const li = document.createElement("li");
    li.textContent = text;
    return li;
  }));
  $("problems").hidden = problems.length === 0;
}

async function refresh() {
  const status = $("status");
  try {
    draw(await ui.get("/ui/api/fleet"));
    status.textContent = "updated " + new Date().toLocaleTimeString();
    status.classList.remove("error");
  } catch (err) {
    status.textContent = "cannot reach the console (" + err.message + "); showing the last answer";
    status.classList.add("error");
  }
  setTimeout(refresh, REFRESH_MS);
}

refresh();
