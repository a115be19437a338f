// Browsing state, read-only: buckets, their keys, a value pretty-printed,
// and an event-store subject's events in order.
"use strict";

let current = null;

async function loadBuckets() {
  try {
    const buckets = await ui.get("/ui/api/state/buckets");
    $("buckets").querySelector("tbody").replaceChildren(...buckets.map((b) => {
      const tr = document.createElement("tr");
      tr.dataset.bucket = b.bucket;
      ui.linkCell(tr, "bucket", b.bucket, "#" + b.bucket, () => openBucket(b.bucket));
      ui.cell(tr, "messages", b.messages, true);
      ui.cell(tr, "bytes", b.bytes, true);
      return tr;
    }));
  } catch (err) {
    ui.showError(err);
  }
}

async function openBucket(bucket) {
  current = bucket;
  const prefix = $("key-filter").elements.prefix.value;
  try {
    const query = new URLSearchParams({ bucket, prefix }).toString();
    const listing = await ui.get("/ui/api/state/keys?" + query);
    $("bucket").hidden = false;
    $("bucket-name").textContent = bucket;
    let summary = listing.matching + " keys";
    if (listing.keys.length < listing.matching) summary += "; the first " + listing.keys.length + " are shown";
    $("keys-summary").textContent = summary;
    $("keys").replaceChildren(...listing.keys.map((key) => {
      const li = ui.element("li");
      const button = ui.element("button", key);
      button.type = "button";
      button.dataset.key = key;
      button.addEventListener("click", () => openValue(bucket, key));
      li.appendChild(button);
      return li;
    }));
    ui.showError(null);
  } catch (err) {
    ui.showError(err);
  }
}

async function openValue(bucket, key) {
  try {
    const value = await ui.get("/ui/api/state/value?" + new URLSearchParams({ bucket, key }));
    $("value").hidden = false;
    $("value-key").textContent = bucket + " / " + key;
    $("value-meta").textContent = "revision " + value.revision + (value.cut ? " (cut)" : "");
    $("value-pending").hidden = !value.pending;
    $("value-body").textContent = typeof value.value === "string"
      ? value.value : JSON.stringify(value.value, null, 2);
    ui.showError(null);
  } catch (err) {
    ui.showError(err);
  }
}

async function showEvents(subject) {
  try {
    const listing = await ui.get("/ui/api/state/events?" + new URLSearchParams({ subject }));
    let summary = listing.events.length + " events on " + listing.subject + " (stream " + listing.stream + ")";
    if (listing.more) summary += "; more follow";
    $("events-summary").textContent = summary;
    $("events").querySelector("tbody").replaceChildren(...listing.events.map((e) => {
      const tr = document.createElement("tr");
      ui.cell(tr, "sequence", e.sequence, true);
      ui.cell(tr, "stored", new Date(e.stored).toLocaleString());
      ui.cell(tr, "id", e.id);
      ui.cell(tr, "type", e.type + (e.pending ? " (pending: a commit under way may undo it)" : ""));
      ui.cell(tr, "data", "").replaceChildren(ui.element("pre", JSON.stringify(e.data, null, 2)));
      return tr;
    }));
    ui.showError(null);
  } catch (err) {
    ui.showError(err);
  }
}

$("key-filter").addEventListener("submit", (event) => {
  event.preventDefault();
  if (current) openBucket(current);
});
$("subject-form").addEventListener("submit", (event) => {
  event.preventDefault();
  showEvents($("subject-form").elements.subject.value.trim());
});
loadBuckets();
