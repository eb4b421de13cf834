// Meter analytics (/home/analytics): a site's energy for a local day (hourly bars), month (daily
// bars) or year (monthly bars) from the virtual meter's API with the session cookie
// (cloud/api/meter_routes.py). Periods are the site's local ones: the script works out the local
// period's bounds in the site's time zone (Intl.DateTimeFormat) and sends them as UTC instants;
// the API returns local-hour and local-day buckets, and the year view sums the local days into
// local months. Energy stays integer Wh until it is printed (kWh with one decimal).
"use strict";

const QUANTITIES = ["generated_wh", "load_wh", "imported_wh", "exported_wh", "self_consumed_wh",
  "charged_wh", "discharged_wh"];
const SERIES = {
  use: [{ q: "generated_wh", cls: "prod", label: "production" }, { q: "load_wh", cls: "load", label: "consumption" }],
  grid: [{ q: "imported_wh", cls: "imp", label: "grid import" }, { q: "exported_wh", cls: "exp", label: "grid export" }],
};
const VIEWS = ["day", "month", "year"];
const INTERVAL = { day: "60min", month: "day", year: "day" };
const UNIT = { day: "hour", month: "day", year: "month" };
const SVG_NS = "http://www.w3.org/2000/svg";
const LOCALE = "en-GB";

// ---- time zones: local dates <-> UTC instants (Unix seconds) ------------------------------

const partFormatters = new Map();

function localParts(tz, s) {
  // the wall clock in `tz` at Unix second `s`: {y, m, d, hh, mm, ss}
  let f = partFormatters.get(tz);
  if (!f) {
    f = new Intl.DateTimeFormat("en-US", {
      timeZone: tz, hourCycle: "h23", year: "numeric", month: "numeric", day: "numeric",
      hour: "numeric", minute: "numeric", second: "numeric",
    });
    partFormatters.set(tz, f);
  }
  const p = {};
  for (const { type, value } of f.formatToParts(new Date(s * 1000))) p[type] = Number(value);
  return { y: p.year, m: p.month, d: p.day, hh: p.hour % 24, mm: p.minute, ss: p.second };
}

function offsetS(tz, s) {
  // the zone's UTC offset (s) at Unix second `s`
  const p = localParts(tz, s);
  return Date.UTC(p.y, p.m - 1, p.d, p.hh, p.mm, p.ss) / 1000 - s;
}

function wallToUtc(tz, y, m, d) {
  // the instant local midnight starts day y-m-d in `tz` (month/day may overflow: Date.UTC
  // normalises them). Twice (a fall-back at midnight): the first. Never (a spring-forward at
  // midnight): the offset before the change, as the server's zoneinfo does (fold=0).
  const wall = Date.UTC(y, m - 1, d) / 1000;
  let best = null;
  for (const o of new Set([offsetS(tz, wall - 86400), offsetS(tz, wall), offsetS(tz, wall + 86400)])) {
    const t = wall - o;
    if (offsetS(tz, t) === o && (best === null || t < best)) best = t;
  }
  return best === null ? wall - offsetS(tz, wall - 86400) : best;
}

function ymd(y, m, d) {
  // a normalised date (overflowing month/day allowed)
  const t = new Date(Date.UTC(y, m - 1, d));
  return { y: t.getUTCFullYear(), m: t.getUTCMonth() + 1, d: t.getUTCDate() };
}

const daysIn = (y, m) => new Date(Date.UTC(y, m, 0)).getUTCDate();

function periodBounds(tz, view, a) {
  // [start, end) of the local day, month or year holding date `a` ({y, m, d}), Unix seconds
  if (view === "day") {
    const n = ymd(a.y, a.m, a.d + 1);
    return [wallToUtc(tz, a.y, a.m, a.d), wallToUtc(tz, n.y, n.m, n.d)];
  }
  if (view === "month") {
    const n = ymd(a.y, a.m + 1, 1);
    return [wallToUtc(tz, a.y, a.m, 1), wallToUtc(tz, n.y, n.m, 1)];
  }
  return [wallToUtc(tz, a.y, 1, 1), wallToUtc(tz, a.y + 1, 1, 1)];
}

function shift(view, a, step) {
  // the same place in the previous (-1) or next (+1) day, month or year
  if (view === "day") return ymd(a.y, a.m, a.d + step);
  const y = view === "year" ? a.y + step : ymd(a.y, a.m + step, 1).y;
  const m = view === "year" ? a.m : ymd(a.y, a.m + step, 1).m;
  return { y, m, d: Math.min(a.d, daysIn(y, m)) };
}

// ---- numbers: from integer Wh, formatted only here --------------------------------------

function group3(n) {
  return String(n).replace(/\B(?=(\d{3})+(?!\d))/g, ",");
}

function kwh1(wh) {
  // integer Wh as kWh with one decimal, rounded half up ("—" for none)
  if (wh === null || wh === undefined) return "—";
  const tenths = Math.floor((Math.abs(wh) + 50) / 100);
  const sign = wh < 0 && tenths ? "-" : "";
  return sign + group3(Math.floor(tenths / 10)) + "." + (tenths % 10);
}

function pct1(num, den) {
  // num / den as a percentage with one decimal, rounded half up, within 0-100 ("—" for den 0)
  if (!(den > 0)) return "—";
  const permille = Math.min(Math.max(Math.floor((2 * num * 1000 + den) / (2 * den)), 0), 1000);
  return Math.floor(permille / 10) + "." + (permille % 10) + " %";
}

function kwhTick(wh, step) {
  // an axis label: as many decimals as the tick step needs
  const digits = step % 1000 === 0 ? 0 : step % 100 === 0 ? 1 : step % 10 === 0 ? 2 : 3;
  const whole = Math.floor(wh / 1000);
  if (!digits) return group3(whole);
  return group3(whole) + "." + String(wh % 1000).padStart(3, "0").slice(0, digits);
}

function niceStep(max, ticks) {
  // an integer Wh step (1, 2, 2.5, 5 x 10^k) giving about `ticks` ticks up to `max`
  if (!(max > 0)) return 1000; // nothing to draw: an axis up to 1 kWh
  const raw = Math.max(max / ticks, 1);
  const k = Math.pow(10, Math.floor(Math.log10(raw)));
  for (const f of [1, 2, 2.5, 5, 10]) {
    const step = f * k;
    if (step >= raw && Number.isInteger(step)) return step;
  }
  return 10 * k;
}

// ---- slots: the period's hours, days or months with the API's rows summed into them ----------

function dateLabel(y, m, d, opts) {
  return new Intl.DateTimeFormat(LOCALE, { timeZone: "UTC", ...opts }).format(new Date(Date.UTC(y, m - 1, d)));
}

function hhmm(p) {
  return String(p.hh).padStart(2, "0") + ":" + String(p.mm).padStart(2, "0");
}

function offsetText(o) {
  const sign = o < 0 ? "−" : "+";
  const a = Math.abs(o);
  return "UTC" + sign + Math.floor(a / 3600) + (a % 3600 ? ":" + String((a % 3600) / 60).padStart(2, "0") : "");
}

function makeSlots(tz, view, a, start, end) {
  const slots = [];
  if (view === "day") {
    const odd = end - start !== 86400; // 23 or 25 hours: the clocks changed
    for (let t = start; t < end; t += 3600) {
      const p = localParts(tz, t);
      // an hour on the clock it started on: the repeated 01:00 of a fall-back is 01:00–02:00
      // twice, told apart by the offset
      const long = hhmm(p) + "–" + hhmm({ hh: p.hh + 1, mm: p.mm }) + (odd ? " (" + offsetText(offsetS(tz, t)) + ")" : "");
      slots.push({ start: t, label: String(p.hh).padStart(2, "0"), long });
    }
  } else if (view === "month") {
    for (let d = 1; d <= daysIn(a.y, a.m); d++) {
      slots.push({ start: wallToUtc(tz, a.y, a.m, d), label: String(d), long: dateLabel(a.y, a.m, d, { weekday: "short", day: "numeric", month: "short" }), date: { y: a.y, m: a.m, d } });
    }
  } else {
    for (let m = 1; m <= 12; m++) {
      slots.push({ start: wallToUtc(tz, a.y, m, 1), label: dateLabel(a.y, m, 1, { month: "short" }), long: dateLabel(a.y, m, 1, { month: "long", year: "numeric" }), date: { y: a.y, m, d: 1 } });
    }
  }
  slots.forEach((s, i) => {
    s.end = i + 1 < slots.length ? slots[i + 1].start : end;
    s.values = Object.fromEntries(QUANTITIES.map((q) => [q, null]));
    s.rows = 0;
    s.withValues = 0;
    s.missing = 0;
    s.estimated = 0;
  });
  return slots;
}

function fillSlots(slots, rows) {
  let i = 0;
  for (const r of rows) { // rows come in time order
    while (i + 1 < slots.length && r.start >= slots[i].end) i++;
    const s = slots[i];
    if (!s || r.start < s.start || r.start >= s.end) continue;
    s.rows++;
    s.missing += r.missing_intervals || 0;
    s.estimated += r.estimated_intervals || (r.state === "estimated" ? 1 : 0);
    if (r.state === "missing") continue;
    s.withValues++;
    for (const q of QUANTITIES) {
      if (r[q] !== null && r[q] !== undefined) s.values[q] = (s.values[q] || 0) + r[q];
    }
  }
  for (const s of slots) {
    s.state = !s.rows ? "none" : !s.withValues ? "missing" : s.missing ? "partial" : s.estimated ? "estimated" : "measured";
  }
  return slots;
}

function stateText(s, meter, view) {
  // what the bucket's data covers: missing and estimated intervals, and where the meter's data
  // starts or (so far) ends inside it
  if (s.state === "none") return "no data";
  const parts = [];
  if (s.missing) parts.push(s.missing + (s.missing === 1 ? " interval" : " intervals") + " missing");
  if (s.estimated) parts.push(s.estimated + " estimated");
  const at = (t) => {
    const p = localParts(meter.time_zone, t);
    return view === "year" ? dateLabel(p.y, p.m, p.d, { day: "numeric", month: "short" }) : hhmm(p);
  };
  if (meter.first_start > s.start && meter.first_start < s.end) parts.push("from " + at(meter.first_start));
  if (meter.last_end > s.start && meter.last_end < s.end) parts.push("so far: to " + at(meter.last_end));
  return parts.length ? parts.join(", ") : "complete";
}

// ---- drawing --------------------------------------------------------------------------------

function el(name, attrs, text) {
  const e = document.createElementNS(SVG_NS, name);
  for (const [k, v] of Object.entries(attrs || {})) e.setAttribute(k, v);
  if (text !== undefined) e.textContent = text;
  return e;
}

function drawChart(svg, slots, seriesKey, view, meter, onPick) {
  const tz = meter.time_zone;
  const series = SERIES[seriesKey];
  const width = Math.max(svg.clientWidth || 0, 320);
  const height = 300;
  const m = { l: 60, r: 14, t: 18, b: 46 };
  const pw = width - m.l - m.r;
  const ph = height - m.t - m.b;
  const title = svg.querySelector("title");
  svg.textContent = "";
  if (title) svg.appendChild(title);
  svg.setAttribute("viewBox", "0 0 " + width + " " + height);
  svg.setAttribute("height", height);

  const defs = el("defs");
  const pat = el("pattern", { id: "an-hatch", width: 6, height: 6, patternUnits: "userSpaceOnUse", patternTransform: "rotate(45)" });
  pat.appendChild(el("rect", { width: 6, height: 6, class: "hatch-bg" }));
  pat.appendChild(el("line", { x1: 0, y1: 0, x2: 0, y2: 6, class: "hatch-line" }));
  defs.appendChild(pat);
  svg.appendChild(defs);

  let max = 0;
  for (const s of slots) for (const { q } of series) max = Math.max(max, s.values[q] || 0);
  const step = niceStep(max, 5);
  const top = Math.max(step * Math.ceil(max / step), step);
  const y = (wh) => m.t + ph - (Math.max(wh, 0) / top) * ph;

  const axes = el("g", { class: "axes" });
  for (let v = 0; v <= top; v += step) {
    axes.appendChild(el("line", { x1: m.l, x2: m.l + pw, y1: y(v), y2: y(v), class: v ? "grid" : "axis" }));
    axes.appendChild(el("text", { x: m.l - 6, y: y(v) + 4, class: "tick", "text-anchor": "end" }, kwhTick(v, step)));
  }
  axes.appendChild(el("text", { class: "axis-title", transform: "translate(14," + (m.t + ph / 2) + ") rotate(-90)", "text-anchor": "middle" }, "kWh"));
  const xTitle = view === "day" ? "hour of the day (" + tz + ")" : view === "month" ? "day of the month" : "month";
  axes.appendChild(el("text", { class: "axis-title", x: m.l + pw / 2, y: height - 6, "text-anchor": "middle" }, xTitle));
  svg.appendChild(axes);

  const sw = pw / slots.length;
  const every = Math.max(1, Math.ceil((view === "year" ? 30 : 20) / sw));
  const barW = Math.max(1, Math.min(28, (sw * 0.78) / series.length));
  const bars = el("g", { class: "bars" });
  slots.forEach((s, i) => {
    const x0 = m.l + i * sw;
    const g = el("g", { class: "slot state-" + s.state, "data-i": i });
    const names = series.map(({ q, label }) => label + " " + kwh1(s.values[q]) + " kWh").join(", ");
    g.appendChild(el("title", {}, s.long + ": " + (s.state === "none" ? "no data" : names + " (" + stateText(s, meter, view) + ")")));
    g.appendChild(el("rect", { x: x0, y: m.t, width: sw, height: ph, class: s.state === "partial" || s.state === "missing" ? "gap" : "hit" }));
    const left = x0 + (sw - barW * series.length) / 2;
    series.forEach(({ q, cls }, k) => {
      const v = s.values[q];
      if (v === null || v <= 0) return;
      const h = Math.max(m.t + ph - y(v), 1);
      g.appendChild(el("rect", { x: left + k * barW, y: m.t + ph - h, width: Math.max(barW - 1, 1), height: h, class: "bar " + cls }));
    });
    if (s.state === "partial" || s.state === "missing") {
      g.appendChild(el("circle", { cx: x0 + sw / 2, cy: m.t + ph + 26, r: 3.5, class: "gap-dot" }));
    }
    if (i % every === 0) {
      g.appendChild(el("text", { x: x0 + sw / 2, y: m.t + ph + 15, class: "tick", "text-anchor": "middle" }, s.label));
    }
    if (onPick && s.date) {
      g.classList.add("pick");
      g.addEventListener("click", () => onPick(s));
    }
    bars.appendChild(g);
  });
  svg.appendChild(bars);
  if (!slots.some((s) => s.rows)) {
    svg.appendChild(el("text", { x: m.l + pw / 2, y: m.t + ph / 2, class: "empty-chart", "text-anchor": "middle" }, "No meter data for this period"));
  }
}

function drawLegend(ul, seriesKey) {
  ul.textContent = "";
  const items = [...SERIES[seriesKey].map((s) => [s.cls, s.label]), ["gap", "intervals missing"]];
  for (const [cls, label] of items) {
    const li = document.createElement("li");
    const sw = document.createElement("span");
    sw.className = "swatch " + cls;
    li.append(sw, " " + label);
    ul.appendChild(li);
  }
}

// ---- the page -------------------------------------------------------------------------------

async function getJson(url) {
  const resp = await fetch(url, { credentials: "same-origin", headers: { Accept: "application/json" } });
  if (resp.status === 401) {
    window.location.assign("/login"); // the session ended
    throw new Error("logged out");
  }
  if (!resp.ok) {
    let detail = "HTTP " + resp.status;
    try { detail = (await resp.json()).detail || detail; } catch (e) { /* not JSON */ }
    throw new Error(detail);
  }
  return resp.json();
}

function isoS(s) {
  return new Date(s * 1000).toISOString().replace(".000Z", "Z");
}

function sum(slots, q) {
  let total = null;
  for (const s of slots) if (s.values[q] !== null) total = (total || 0) + s.values[q];
  return total;
}

class Analytics {
  constructor(main) {
    this.main = main;
    this.now = Number(main.dataset.now) || Math.floor(Date.now() / 1000);
    this.sites = JSON.parse(document.getElementById("an-sites").textContent || "[]");
    this.meters = new Map(); // site id -> GET /meter answer
    this.seq = 0; // the latest request: older answers are dropped
    this.series = "use";
    this.slots = [];
    const q = new URLSearchParams(window.location.search);
    const site = this.sites.find((s) => s.site_id === q.get("site"));
    this.site = site ? site.site_id : this.sites[0].site_id;
    this.view = VIEWS.includes(q.get("view")) ? q.get("view") : "month";
    const date = /^(\d{4})-(\d{2})-(\d{2})$/.exec(q.get("date") || "");
    this.anchor = date ? ymd(Number(date[1]), Number(date[2]), Number(date[3])) : null;
    this.wire();
  }

  $(id) { return document.getElementById(id); }

  wire() {
    const select = this.$("an-site");
    if (select) {
      select.value = this.site;
      select.addEventListener("change", () => { this.site = select.value; this.anchor = null; this.load(); });
    }
    for (const b of this.main.querySelectorAll(".an-views button")) {
      b.addEventListener("click", () => { this.view = b.dataset.view; this.load(); });
    }
    this.$("an-prev").addEventListener("click", () => this.go(-1));
    this.$("an-next").addEventListener("click", () => this.go(1));
    this.$("an-latest").addEventListener("click", () => { // and what the meter has now
      this.meters.delete(this.site);
      this.anchor = null;
      this.load();
    });
    for (const r of this.main.querySelectorAll('input[name="an-series"]')) {
      r.addEventListener("change", () => { if (r.checked) { this.series = r.value; this.render(); } });
    }
    let pending = null;
    window.addEventListener("resize", () => {
      clearTimeout(pending);
      pending = setTimeout(() => this.render(), 120);
    });
  }

  go(step) {
    if (!this.anchor) return;
    this.anchor = shift(this.view, this.anchor, step);
    this.load();
  }

  pick(slot) {
    // a bar or a table row: the month of a year, the day of a month
    this.anchor = slot.date;
    this.view = this.view === "year" ? "month" : "day";
    this.load();
  }

  status(state, text) {
    this.main.dataset.state = state;
    this.$("an-status").textContent = text;
  }

  async meter(site) {
    if (!this.meters.has(site)) {
      this.meters.set(site, await getJson("/api/v1/sites/" + encodeURIComponent(site) + "/meter"));
    }
    return this.meters.get(site);
  }

  async load() {
    const seq = ++this.seq;
    this.status("loading", "loading…");
    try {
      const meter = await this.meter(this.site);
      if (seq !== this.seq) return;
      const tz = meter.time_zone;
      if (!this.anchor) {
        const at = meter.last_end ? meter.last_end - 1 : this.now;
        const p = localParts(tz, at);
        this.anchor = { y: p.y, m: p.m, d: p.d };
      }
      const [start, end] = periodBounds(tz, this.view, this.anchor);
      const params = new URLSearchParams({ start: isoS(start), end: isoS(end), interval: INTERVAL[this.view] });
      const base = "/api/v1/sites/" + encodeURIComponent(this.site) + "/meter/intervals?";
      this.showPeriod(meter, start, end, base + params + "&format=csv");
      const body = await getJson(base + params);
      if (seq !== this.seq) return;
      this.meterInfo = meter;
      this.slots = fillSlots(makeSlots(tz, this.view, this.anchor, start, end), body.intervals);
      this.rows = body.intervals.length;
      this.render();
      this.status("ready", "");
    } catch (err) {
      if (seq === this.seq) this.status("error", "Could not load the meter data: " + err.message);
    }
  }

  showPeriod(meter, start, end, csv) {
    const a = this.anchor;
    const tz = meter.time_zone;
    let label;
    if (this.view === "day") {
      label = dateLabel(a.y, a.m, a.d, { weekday: "long", day: "numeric", month: "long", year: "numeric" });
      const hours = (end - start) / 3600;
      if (hours !== 24) label += " (" + hours + " hours: the clocks changed)";
    } else if (this.view === "month") {
      label = dateLabel(a.y, a.m, 1, { month: "long", year: "numeric" });
    } else {
      label = String(a.y);
    }
    this.$("an-period").textContent = label;
    for (const b of this.main.querySelectorAll(".an-views button")) {
      b.setAttribute("aria-pressed", String(b.dataset.view === this.view));
    }
    const csvLink = this.$("an-csv");
    csvLink.href = csv;
    csvLink.textContent = "Download CSV (" + (this.view === "day" ? "hourly" : "daily") + ")";
    this.$("an-prev").disabled = !meter.first_start || start <= meter.first_start;
    this.$("an-next").disabled = end > this.now;
    Object.assign(this.main.dataset, { view: this.view, site: this.site, start, end, tz });
    const date = a.y + "-" + String(a.m).padStart(2, "0") + "-" + String(a.d).padStart(2, "0");
    const url = new URL(window.location.href);
    url.search = new URLSearchParams({ site: this.site, view: this.view, date }).toString();
    history.replaceState(null, "", url);
  }

  render() {
    const meter = this.meterInfo;
    if (!meter) return;
    const slots = this.slots;
    const tz = meter.time_zone;
    const totals = Object.fromEntries(QUANTITIES.map((q) => [q, sum(slots, q)]));
    for (const e of this.main.querySelectorAll("[data-total]")) {
      e.textContent = kwh1(totals[e.dataset.total]);
      e.dataset.wh = totals[e.dataset.total] === null ? "" : totals[e.dataset.total];
    }
    const load = totals.load_wh || 0;
    this.main.querySelector('[data-ratio="self_sufficiency"]').textContent = pct1(load - (totals.imported_wh || 0), load);
    this.main.querySelector('[data-ratio="self_consumption"]').textContent = pct1(totals.self_consumed_wh || 0, totals.generated_wh || 0);

    const pick = this.view === "day" ? null : (s) => this.pick(s);
    const svg = this.$("an-svg");
    svg.querySelector("title").textContent = "Energy per " + UNIT[this.view] + ", " + this.$("an-period").textContent + ": " + SERIES[this.series].map((s) => s.label).join(" and ") + " in kWh";
    drawChart(svg, slots, this.series, this.view, meter, pick);
    drawLegend(this.$("an-legend"), this.series);

    const gaps = slots.filter((s) => s.state === "partial" || s.state === "missing");
    const missing = gaps.reduce((n, s) => n + s.missing, 0);
    const unit = UNIT[this.view];
    this.$("an-gaps").textContent = missing
      ? missing + (missing === 1 ? " interval" : " intervals") + " missing in " + gaps.length + " " + unit + (gaps.length === 1 ? "" : "s") +
        " (hatched, with a dot): " + (gaps.length === 1 ? "its values are" : "their values are") + " the sum of the intervals that were read."
      : slots.some((s) => s.rows) ? "No intervals missing." : "";
    this.$("an-gaps").classList.toggle("has-gaps", missing > 0);

    this.renderTable(slots, totals, missing, pick);
    const native = meter.native_interval_s ? meter.native_interval_s / 60 + "-minute" : "no";
    const span = meter.first_start
      ? " The meter has data from " + this.localText(tz, meter.first_start) + " to " + this.localText(tz, meter.last_end) + " (" + native + " intervals)."
      : " The meter has no data yet.";
    this.$("an-meta").textContent = "Times are in the site's time zone, " + tz + "." + span +
      " Consumption is what the home used (production + import + discharge − export − charge); self-consumed is production less export within each " + (this.view === "day" ? "hour" : "day") + ".";
  }

  localText(tz, s) {
    const p = localParts(tz, s);
    return dateLabel(p.y, p.m, p.d, { day: "numeric", month: "short", year: "numeric" }) + " " + hhmm(p);
  }

  renderTable(slots, totals, missing, pick) {
    const table = this.$("an-table");
    const body = table.tBodies[0];
    body.textContent = "";
    this.$("an-col-period").textContent = UNIT[this.view];
    this.$("an-caption").textContent = "Energy per " + UNIT[this.view] + " (kWh), " + this.$("an-period").textContent;
    for (const s of slots) {
      const tr = body.insertRow();
      tr.dataset.start = s.start;
      tr.className = "state-" + s.state;
      const th = document.createElement("th");
      th.scope = "row";
      if (pick && s.date) {
        const b = document.createElement("button");
        b.type = "button";
        b.className = "link";
        b.textContent = s.long;
        b.addEventListener("click", () => pick(s));
        th.appendChild(b);
      } else {
        th.textContent = s.long;
      }
      tr.appendChild(th);
      for (const q of QUANTITIES) {
        const td = tr.insertCell();
        td.className = "num";
        td.dataset.q = q;
        td.textContent = kwh1(s.values[q]);
      }
      const st = tr.insertCell();
      st.className = "state";
      st.textContent = stateText(s, this.meterInfo, this.view);
    }
    for (const td of table.tFoot.querySelectorAll("td[data-q]")) {
      const v = totals[td.dataset.q];
      td.textContent = kwh1(v);
      td.dataset.wh = v === null ? "" : v;
    }
    table.tFoot.querySelector("td.state").textContent = missing ? missing + (missing === 1 ? " interval" : " intervals") + " missing" : "";
  }
}

window.gridmintAnalytics = { localParts, offsetS, wallToUtc, periodBounds, shift, kwh1, pct1, niceStep };

const analyticsMain = document.getElementById("analytics");
if (analyticsMain && document.getElementById("an-svg")) {
  if (analyticsMain.dataset.meter === "on") {
    new Analytics(analyticsMain).load();
  } else {
    analyticsMain.dataset.state = "error";
    document.getElementById("an-status").textContent = "The virtual meter is not running.";
  }
}
