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
