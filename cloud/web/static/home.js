// My home: polls /api/v1/ledger/summary (session cookie) every 10 s and updates each site's
// figures in place; the device table follows /api/v1/devices. Numbers are formatted from the
// API's integers exactly as the server formats them (cloud/api/home_routes.py).
"use strict";

function fixed(value, scale, digits) {
  // integer `value` / 10^digits, printed with `digits` decimals, without float rounding
  const sign = value < 0 ? "-" : "";
  const abs = Math.abs(value);
  return sign + Math.floor(abs / scale) + "." + String(abs % scale).padStart(digits, "0");
}

function kg1(grams) {
  const tenths = Math.floor((Math.abs(grams) + 50) / 100);
  const sign = grams < 0 && tenths ? "-" : "";
  return sign + Math.floor(tenths / 10) + "." + (tenths % 10);
}

function set(root, field, value) {
  const el = root.querySelector('[data-field="' + field + '"]');
  if (el && el.textContent !== String(value)) el.textContent = value;
}

function live(state, text) {
  const el = document.getElementById("live");
  if (!el) return;
  el.dataset.state = state;
  el.textContent = text;
}

function renderSummary(summary) {
  document.getElementById("checkpoint-size").textContent = summary.checkpoint_size;
  document.getElementById("log-size").textContent = summary.size;
  document.getElementById("closed-intervals").textContent = summary.closed_intervals;
  const bySite = new Map(summary.sites.map((s) => [s.site_id, s]));
  for (const section of document.querySelectorAll("section.site")) {
    const s = bySite.get(section.dataset.site);
    if (!s) continue; // nothing closed for this site yet: the page's zeros stand
    set(section, "generated_kwh", fixed(s.generated_wh, 1000, 3));
    set(section, "tradable_wh", s.tradable_wh);
    set(section, "tgen_wh", s.tgen_wh);
    set(section, "tstorage_wh", s.tstorage_wh);
    set(section, "set_aside_wh", s.set_aside_wh);
    set(section, "credits", fixed(s.credits_minor, 100, 2));
    set(section, "co2_kg", kg1(s.avoided_co2_g));
    set(section, "forest_acres", fixed(s.forest_milliacres, 1000, 3));
  }
}

function renderDevices(devices) {
  for (const d of devices) {
    const row = document.querySelector('section.site tr[data-device="' + CSS.escape(d.device_id) + '"]');
    if (!row) continue;
    const badge = row.querySelector(".badge");
    if (badge && badge.textContent !== d.status) {
      badge.textContent = d.status;
      badge.className = "badge status-" + d.status;
    }
    row.querySelector("td.tokens").textContent = d.tokens;
    row.querySelector("td.gen").textContent = d.generated_wh;
  }
}

async function getJson(url) {
  const resp = await fetch(url, { credentials: "same-origin", headers: { Accept: "application/json" } });
  if (resp.status === 401) {
    window.location.assign("/login"); // the session ended
    throw new Error("logged out");
  }
  if (!resp.ok) throw new Error(url + ": HTTP " + resp.status);
  return resp.json();
}

async function refresh() {
  try {
    const [summary, devices] = await Promise.all([
      getJson("/api/v1/ledger/summary"),
      getJson("/api/v1/devices"),
    ]);
    renderSummary(summary);
    renderDevices(devices);
    const now = new Date();
    document.getElementById("updated").textContent =
      "Updated " + now.toTimeString().slice(0, 8) + ".";
    live("live", "live");
  } catch (err) {
    live("error", "not updating (" + err.message + ")");
  }
}

const main = document.getElementById("home");
if (main && main.dataset.ledger === "on") {
  refresh();
  setInterval(refresh, Number(main.dataset.refreshMs) || 10000);
}

// ---- the DERMS part: live power flow (polled every few seconds), energy today and this month,
// and the dispatch events the site's devices took part in (cloud/api/site_live_routes.py).

const CONTROL_LABELS = JSON.parse((document.getElementById("control-labels") || {}).textContent || "{}");
const watts = (n) => (n === null || n === undefined ? "—" : Number(n).toLocaleString("en-US"));

function utcText(seconds) {
  return new Date(seconds * 1000).toISOString().slice(0, 19).replace("T", " ");
}

function liveField(section, name, value) {
  const el = section.querySelector('[data-live="' + name + '"]');
  if (el && el.textContent !== String(value)) el.textContent = value;
}

function renderLive(section, s) {
  if (!s.last_ms) { // nothing measured yet: dashes, not zeros
    for (const name of ["pv_w", "battery_w", "grid_w", "load_w", "stored_wh", "soc"]) liveField(section, name, "—");
    for (const name of ["pv_dir", "battery_dir", "grid_dir"]) liveField(section, name, "");
    liveField(section, "state", s.devices === 0 ? "no devices reporting" : s.online + " of " + s.devices + " devices online");
    liveField(section, "updated", "waiting for data");
    return;
  }
  liveField(section, "pv_w", watts(s.pv_w));
  liveField(section, "pv_dir", s.pv_w > 0 ? "generating" : "idle");
  liveField(section, "battery_w", watts(Math.abs(s.battery_w)));
  liveField(section, "battery_dir", s.battery_w > 0 ? "discharging" : s.battery_w < 0 ? "charging" : "idle");
  liveField(section, "grid_w", watts(Math.abs(s.grid_w)));
  liveField(section, "grid_dir", s.grid_w > 0 ? "importing" : s.grid_w < 0 ? "exporting" : "balanced");
  liveField(section, "load_w", watts(s.load_w));
  liveField(section, "stored_wh", watts(s.stored_wh));
  liveField(section, "soc", s.soc_permille === null ? "—" : (s.soc_permille / 10).toFixed(1) + " %");
  const bar = section.querySelector('[data-live="soc_bar"]');
  if (bar) bar.style.width = (s.soc_permille === null ? 0 : s.soc_permille / 10) + "%";
  const states = s.device_states.map((d) => d.state);
  liveField(section, "state", s.devices === 0 ? "no devices" : s.online + " of " + s.devices + " devices online");
  liveField(section, "updated", s.last_ms ? "as of " + new Date(s.last_ms).toISOString().slice(11, 19) + " UTC" : "waiting for data");
  section.dataset.liveStates = states.join(" ");
}

function renderEnergy(section, e) {
  for (const el of section.querySelectorAll("[data-energy]")) {
    const [period, field] = el.dataset.energy.split(".");
    const v = watts(e[period][field]);
    if (el.textContent !== v) el.textContent = v;
  }
}

function renderSiteEvents(section, events) {
  const body = section.querySelector("table.site-events tbody");
  if (!body) return;
  body.textContent = "";
  if (!events.length) {
    const td = body.insertRow().insertCell();
    td.parentElement.className = "empty";
    td.colSpan = 9;
    td.textContent = "none yet";
    return;
  }
  for (const e of events) {
    const tr = body.insertRow();
    tr.dataset.event = e.event_id;
    const statuses = [...new Set(e.devices.map((d) => d.status))].join(", ");
    const cells = [utcText(e.start), e.name || e.event_id, CONTROL_LABELS[e.control] || e.control,
      e.status, watts(e.requested_w), watts(e.delivered_w),
      e.delivered_wh === null || e.delivered_wh === undefined ? "—" : String(e.delivered_wh),
      e.reward_minor === null || e.reward_minor === undefined ? "—" : fixed(e.reward_minor, 100, 2),
      statuses];
    const classes = ["", "", "", "status", "num asked", "num delivered", "num delivered-wh",
      "num earned", "responses"];
    cells.forEach((c, i) => {
      const td = tr.insertCell();
      if (i === 3) {
        const b = document.createElement("span");
        b.className = "badge status-" + c;
        b.textContent = c;
        td.appendChild(b);
      } else {
        td.textContent = c;
      }
      if (classes[i]) td.className = classes[i];
    });
  }
}

async function refreshLive() {
  for (const section of document.querySelectorAll("section.site")) {
    const id = encodeURIComponent(section.dataset.site);
    try {
      renderLive(section, await getJson("/api/v1/sites/" + id + "/live"));
    } catch (err) {
      liveField(section, "updated", "not updating (" + err.message + ")");
    }
  }
}

async function refreshSiteHistory() {
  for (const section of document.querySelectorAll("section.site")) {
    const id = encodeURIComponent(section.dataset.site);
    try {
      const [energy, events] = await Promise.all([
        getJson("/api/v1/sites/" + id + "/energy"),
        getJson("/api/v1/sites/" + id + "/events"),
      ]);
      renderEnergy(section, energy);
      renderSiteEvents(section, events);
    } catch (err) {
      liveField(section, "updated", "not updating (" + err.message + ")");
    }
  }
}

if (main && main.dataset.derms === "on") {
  refreshLive();
  refreshSiteHistory();
  setInterval(refreshLive, Number(main.dataset.liveMs) || 2000);
  setInterval(refreshSiteHistory, Math.max(Number(main.dataset.liveMs) || 2000, 5000));
}
