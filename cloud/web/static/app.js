// Live dashboard: listens to /api/v1/stream (server-sent events) and redraws counters,
// the fleet table and the per-interval chart. No framework, no build step.
"use strict";

function text(id, value) {
  const el = document.getElementById(id);
  if (el) el.textContent = value;
}

function drawChart(values) {
  const svg = document.getElementById("chart");
  if (!svg) return;
  while (svg.firstChild) svg.removeChild(svg.firstChild);
  const ns = "http://www.w3.org/2000/svg";
  const max = Math.max(1, ...values);
  const w = 800 / Math.max(values.length, 1);
  values.forEach((v, i) => {
    const h = (v / max) * 200;
    const bar = document.createElementNS(ns, "rect");
    bar.setAttribute("x", (i * w + 1).toFixed(1));
    bar.setAttribute("y", (210 - h).toFixed(1));
    bar.setAttribute("width", Math.max(w - 2, 1).toFixed(1));
    bar.setAttribute("height", h.toFixed(1));
    bar.setAttribute("class", "bar");
    const title = document.createElementNS(ns, "title");
    title.textContent = v + " Wh";
    bar.appendChild(title);
    svg.appendChild(bar);
  });
}

function renderFleet(devices) {
  const body = document.querySelector("#fleet tbody");
  if (!body) return;
  body.textContent = "";
  if (devices.length === 0) {
    const tr = body.insertRow();
    tr.className = "empty";
    const td = tr.insertCell();
    td.colSpan = 7;
    td.textContent = "no devices registered yet";
    return;
  }
  for (const d of devices) {
    const tr = body.insertRow();
    tr.dataset.device = d.device_id;
    const cells = [d.site_id, d.device_id, d.status, d.capacity_w, d.tokens, d.generated_wh,
      d.last_interval_start ? d.last_interval_start.replace("T", " ").replace("Z", "") : "—"];
    const classes = ["", "", "", "", "tokens", "gen", "last"];
    cells.forEach((c, i) => {
      const td = tr.insertCell();
      if (i === 1) {
        const a = document.createElement("a");
        a.href = "/devices/" + encodeURIComponent(d.device_id);
        a.textContent = c;
        td.appendChild(a);
      } else {
        td.textContent = c;
      }
      if (classes[i]) td.className = classes[i];
    });
  }
}

function renderReasons(byReason) {
  const ul = document.getElementById("reasons");
  if (!ul) return;
  ul.textContent = "";
  const entries = Object.entries(byReason);
  if (entries.length === 0) {
    const li = document.createElement("li");
    li.className = "none";
    li.textContent = "none";
    ul.appendChild(li);
  }
  for (const [reason, n] of entries) {
    const li = document.createElement("li");
    li.textContent = reason + ": " + n;
    ul.appendChild(li);
  }
}

function connect() {
  const live = document.getElementById("live");
  const source = new EventSource("/api/v1/stream");
  source.addEventListener("stats", (ev) => {
    const data = JSON.parse(ev.data);
    const s = data.stats;
    text("accepted", s.accepted);
    text("rejected", s.rejected);
    text("held", s.held);
    text("kwh", s.kwh.toFixed(3));
    if (data.ledger) {
      text("ledger", data.ledger.entries + " / " + data.ledger.checkpoint + " / " + data.ledger.intervals);
    }
    renderReasons(s.rejected_by_reason);
    renderFleet(data.devices);
    drawChart(s.per_interval.map((p) => p.generated_wh));
    live.dataset.state = "live";
    live.textContent = "live · updated " + new Date().toISOString().slice(11, 19) + " UTC";
  });
  source.onerror = () => {
    live.dataset.state = "reconnecting";
    live.textContent = "reconnecting…";
  };
}

drawChart(JSON.parse(document.getElementById("initial-intervals").textContent));
connect();
