// My home, "Who can read my meter data": grants a utility client a site (POST
// /api/v1/sites/{id}/grants), revokes one (DELETE .../grants/{client_id}), then redraws the
// site's grants and recent log from GET /api/v1/sites/{id}/grants (session cookie). The page's
// first drawing is the server's (templates/_meter_access.html); this one prints the same text.
"use strict";

(function () {
  const LOG_LINES = 10;

  function utcText(ms) {
    return new Date(ms).toISOString().slice(0, 19).replace("T", " ");
  }

  function detailText(data, status) {
    const d = data && data.detail;
    if (typeof d === "string") return d;
    if (Array.isArray(d)) { // a 422: pydantic's list of field errors
      return d.map((x) => (x.loc || []).filter((p) => p !== "body").join(".") + ": " + x.msg).join("; ");
    }
    return "HTTP " + status;
  }

  async function api(method, url, body) {
    const opts = { method, credentials: "same-origin", headers: { Accept: "application/json" } };
    if (body !== undefined) {
      opts.headers["Content-Type"] = "application/json";
      opts.body = JSON.stringify(body);
    }
    const resp = await fetch(url, opts);
    if (resp.status === 401) {
      window.location.assign("/login"); // the session ended
      throw new Error("logged out");
    }
    let data = null;
    try { data = await resp.json(); } catch (_) { /* not JSON */ }
    if (!resp.ok) throw new Error(detailText(data, resp.status));
    return data;
  }

  function cell(tr, text, className) {
    const td = tr.insertCell();
    td.textContent = text;
    if (className) td.className = className;
    return td;
  }

  function renderGrants(box, grants) {
    const body = box.querySelector("table.grants tbody");
    body.textContent = "";
    if (!grants.length) {
      const tr = body.insertRow();
      tr.className = "empty";
      cell(tr, "No utility can read this site's meter data.").colSpan = 4;
    }
    for (const g of grants) {
      const tr = body.insertRow();
      tr.dataset.client = g.client_id;
      cell(tr, g.client_name, "name");
      cell(tr, g.client_id, "mono");
      cell(tr, utcText(g.granted_ms), "since");
      const button = document.createElement("button");
      button.type = "button";
      button.className = "small danger";
      button.dataset.action = "revoke";
      button.textContent = "Revoke";
      cell(tr, "", "act").appendChild(button);
    }
  }

  function renderDirectory(box, directory, grants) {
    // The clients a homeowner may grant to now; one that may read the site already is not
    // offered again, and a client revoked since the page loaded disappears.
    const select = box.querySelector("select[name=client_id]");
    if (!select) return;
    const granted = new Set(grants.map((g) => g.client_id));
    const chosen = select.value;
    select.textContent = "";
    for (const c of directory) {
      const option = document.createElement("option");
      option.value = c.client_id;
      option.textContent = c.name + " (" + c.client_id + ")";
      option.disabled = granted.has(c.client_id);
      select.appendChild(option);
    }
    const free = [...select.options].filter((o) => !o.disabled);
    // With every client granted already, the (disabled) list shows the first of them.
    const shown = free.some((o) => o.value === chosen) ? chosen : (free[0] || select.options[0] || {}).value;
    select.value = shown === undefined ? "" : shown;
    select.disabled = !free.length;
    box.querySelector("form.grant-form button[type=submit]").disabled = !free.length;
  }

  function renderLog(box, log) {
    const list = box.querySelector("ul.grant-log");
    list.textContent = "";
    if (!log.length) {
      const li = document.createElement("li");
      li.className = "empty muted";
      li.textContent = "No grants yet.";
      list.appendChild(li);
    }
    for (const e of log.slice(0, LOG_LINES)) {
      const li = document.createElement("li");
      li.dataset.action = e.action;
      const part = (text, className) => {
        const span = document.createElement("span");
        span.className = className;
        span.textContent = text;
        return span;
      };
      const who = e.by === box.dataset.account ? "you" : (e.by_email || e.by);
      li.append(part(utcText(e.at_ms), "when"), " ", part(e.action, "badge status-" + e.action),
        " ", part(e.client_name, "who-client"), " by ", part(who, "by"));
      list.appendChild(li);
    }
  }

  function sayError(box, text) {
    const el = box.querySelector(".grant-error");
    if (el) el.textContent = text;
  }

  async function redraw(box) {
    const [view, directory] = await Promise.all([
      api("GET", "/api/v1/sites/" + encodeURIComponent(box.dataset.site) + "/grants"),
      api("GET", "/api/v1/utility-clients/directory"),
    ]);
    renderGrants(box, view.grants);
    renderDirectory(box, directory, view.grants);
    renderLog(box, view.log);
  }

  async function act(box, button, method, url, body) {
    button.disabled = true;
    sayError(box, "");
    let failure = "";
    try {
      await api(method, url, body);
    } catch (err) {
      failure = err.message;
    }
    try {
      await redraw(box); // after a refusal too: the page shows what is true now
    } catch (err) {
      failure = failure || err.message;
      button.disabled = false;
    }
    sayError(box, failure);
  }

  for (const box of document.querySelectorAll(".meter-access")) {
    const site = "/api/v1/sites/" + encodeURIComponent(box.dataset.site) + "/grants";
    const form = box.querySelector("form.grant-form");
    if (form) {
      form.addEventListener("submit", (ev) => {
        ev.preventDefault();
        const button = form.querySelector("button[type=submit]");
        act(box, button, "POST", site, { client_id: form.elements.client_id.value });
      });
    }
    box.addEventListener("click", (ev) => {
      const button = ev.target.closest("button[data-action=revoke]");
      if (!button) return;
      const row = button.closest("tr[data-client]");
      act(box, button, "DELETE", site + "/" + encodeURIComponent(row.dataset.client));
    });
  }
})();
