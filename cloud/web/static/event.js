// One dispatch event: polls the event, its device responses and its performance every few
// seconds and draws requested versus delivered power (the aggregator's samples) as an SVG line
// chart with the baseline. Grid operators can send a modification or cancel the event.
"use strict";

(() => {
  const root = document.getElementById("event-page");
  if (!root) return;
  const { node, svg, api, utcS, hms, int, pct, badge, live } = DERMS;
  const id = root.dataset.event;
  const base = "/api/v1/dispatch/events/" + encodeURIComponent(id);
  const pollMs = Number(root.dataset.pollMs) || 2000;
  let event = JSON.parse(document.getElementById("event-json").textContent);

  const text = (elId, v) => {
    const el = document.getElementById(elId);
    if (el && el.textContent !== String(v)) el.textContent = v;
  };

  function renderEvent(e) {
    event = e;
    const s = document.getElementById("status");
    s.textContent = e.status;
    s.className = "badge status-" + e.status;
    text("f-value", e.value);
    text("f-modification", e.modification);
    text("f-window", utcS(e.start) + " – " + utcS(e.start + e.duration_s));
    text("f-ramp", e.ramp_s + " s / " + e.randomize_start_s + " s");
    const over = e.status === "cancelled" || e.status === "completed";
    for (const b of document.querySelectorAll("#modify-open, #cancel, #modify-submit")) b.disabled = over;
  }

  function renderDevices(list) {
    const body = document.querySelector("#responses tbody");
    body.textContent = "";
    if (!list.length) body.append(node("tr", { class: "empty" }, node("td", { colspan: 9, text: "no devices" })));
    for (const d of list) {
      body.append(node("tr", { "data-device": d.device_id },
        node("td", { text: d.device_id }),
        node("td", { text: d.site_id }),
        node("td", { class: "num", text: d.modification }),
        node("td", { class: "num", text: int(d.value) }),
        node("td", { class: "num", text: int(d.expected_w) }),
        node("td", { class: "num", text: int(d.measured_w) }),
        node("td", { class: "status" }, badge(d.status)),
        node("td", { class: "num latency", text: d.latency_ms === null ? "—" : d.latency_ms + " ms" }),
        node("td", { class: "reason", text: d.detail || "" })));
    }
  }

  function renderSites(sites) {
    const body = document.querySelector("#sites tbody");
    body.textContent = "";
    if (!sites.length) body.append(node("tr", { class: "empty" }, node("td", { colspan: 5, text: "no sites" })));
    for (const s of sites) {
      body.append(node("tr", { "data-site": s.site_id },
        node("td", { text: s.site_id }),
        node("td", { class: "num", text: int(s.requested_w) }),
        node("td", { class: "num", text: int(s.delivered_w) }),
        node("td", { class: "num", text: int(s.baseline_w) }),
        node("td", { class: "num", text: pct(s.soc_permille) })));
    }
  }

  function niceStep(span) {
    const raw = span / 4;
    const mag = Math.pow(10, Math.floor(Math.log10(raw || 1)));
    for (const m of [1, 2, 5, 10]) if (m * mag >= raw) return m * mag;
    return 10 * mag;
  }

  function drawChart(series, baseline) {
    const el = document.getElementById("perf-chart");
    const W = el.clientWidth || 800, H = el.clientHeight || 240;
    el.setAttribute("viewBox", "0 0 " + W + " " + H);
    el.textContent = "";
    if (series.length < 1) {
      el.append(svg("text", { x: W / 2, y: H / 2, "text-anchor": "middle", class: "empty-chart" }, "no samples yet"));
      return;
    }
    const L = 64, R = 12, T = 10, B = 24;
    const ts = series.map((p) => p[0]);
    const ws = series.flatMap((p) => [p[1], p[2]]).concat([baseline, 0]);
    let lo = Math.min(...ws), hi = Math.max(...ws);
    if (hi === lo) { hi += 1; lo -= 1; }
    const step = niceStep(hi - lo);
    lo = Math.floor(lo / step) * step;
    hi = Math.ceil(hi / step) * step;
    const t0 = ts[0], t1 = Math.max(ts[ts.length - 1], t0 + 1);
    const x = (t) => L + ((t - t0) / (t1 - t0)) * (W - L - R);
    const y = (w) => T + ((hi - w) / (hi - lo)) * (H - T - B);
    for (let w = lo; w <= hi + step / 2; w += step) {
      el.append(svg("line", { x1: L, x2: W - R, y1: y(w), y2: y(w), class: "axis" + (w === 0 ? " zero" : ""), "stroke-opacity": w === 0 ? 1 : 0.4 }));
      el.append(svg("text", { x: L - 6, y: y(w) + 4, "text-anchor": "end", class: "tick" }, int(w)));
    }
    const anchors = ["start", "middle", "end"];
    [t0, Math.round((t0 + t1) / 2), t1].forEach((t, i) => {
      el.append(svg("text", { x: x(t), y: H - 6, "text-anchor": anchors[i], class: "tick" }, hms(t * 1000)));
    });
    el.append(svg("line", { x1: L, x2: W - R, y1: y(baseline), y2: y(baseline), class: "baseline" }));
    const line = (i, cls) => svg("polyline", {
      class: cls,
      points: series.map((p) => x(p[0]).toFixed(1) + "," + y(p[i]).toFixed(1)).join(" "),
    });
    el.append(line(1, "requested"), line(2, "delivered"));
    root.dataset.samples = series.length;
  }

  function renderPerformance(p) {
    text("requested", int(p.requested_w));
    text("delivered", int(p.delivered_w));
    text("baseline", int(p.baseline_w));
    text("baseline-method", p.baseline_method);
    renderSites(p.sites);
    drawChart(p.series, p.baseline_w);
  }

  async function refresh() {
    try {
      const [e, devices, perf] = await Promise.all([
        api("GET", base), api("GET", base + "/devices"), api("GET", base + "/performance"),
      ]);
      renderEvent(e);
      renderDevices(devices);
      renderPerformance(perf);
      live("live", "updated " + hms(Date.now()) + " UTC");
    } catch (err) {
      live("error", "not updating (" + err.message + ")");
    }
  }

  function say(msg, isError) {
    text("action-message", isError ? "" : msg);
    text("action-error", isError ? msg : "");
  }

  const cancel = document.getElementById("cancel");
  if (cancel) {
    cancel.addEventListener("click", async () => {
      cancel.disabled = true;
      try {
        renderEvent(await api("POST", base + "/cancel"));
        say("cancellation sent to every device of the event", false);
        refresh();
      } catch (err) {
        say(err.message, true);
        cancel.disabled = false;
      }
    });
    const form = document.getElementById("modify-form");
    document.getElementById("modify-open").addEventListener("click", () => { form.hidden = !form.hidden; });
    form.addEventListener("submit", async (ev) => {
      ev.preventDefault();
      const f = new FormData(form);
      const value = Number(f.get("value"));
      if (f.get("value") === "" || !Number.isInteger(value)) { say("value: a whole number is required", true); return; }
      const body = {
        group: event.group, control: event.control, value, start: event.start,
        duration_s: Number(f.get("duration_min")) * 60, ramp_s: Number(f.get("ramp_s") || 0),
        randomize_start_s: event.randomize_start_s, name: event.name,
      };
      try {
        renderEvent(await api("PUT", base, body));
        form.hidden = true;
        say("modification " + event.modification + " sent", false);
        refresh();
      } catch (err) {
        say(err.message, true);
      }
    });
  }

  refresh();
  setInterval(refresh, pollMs);
  window.addEventListener("resize", refresh);
})();
