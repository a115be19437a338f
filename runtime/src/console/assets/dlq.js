// Dead-letter triage: a handler's queue filtered, a letter opened, and
// replay or purge of a selection or of everything the filter matches,
// confirmed on the page and reported letter by letter, with each replayed
// event's new fate as it comes.
"use strict";

const state = { filter: null, listing: null, selected: new Set(), pending: null, open: null };

async function loadQueues() {
  try {
    const queues = await ui.get("/ui/api/dlq/queues");
    $("queues").replaceChildren(...queues.map((q) => {
      const li = ui.element("li");
      const button = ui.element("button", q.handler + " (" + q.waiting + ")");
      button.type = "button";
      button.dataset.handler = q.handler;
      button.addEventListener("click", () => {
        $("filter").elements.handler.value = q.handler;
        applyFilter();
      });
      li.appendChild(button);
      return li;
    }));
    $("no-queues").hidden = queues.length > 0;
  } catch (err) {
    ui.showError(err);
  }
}

function filterFromForm() {
  const filter = {};
  for (const name of ["handler", "kind", "text", "type", "older_than", "newer_than"]) {
    const value = $("filter").elements[name].value.trim();
    if (value) filter[name] = value;
  }
  return filter;
}

async function applyFilter() {
  state.filter = filterFromForm();
  state.selected.clear();
  const query = new URLSearchParams(state.filter).toString();
  history.replaceState(null, "", "/ui/dlq?" + query);
  try {
    state.listing = await ui.get("/ui/api/dlq?" + query);
    ui.showError(null);
    drawLetters();
  } catch (err) {
    ui.showError(err);
  }
}

function drawLetters() {
  const listing = state.listing;
  $("results").hidden = false;
  $("handler-name").textContent = listing.handler;
  let summary = listing.matching + " of " + listing.read + " dead letters match";
  if (listing.more) summary += " (only the oldest " + listing.read + " were read)";
  if (listing.letters.length < listing.matching) summary += "; the first " + listing.letters.length + " are shown";
  $("summary").textContent = summary;
  $("letters").querySelector("tbody").replaceChildren(...listing.letters.map(letterRow));
  $("letters").hidden = listing.letters.length === 0;
  $("select-all").checked = false;
  updateButtons();
}

function letterRow(letter) {
  const tr = document.createElement("tr");
  tr.dataset.sequence = letter.sequence;
  const check = document.createElement("input");
  check.type = "checkbox";
  check.setAttribute("aria-label", "select letter " + letter.sequence);
  check.addEventListener("change", () => {
    if (check.checked) state.selected.add(letter.sequence);
    else state.selected.delete(letter.sequence);
    updateButtons();
  });
  tr.appendChild(document.createElement("td")).appendChild(check);
  ui.linkCell(tr, "sequence", letter.sequence, "#letter-" + letter.sequence,
    () => openLetter(letter.sequence));
  tr.lastChild.className = "num";
  ui.cell(tr, "age", ui.age(letter.age_seconds));
  ui.cell(tr, "event_id", letter.event_id);
  ui.cell(tr, "type", letter.event_type);
  ui.cell(tr, "kind", letter.error_kind);
  ui.cell(tr, "error", letter.error && letter.error.split("\n")[0]);
  ui.cell(tr, "attempts", letter.attempts, true);
  ui.cell(tr, "version", letter.version);
  return tr;
}

function updateButtons() {
  const none = state.selected.size === 0;
  $("replay-selected").disabled = none;
  $("purge-selected").disabled = none;
}

async function openLetter(sequence) {
  const handler = state.listing.handler;
  try {
    const story = await ui.get("/ui/api/dlq/" + encodeURIComponent(handler) + "/" + sequence);
    state.open = story;
    $("letter").hidden = false;
    $("letter-seq").textContent = sequence + " of " + handler;
    const pairs = (rows) => rows.map(([name, value]) => {
      const tr = document.createElement("tr");
      ui.cell(tr, "name", name);
      ui.cell(tr, "value", value);
      return tr;
    });
    $("facts").querySelector("tbody").replaceChildren(...pairs(story.facts));
    $("original-headers").querySelector("tbody").replaceChildren(...pairs(story.headers));
    $("letter-record").textContent = story.record_state || "no record (the message never had one)";
    // Every handler's part in it, and what it caused: the story page.
    $("letter-story").hidden = !story.event_id;
    if (story.event_id) $("letter-story").href = "/ui/story?" + new URLSearchParams({ q: story.event_id, by: "id" });
    $("payload").textContent = typeof story.payload === "string"
      ? story.payload : JSON.stringify(story.payload, null, 2);
    $("letter").scrollIntoView();
  } catch (err) {
    ui.showError(err);
  }
}

// An action waits for the operator's confirmation on the page.
function ask(action, selection, text) {
  state.pending = { action, selection };
  $("confirm-text").textContent = text;
  $("confirm").hidden = false;
}

function selectionOf(which) {
  const handler = state.listing.handler;
  if (which === "selected") return { handler, sequences: Array.from(state.selected) };
  if (which === "open") return { handler, sequences: [state.open.sequence] };
  return { filter: state.filter, up_to: state.listing.last_sequence };
}

function countOf(which) {
  if (which === "selected") return state.selected.size;
  if (which === "open") return 1;
  return state.listing.matching;
}

function wire(id, action, which) {
  $(id).addEventListener("click", () => {
    const n = countOf(which);
    const verb = action === "replay" ? "Replay" : "Purge (delete for good)";
    ask(action, selectionOf(which), verb + " " + n + " dead letter" + (n === 1 ? "" : "s") +
      " of " + state.listing.handler + "?");
  });
}

async function confirmed() {
  const { action, selection } = state.pending;
  $("confirm").hidden = true;
  state.pending = null;
  let report;
  try {
    report = await ui.act("/ui/api/dlq/" + action, selection);
  } catch (err) {
    ui.showError(err);
    return;
  }
  showReport(action, report);
  // The letter on show may be gone now; the report says what became of it.
  $("letter").hidden = true;
  state.open = null;
  await applyFilter();
  loadQueues();
}

function showReport(action, report) {
  const done = action === "replay" ? "replayed" : "purged";
  let text = done + " " + report.done.length;
  if (report.failed.length) {
    text += "; " + report.failed.length + " failed: " +
      report.failed.map((f) => f.sequence + " (" + f.error + ")").join(", ");
  }
  $("report").hidden = false;
  $("report-summary").textContent = text;
  $("fates").querySelector("tbody").replaceChildren(...report.done.map((d) => {
    const tr = document.createElement("tr");
    tr.dataset.sequence = d.sequence;
    ui.cell(tr, "sequence", d.sequence, true);
    ui.cell(tr, "event_id", d.event_id);
    ui.cell(tr, "subject", d.subject || (action === "purge" ? "deleted" : ""));
    const fate = ui.cell(tr, "fate", action === "replay" ? "…" : "");
    if (action === "replay" && d.record) followFate(fate, d.record, Date.now());
    else if (action === "replay") fate.textContent = "no record to follow: see the queue";
    return tr;
  }));
}

// A replayed event's record, read every second until it is final.
async function followFate(cell, record, started) {
  try {
    const fate = await ui.get("/ui/api/record?ref=" + encodeURIComponent(record));
    cell.textContent = fate.state;
    if (fate.state === "succeeded" || fate.state === "dead_lettered") return;
  } catch (err) {
    cell.textContent = "unknown (" + err.message + ")";
  }
  if (Date.now() - started < 120000) setTimeout(() => followFate(cell, record, started), 1000);
}

$("filter").addEventListener("submit", (event) => {
  event.preventDefault();
  applyFilter();
});
$("select-all").addEventListener("change", () => {
  const all = $("select-all").checked;
  for (const box of $("letters").querySelectorAll("tbody input[type=checkbox]")) {
    box.checked = all;
    const sequence = Number(box.closest("tr").dataset.sequence);
    if (all) state.selected.add(sequence);
    else state.selected.delete(sequence);
  }
  updateButtons();
});
wire("replay-selected", "replay", "selected");
wire("replay-matching", "replay", "matching");
wire("purge-selected", "purge", "selected");
wire("purge-matching", "purge", "matching");
wire("replay-one", "replay", "open");
$("confirm-yes").addEventListener("click", confirmed);
$("confirm-no").addEventListener("click", () => {
  state.pending = null;
  $("confirm").hidden = true;
});

// A filter in the address (a shared link) is applied at once.
const initial = new URLSearchParams(location.search);
for (const [name, value] of initial) {
  if ($("filter").elements[name]) $("filter").elements[name].value = value;
}
loadQueues();
if (initial.get("handler")) applyFilter();
