// The live fleet: loads every device once (/api/v1/fleet/live), then follows
// /api/v1/fleet/stream: each `fleet` event carries only the devices that changed and every
// group's totals, and is applied in place (one table row and one map dot per device, the totals
// cards of the selected group). Search, state filter and group only hide rows. Open alarms are
// polled; grid operators acknowledge them here.
"use strict";

(() => {
  const root = document.getElementById("fleet-page");
  if (!root) return;
  const { node, svg, api, utcMs, hms, int, pct, badge, live } = DERMS;
  const canAck = root.dataset.canAck === "yes";
  const alarmsPollMs = Number(root.dataset.alarmsPollMs) || 5000;

  const devices = new Map(); // device id -> the API's LiveDevice
  const rows = new Map(); // device id -> <tr>
  const dots = new Map(); // device id -> <circle>
  let totals = {}; // group -> totals
  let version = 0;
  let box = null; // the map's bounding box {lat0, lat1, lon0, lon1}

  const groupSel = document.getElementById("group");
  const search = document.getElementById("search");
  const stateSel = document.getElementById("state-filter");
  const body = document.querySelector("#devices tbody");
  const map = document.getElementById("map");

  // ---- totals

  function renderTotals() {
    const t = totals[groupSel.value];
    for (const el of document.querySelectorAll("[data-total]")) {
      const k = el.dataset.total;
      let v = "—";
      if (t) v = k === "soc" ? pct(t.soc_permille) : int(t[k]);
      if (el.textContent !== v) el.textContent = v;
    }
  }

  function addGroups(names) {
    const have = new Set(Array.from(groupSel.options, (o) => o.value));
    for (const g of names.sort()) {
      if (!have.has(g)) groupSel.append(node("option", { value: g, text: g }));
    }
  }

  // ---- table

  function inGroup(d, g) {
    if (g === "all") return true;
    const [kind, value] = [g.slice(0, g.indexOf(":")), g.slice(g.indexOf(":") + 1)];
    if (kind === "zone") return d.zone === value;
    if (kind === "site") return d.site_id === value;
    return kind === "device" && d.device_id === value;
  }

  function visible(d) {
    const q = search.value.trim();
    return inGroup(d, groupSel.value) &&
      (!q || d.device_id.includes(q) || d.site_id.includes(q)) &&
      (!stateSel.value || d.state === stateSel.value);
  }

  function cell(tr, cls, value) {
    const td = tr.querySelector("td." + cls);
    const text = String(value);
    if (td.textContent !== text) td.textContent = text;
  }

  function fillRow(tr, d) {
    const b = tr.querySelector("td.state .badge");
    if (b.textContent !== d.state.replace(/_/g, " ")) b.replaceWith(badge(d.state, "state-"));
    cell(tr, "zone", d.zone || "—");
    cell(tr, "last", d.last_ms ? utcMs(d.last_ms) : "—");
    cell(tr, "pv", int(d.pv_w));
    cell(tr, "bat", int(d.battery_w));
    cell(tr, "soc", pct(d.soc_permille));
    cell(tr, "grid", int(d.grid_w));
    tr.dataset.state = d.state;
    tr.hidden = !visible(d);
  }

  function newRow(d) {
    const link = node("a", { href: "/devices/" + encodeURIComponent(d.device_id), text: d.device_id });
    const tr = node("tr", { "data-device": d.device_id },
      node("td", { class: "id" }, link),
      node("td", { class: "site", text: d.site_id }),
      node("td", { class: "zone" }),
      node("td", { class: "state" }, badge(d.state, "state-")),
      node("td", { class: "last" }),
      node("td", { class: "num pv" }), node("td", { class: "num bat" }),
      node("td", { class: "num soc" }), node("td", { class: "num grid" }));
    rows.set(d.device_id, tr);
    return tr;
  }

  function place(tr, id) {
    // keep the rows sorted by device id
    let next = null;
    for (const [other, row] of rows) if (other > id && (!next || other < next[0])) next = [other, row];
    body.insertBefore(tr, next ? next[1] : null);
  }

  function countShown() {
    let n = 0;
    for (const tr of rows.values()) n += !tr.hidden;
    document.getElementById("shown").textContent = n + " of " + rows.size;
    const empty = body.querySelector("tr.empty");
    if (rows.size && empty) empty.remove();
  }

  function applyDevice(d, append) {
    devices.set(d.device_id, d);
    let tr = rows.get(d.device_id);
    if (!tr) {
      tr = newRow(d);
      if (append) body.append(tr); // the first page comes sorted
      else place(tr, d.device_id);
    }
    fillRow(tr, d);
    drawDot(d);
  }

  function refilter() {
    for (const [id, tr] of rows) tr.hidden = !visible(devices.get(id));
    for (const [id, c] of dots) c.classList.toggle("dim", !inGroup(devices.get(id), groupSel.value));
    countShown();
    renderTotals();
  }

  // ---- map: an equirectangular projection of the fleet's bounding box

  function bounds() {
    const pts = [...devices.values()].filter((d) => d.latitude !== null && d.longitude !== null);
    if (!pts.length) return null;
    const lats = pts.map((d) => d.latitude), lons = pts.map((d) => d.longitude);
    let [lat0, lat1, lon0, lon1] = [Math.min(...lats), Math.max(...lats), Math.min(...lons), Math.max(...lons)];
    const padLat = Math.max((lat1 - lat0) * 0.08, 0.005), padLon = Math.max((lon1 - lon0) * 0.08, 0.005);
    return { lat0: lat0 - padLat, lat1: lat1 + padLat, lon0: lon0 - padLon, lon1: lon1 + padLon };
  }

  function project(d) {
    const W = 600, H = 340;
    const k = Math.cos(((box.lat0 + box.lat1) / 2) * Math.PI / 180); // a degree of longitude is shorter
    const spanX = (box.lon1 - box.lon0) * k, spanY = box.lat1 - box.lat0;
    const scale = Math.min(W / spanX, H / spanY);
    const ox = (W - spanX * scale) / 2, oy = (H - spanY * scale) / 2;
    return [ox + (d.longitude - box.lon0) * k * scale, oy + (box.lat1 - d.latitude) * scale];
  }

  function redrawMap() {
    map.textContent = "";
    dots.clear();
    box = bounds();
    if (!box) {
      map.append(svg("text", { x: 300, y: 170, "text-anchor": "middle", class: "empty-chart" }, "no site has a location yet"));
      return;
    }
    for (const d of devices.values()) drawDot(d);
    const fmt = (v, pos, neg) => Math.abs(v).toFixed(2) + "° " + (v >= 0 ? pos : neg);
    map.append(svg("text", { x: 6, y: 14, class: "tick" }, fmt(box.lat1, "N", "S") + ", " + fmt(box.lon0, "E", "W")));
    map.append(svg("text", { x: 594, y: 334, "text-anchor": "end", class: "tick" }, fmt(box.lat0, "N", "S") + ", " + fmt(box.lon1, "E", "W")));
  }

  function drawDot(d) {
    if (!box || d.latitude === null || d.longitude === null) return;
    if (d.latitude < box.lat0 || d.latitude > box.lat1 || d.longitude < box.lon0 || d.longitude > box.lon1) {
      redrawMap(); // outside the box: a new box
      return;
    }
    let c = dots.get(d.device_id);
    const [x, y] = project(d);
    if (!c) {
      c = svg("circle", { r: 7, "data-device": d.device_id });
      c.append(svg("title", {}, ""));
      c.addEventListener("click", () => { // show this site's devices in the table
        search.value = d.site_id;
        refilter();
      });
      map.append(c);
      dots.set(d.device_id, c);
    }
    c.setAttribute("cx", x.toFixed(1));
    c.setAttribute("cy", y.toFixed(1));
    c.setAttribute("class", "state-" + d.state + (inGroup(d, groupSel.value) ? "" : " dim"));
    c.firstChild.textContent = d.device_id + " (" + d.site_id + "): " + d.state.replace(/_/g, " ") +
      (d.pv_w !== null ? ", PV " + d.pv_w + " W" : "");
  }

  // ---- alarms

  function alarmRow(a) {
    const state = (a.cleared_ms ? "cleared" : "active") + (a.acked_ms ? " · acknowledged" : "");
    const act = node("td", { class: "actions" });
    if (canAck && !a.acked_ms) {
      const b = node("button", { type: "button", class: "small", "data-ack": a.alarm_id, text: "Acknowledge" });
      b.addEventListener("click", () => acknowledge(a.alarm_id, b));
      act.append(b);
    }
    return node("tr", { "data-alarm": a.alarm_id, class: a.cleared_ms ? "" : "raised" },
      node("td", { text: utcMs(a.raised_ms) }),
      node("td", {}, badge(a.kind, "alarm-")),
      node("td", { text: a.device_id }),
      node("td", { class: "reason", text: a.detail }),
      node("td", { class: "alarm-state", text: state }), act);
  }

  async function loadAlarms() {
    const err = document.getElementById("alarm-error");
    try {
      const list = await api("GET", "/api/v1/alarms?open=true&limit=200");
      const tbody = document.querySelector("#alarms tbody");
      tbody.textContent = "";
      if (!list.length) tbody.append(node("tr", { class: "empty" }, node("td", { colspan: 6, text: "no open alarms" })));
      for (const a of list) tbody.append(alarmRow(a));
      err.textContent = "";
    } catch (e) {
      err.textContent = "alarms: " + e.message;
    }
  }

  async function acknowledge(id, button) {
    button.disabled = true;
    try {
      const a = await api("POST", "/api/v1/alarms/" + encodeURIComponent(id) + "/ack");
      const tr = document.querySelector('#alarms tr[data-alarm="' + CSS.escape(String(id)) + '"]');
      if (tr) tr.replaceWith(alarmRow(a));
    } catch (e) {
      button.disabled = false;
      document.getElementById("alarm-error").textContent = "acknowledge: " + e.message;
    }
  }

  // ---- the stream

  function follow() {
    const source = new EventSource("/api/v1/fleet/stream?since=" + version);
    source.addEventListener("hello", () => live("live", "live"));
    source.addEventListener("fleet", (ev) => {
      const data = JSON.parse(ev.data);
      version = data.version;
      for (const d of data.devices) applyDevice(d);
      totals = data.totals;
      addGroups(Object.keys(totals));
      countShown();
      renderTotals();
      root.dataset.version = version;
      live("live", "live · " + hms(Date.now()) + " UTC");
    });
    source.onerror = () => live("reconnecting", "reconnecting…");
  }

  async function start() {
    try {
      const [page, groups] = await Promise.all([
        api("GET", "/api/v1/fleet/live?limit=10000"),
        api("GET", "/api/v1/fleet/groups"),
      ]);
      version = page.version;
      for (const g of groups) totals[g.group] = g;
      addGroups(Object.keys(totals));
      body.textContent = "";
      for (const d of page.devices) devices.set(d.device_id, d);
      redrawMap();
      for (const d of page.devices) applyDevice(d, true);
      if (!page.devices.length) body.append(node("tr", { class: "empty" }, node("td", { colspan: 9, text: "no approved devices yet" })));
      countShown();
      renderTotals();
      root.dataset.version = version;
      follow();
    } catch (e) {
      live("error", "not updating (" + e.message + ")");
    }
  }

  groupSel.addEventListener("change", refilter);
  stateSel.addEventListener("change", refilter);
  search.addEventListener("input", refilter);
  start();
  loadAlarms();
  setInterval(loadAlarms, alarmsPollMs);
})();
