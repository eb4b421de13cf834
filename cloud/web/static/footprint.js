// The footprint page (cloud/api/shop_pages_routes.py): the calculator, "save as my baseline",
// and the dashboard of footprint against retired offsets.
//
// The arithmetic is the server's (cloud.domain.footprint): every change of an answer asks
// POST /api/v1/footprint/estimate (debounced) and shows its total, forest acres and lines, so
// the page and the saved baseline never disagree. The dashboard comes from GET
// /api/v1/footprint and is drawn as an inline SVG: cumulative footprint and cumulative retired
// kg per month.
"use strict";

(() => {
  const main = document.getElementById("footprint");
  if (!main) return;
  const SVG = "http://www.w3.org/2000/svg";
  const form = document.getElementById("fp-form");
  const message = document.getElementById("fp-message");
  const int = (n) => Number(n).toLocaleString("en-US");
  const acres = (milli) => (milli / 1000).toFixed(milli < 10000 ? 2 : 1);
  const pad = (n) => String(n).padStart(2, "0");
  const day = (ms) => {
    const d = new Date(ms);
    return d.getUTCFullYear() + "-" + pad(d.getUTCMonth() + 1) + "-" + pad(d.getUTCDate());
  };

  async function api(method, url, body) {
    const init = { method, headers: { Accept: "application/json" }, credentials: "same-origin" };
    if (body !== undefined) {
      init.headers["Content-Type"] = "application/json";
      init.body = JSON.stringify(body);
    }
    const r = await fetch(url, init);
    let data = null;
    try { data = await r.json(); } catch (_e) { data = null; }
    if (!r.ok) {
      throw new Error(data && typeof data.detail === "string" ? data.detail : r.status + " " + r.statusText);
    }
    return data;
  }

  function answers() {
    const out = {};
    for (const el of form.querySelectorAll("input[name]")) {
      out[el.name] = el.value === "" ? NaN : Number(el.value);
    }
    out.diet = form.querySelector("select[name=diet]").value;
    return out;
  }

  function setAnswers(a) {
    for (const [k, v] of Object.entries(a)) {
      const el = form.elements.namedItem(k);
      if (el) el.value = String(v);
    }
    showOutputs();
  }

  function showOutputs() {
    for (const el of form.querySelectorAll("input[name]")) {
      const out = document.getElementById(el.id + "-out");
      if (out) out.textContent = el.value;
    }
  }

  function showFootprint(fp) {
    document.getElementById("fp-total").textContent = int(fp.total_kg);
    document.getElementById("fp-total").dataset.kg = String(fp.total_kg);
    document.getElementById("fp-average").textContent = int(fp.average_kg);
    document.getElementById("fp-acres").textContent = acres(fp.forest_milliacres);
    const body = document.getElementById("fp-lines").tBodies[0];
    body.replaceChildren();
    for (const ln of fp.lines) {
      const tr = body.insertRow();
      tr.dataset.key = ln.key;
      const name = tr.insertCell();
      name.textContent = ln.label;
      name.title = ln.source;
      const you = tr.insertCell();
      you.className = "num";
      you.textContent = int(ln.kg);
      const avg = tr.insertCell();
      avg.className = "num muted";
      avg.textContent = int(ln.average_kg);
    }
  }

  let timer = null;
  let asked = 0;
  function estimate() {
    clearTimeout(timer);
    timer = setTimeout(async () => {
      const mine = ++asked;
      try {
        const fp = await api("POST", "/api/v1/footprint/estimate", answers());
        if (mine !== asked) return; // a newer answer is on its way
        message.textContent = "";
        message.classList.remove("error");
        showFootprint(fp);
      } catch (e) {
        if (mine !== asked) return;
        message.textContent = e.message;
        message.classList.add("error");
      }
    }, 120);
  }

  form.addEventListener("input", () => { showOutputs(); estimate(); });
  form.addEventListener("submit", (ev) => ev.preventDefault());
  document.getElementById("fp-save").addEventListener("click", async () => {
    try {
      const fp = await api("POST", "/api/v1/footprint", answers());
      showFootprint(fp);
      message.classList.remove("error");
      message.textContent = "Saved as your baseline: " + int(fp.total_kg) + " kg CO2e a year.";
      await dashboard();
    } catch (e) {
      message.classList.add("error");
      message.textContent = "Not saved: " + e.message;
    }
  });

  // Two bars a month: the cumulative footprint and the cumulative kg retired for the account.
  function chart(months) {
    const svg = document.getElementById("fp-chart");
    svg.replaceChildren();
    const W = 720, H = 220, L = 56, R = 12, T = 16, B = 28;
    svg.setAttribute("viewBox", "0 0 " + W + " " + H);
    if (!months.length) return;
    const max = Math.max(1, ...months.map((m) => Math.max(m.cumulative_footprint_kg, m.cumulative_retired_kg)));
    const n = months.length;
    const slot = (W - L - R) / n;
    const bw = Math.min(40, slot * 0.38);
    const y = (v) => T + (H - T - B) * (1 - v / max);
    const el = (tag, attrs, text) => {
      const e = document.createElementNS(SVG, tag);
      for (const [k, v] of Object.entries(attrs)) e.setAttribute(k, String(v));
      if (text !== undefined) e.textContent = text;
      svg.append(e);
      return e;
    };
    for (const f of [0, 0.5, 1]) {
      el("line", { x1: L, x2: W - R, y1: y(max * f), y2: y(max * f), class: "grid" });
      el("text", { x: L - 6, y: y(max * f) + 4, "text-anchor": "end", class: "axis" }, int(Math.round(max * f)));
    }
    const step = Math.max(1, Math.ceil(n / 8));
    months.forEach((m, i) => {
      const cx = L + slot * (i + 0.5);
      if (i % step === 0 || i === n - 1) el("text", { x: cx, y: H - 8, "text-anchor": "middle", class: "axis" }, m.month);
      const bars = [["fp", m.cumulative_footprint_kg, cx - bw - 1], ["ret", m.cumulative_retired_kg, cx + 1]];
      for (const [cls, v, x] of bars) {
        const r = el("rect", { x: x, y: y(v), width: bw, height: Math.max(0, y(0) - y(v)), class: "bar " + cls, "data-month": m.month });
        r.append(Object.assign(document.createElementNS(SVG, "title"), {
          textContent: m.month + ": " + int(v) + " kg " + (cls === "fp" ? "footprint" : "retired") + " so far",
        }));
        if (n <= 12) el("text", { x: x + bw / 2, y: y(v) - 3, "text-anchor": "middle", class: "value" }, int(v));
      }
    });
  }

  async function dashboard() {
    let d;
    try {
      d = await api("GET", "/api/v1/footprint");
    } catch (e) {
      document.getElementById("fp-baseline").textContent = "Could not read your footprint: " + e.message;
      return null;
    }
    const base = document.getElementById("fp-baseline");
    if (d.baseline) {
      base.textContent = "Your baseline: " + int(d.baseline.total_kg) + " kg CO2e a year, saved " +
        day(d.baseline.saved_ms) + " (" + d.history.length + " saved in all). Offsets retired for you: " +
        int(d.retired_kg) + " kg.";
      base.dataset.kg = String(d.baseline.total_kg);
    } else {
      base.textContent = "No baseline saved yet. Offsets retired for you: " + int(d.retired_kg) + " kg.";
    }
    const body = document.getElementById("fp-months").tBodies[0];
    body.replaceChildren();
    if (!d.months.length) {
      const tr = body.insertRow();
      tr.className = "empty";
      const td = tr.insertCell();
      td.colSpan = 7;
      td.textContent = "Save a baseline or buy offsets to start.";
    }
    for (const m of d.months) {
      const tr = body.insertRow();
      tr.dataset.month = m.month;
      const cells = [
        m.month, int(m.footprint_kg), int(m.retired_kg), int(m.cumulative_footprint_kg),
        int(m.cumulative_retired_kg), (m.offset_permille / 10).toFixed(1) + " %", acres(m.forest_milliacres),
      ];
      cells.forEach((t, j) => {
        const td = tr.insertCell();
        td.textContent = t;
        if (j) td.className = "num";
      });
    }
    chart(d.months);
    return d;
  }

  (async () => {
    const d = await dashboard();
    if (d && d.baseline) setAnswers(d.baseline.answers);
    if (d && d.baseline_footprint) showFootprint(d.baseline_footprint);
    else estimate();
  })();
})();
