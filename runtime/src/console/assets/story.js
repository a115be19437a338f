// The story of an event: search the trail, then show every event of the
// chain, each after the one that caused it, with what every handler did.
// The search stays in the page address, so a story can be shared as a link.
"use strict";

function duration(us) {
  if (us == null) return "";
  return us < 1000 ? us + " µs" : (us / 1000).toFixed(1) + " ms";
}

function attemptRow(handler, a) {
  const tr = document.createElement("tr");
  tr.dataset.handler = handler;
  tr.dataset.outcome = a.outcome;
  ui.cell(tr, "handler", handler);
  ui.cell(tr, "attempt", a.attempt === 0 ? "not run" : a.attempt, true);
  ui.cell(tr, "outcome", a.outcome).className = "outcome-" + a.outcome;
  ui.cell(tr, "kind", a.kind);
  ui.cell(tr, "error", a.error);
  ui.cell(tr, "duration", duration(a.duration_us), true);
  ui.cell(tr, "emitted", a.emitted || "", true);
  ui.cell(tr, "version", a.version);
  ui.cell(tr, "runtime", a.runtime);
  ui.cell(tr, "at", new Date(a.at).toLocaleTimeString());
  return tr;
}

function eventItem(event) {
  const li = ui.element("li", null, event.matched ? "matched" : "");
  li.dataset.id = event.id;
  li.dataset.type = event.type;
  li.style.marginLeft = (event.depth * 2) + "rem";
  const head = ui.element("div", null, "event-head");
  head.append(
    ui.element("strong", (event.depth ? "↳ " : "") + event.type),
    ui.element("span", "id " + event.id, "muted"),
    ui.element("span", "on " + event.nats_subject, "muted"),
    ui.element("span", new Date(event.first_seen).toLocaleString(), "muted"),
  );
  if (event.key) head.append(ui.element("span", event.key[0] + " = " + event.key[1]));
  if (event.subject) head.append(ui.element("span", "subject " + event.subject));
  li.appendChild(head);
  const table = ui.element("table");
  const header = document.createElement("tr");
  for (const h of ["Handler", "Attempt", "Outcome", "Kind", "Error", "Ran", "Emitted", "Version", "Runtime", "At"]) {
    header.appendChild(ui.element("th", h));
  }
  table.appendChild(ui.element("thead")).appendChild(header);
  const body = table.appendChild(ui.element("tbody"));
  for (const h of event.handlers) {
    for (const a of h.attempts) body.appendChild(attemptRow(h.handler, a));
  }
  li.appendChild(table);
  const records = event.handlers.filter((h) => h.record);
  if (records.length) {
    const now = ui.element("p", "Records now: ", "muted");
    records.forEach((h, i) => {
      const record = ui.element("span", h.handler + " " + h.record);
      record.dataset.recordOf = h.handler;
      now.append(i ? "; " : "", record);
    });
    li.appendChild(now);
  }
  const emitted = event.handlers.filter((h) => h.emitted).map((h) => h.emitted + " by " + h.handler);
  if (emitted.length) {
    let line = "Emitted " + emitted.join(", ");
    line += event.caused ? "; " + event.caused + " taken by a handler, below" : "; none taken by a handler yet";
    li.appendChild(ui.element("p", line, "muted"));
  }
  if (event.stored) {
    const details = ui.element("details");
    details.append(ui.element("summary", "The event as stored (stream sequence " + event.stored.sequence + ")"),
      ui.element("pre", JSON.stringify(event.stored.data, null, 2)));
    li.appendChild(details);
  }
  return li;
}

async function tell(q, by) {
  const query = new URLSearchParams({ q });
  if (by) query.set("by", by);
  history.replaceState(null, "", "/ui/story?" + query);
  try {
    $("status").textContent = "searching…";
    const story = await ui.get("/ui/api/story?" + query);
    let summary;
    if (!story.trail) summary = "No trail yet: no runtime with [story] on has started on this NATS.";
    else if (!story.found_by) summary = "Nothing in the trail matches " + JSON.stringify(story.query) + ".";
    else summary = story.events.length + " events, found by " + story.found_by + (story.more ? "; the story is cut, more entries exist" : "");
    $("summary").textContent = summary;
    $("timeline").replaceChildren(...story.events.map(eventItem));
    ui.showError(null);
  } catch (err) {
    ui.showError(err);
  } finally {
    $("status").textContent = "";
  }
}

$("search").addEventListener("submit", (event) => {
  event.preventDefault();
  const form = $("search").elements;
  tell(form.q.value.trim(), form.by.value);
});

const asked = new URLSearchParams(location.search);
if (asked.get("q")) {
  $("search").elements.q.value = asked.get("q");
  $("search").elements.by.value = asked.get("by") || "";
  tell(asked.get("q"), asked.get("by"));
}
