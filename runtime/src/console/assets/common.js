// What every console page shares: reading the JSON API, acting with the
// operator's token, and writing values into the page as text (never as
// HTML, so nothing a handler or an event says can become markup).
"use strict";

const TOKEN_KEY = "eventhost-operator-token";
const $ = (id) => document.getElementById(id);

const ui = {
  token() {
    return sessionStorage.getItem(TOKEN_KEY) || "";
  },

  async answer(response) {
    const body = await response.json().catch(() => ({ error: "HTTP " + response.status }));
    if (!response.ok) throw new Error(body.error || "HTTP " + response.status);
    return body;
  },

  async get(path) {
    return ui.answer(await fetch(path, { cache: "no-store" }));
  },

  // An action: the token goes in a header the page sets itself, which is
  // what keeps another site from acting (see docs/operations/console.md).
  async act(path, body) {
    const response = await fetch(path, {
      method: "POST",
      cache: "no-store",
      headers: { "Content-Type": "application/json", Authorization: "Bearer " + ui.token() },
      body: JSON.stringify(body),
    });
    return ui.answer(response);
  },

  // The page's error line (#error): shows `err`, or hides with none.
  showError(err) {
    $("error").textContent = err ? err.message || String(err) : "";
    $("error").hidden = !err;
  },

  cell(row, field, text, numeric) {
    const td = document.createElement("td");
    td.dataset.field = field;
    td.textContent = text == null || text === "" ? "–" : String(text);
    if (numeric) td.className = "num";
    row.appendChild(td);
    return td;
  },

  // A cell holding a link that opens something on this page.
  linkCell(row, field, text, href, open) {
    const link = ui.element("a", text);
    link.href = href;
    link.addEventListener("click", (event) => {
      event.preventDefault();
      open();
    });
    ui.cell(row, field, "").replaceChildren(link);
  },

  element(tag, text, className) {
    const node = document.createElement(tag);
    if (text != null) node.textContent = String(text);
    if (className) node.className = className;
    return node;
  },

  age(seconds) {
    if (seconds < 60) return seconds + " s";
    if (seconds < 3600) return Math.floor(seconds / 60) + " min";
    if (seconds < 86400) return Math.floor(seconds / 3600) + " h";
    return Math.floor(seconds / 86400) + " d";
  },

  // The header's token form: checks a token with the console before
  // keeping it for this tab.
  async showOperator() {
    const who = $("operator");
    if (!ui.token()) {
      who.textContent = "read-only";
      return null;
    }
    try {
      const response = await fetch("/ui/api/whoami", {
        cache: "no-store",
        headers: { Authorization: "Bearer " + ui.token() },
      });
      const body = await ui.answer(response);
      who.textContent = "acting as " + body.operator;
      return body.operator;
    } catch (err) {
      who.textContent = "token refused: " + err.message;
      sessionStorage.removeItem(TOKEN_KEY);
      return null;
    }
  },

  setupToken() {
    const form = $("token-form");
    if (!form) return;
    form.addEventListener("submit", (event) => {
      event.preventDefault();
      const input = $("token");
      sessionStorage.setItem(TOKEN_KEY, input.value.trim());
      input.value = "";
      ui.showOperator();
    });
    ui.showOperator();
  },
};

ui.setupToken();
