// The event board: lists /api/v1/dispatch/events (polled), and for grid operators posts the
// create form to the API as JSON; the API's own error message is shown as it is. A created
// event opens its page.
"use strict";

(() => {
  const root = document.getElementById("events-page");
  if (!root) return;
  const { node, api, utcS, int, badge, live } = DERMS;
  const labels = JSON.parse(document.getElementById("control-labels").textContent);
  const pollMs = Number(root.dataset.pollMs) || 5000;

  function duration(s) {
    if (s % 3600 === 0) return s / 3600 + " h";
    if (s % 60 === 0) return s / 60 + " min";
    return s + " s";
  }

  function responses(counts) {
    const td = node("td", { class: "responses" });
    for (const [status, n] of Object.entries(counts).sort()) {
      td.append(node("span", { class: "badge status-" + status, "data-status": status, text: status + " " + n }));
    }
    return td;
  }

  function row(e) {
    return node("tr", { "data-event": e.event_id },
      node("td", { class: "mono" }, node("a", { href: "/events/" + encodeURIComponent(e.event_id), text: e.event_id })),
      node("td", { text: e.name || "—" }),
      node("td", { class: "status" }, badge(e.status)),
      node("td", { text: e.group }),
      node("td", { text: labels[e.control] || e.control, title: e.control }),
      node("td", { class: "num", text: int(e.value) }),
      node("td", { text: utcS(e.start) }),
      node("td", { class: "num", text: duration(e.duration_s) }),
      node("td", { class: "num devices", text: e.devices }),
      responses(e.responses));
  }

  async function refresh() {
    try {
      const list = await api("GET", "/api/v1/dispatch/events?limit=100");
      const body = document.querySelector("#events tbody");
      body.textContent = "";
      if (!list.length) body.append(node("tr", { class: "empty" }, node("td", { colspan: 10, text: "no events yet" })));
      for (const e of list) body.append(row(e));
      live("live", "updated " + new Date().toISOString().slice(11, 19) + " UTC");
    } catch (e) {
      live("error", "not updating (" + e.message + ")");
    }
  }

  const form = document.getElementById("event-form");
  if (form) {
    const control = document.getElementById("ev-control");
    control.addEventListener("change", () => {
      document.getElementById("ev-unit").textContent = control.selectedOptions[0].dataset.unit;
    });
    form.addEventListener("submit", async (ev) => {
      ev.preventDefault();
      const err = document.getElementById("event-error");
      const f = new FormData(form);
      err.textContent = "";
      const body = {
        group: f.get("group"),
        control: f.get("control"),
        value: Number(f.get("value")),
        duration_s: Number(f.get("duration_min")) * 60,
        ramp_s: Number(f.get("ramp_s") || 0),
        randomize_start_s: Number(f.get("randomize_start_s") || 0),
        name: String(f.get("name") || ""),
      };
      if (f.get("value") === "" || !Number.isInteger(body.value)) {
        err.textContent = "value: a whole number is required";
        return;
      }
      if (f.get("when") === "at") {
        const at = String(f.get("start_at") || "");
        if (!at) { err.textContent = "start: pick a date and time (UTC)"; return; }
        body.start = Math.floor(Date.parse(at + (at.length === 16 ? ":00Z" : "Z")) / 1000);
      }
      const button = document.getElementById("ev-submit");
      button.disabled = true;
      try {
        const e = await api("POST", "/api/v1/dispatch/events", body);
        window.location.assign("/events/" + encodeURIComponent(e.event_id));
      } catch (e) {
        err.textContent = e.message;
        button.disabled = false;
      }
    });
  }

  refresh();
  setInterval(refresh, pollMs);
})();
