// Helpers the DERMS pages share (fleet.js, events.js, event.js): building DOM nodes with text
// (never HTML, so ids and details from the API are escaped), the JSON API with the session
// cookie and its plain error messages, and number and time formatting.
"use strict";

const DERMS = (() => {
  const SVG = "http://www.w3.org/2000/svg";
  const pad = (n) => String(n).padStart(2, "0");

  function node(tag, attrs, ...children) {
    const e = document.createElement(tag);
    for (const [k, v] of Object.entries(attrs || {})) {
      if (v === null || v === undefined || v === false) continue;
      if (k === "class") e.className = v;
      else if (k === "text") e.textContent = v;
      else e.setAttribute(k, v);
    }
    for (const c of children) if (c !== null && c !== undefined) e.append(c);
    return e;
  }

  function svg(tag, attrs, text) {
    const e = document.createElementNS(SVG, tag);
    for (const [k, v] of Object.entries(attrs || {})) e.setAttribute(k, v);
    if (text !== undefined) e.textContent = text;
    return e;
  }

  function detailText(data, status) {
    const d = data && data.detail;
    if (typeof d === "string") return d;
    if (Array.isArray(d)) { // a 422 from pydantic: field errors
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

  function utcMs(ms) {
    if (!ms) return "—";
    const d = new Date(ms);
    return d.getUTCFullYear() + "-" + pad(d.getUTCMonth() + 1) + "-" + pad(d.getUTCDate()) +
      " " + pad(d.getUTCHours()) + ":" + pad(d.getUTCMinutes()) + ":" + pad(d.getUTCSeconds());
  }
  const utcS = (s) => utcMs(s * 1000);
  const hms = (ms) => utcMs(ms).slice(11);
  const int = (n) => (n === null || n === undefined ? "—" : Number(n).toLocaleString("en-US"));
  const pct = (permille) => (permille === null || permille === undefined ? "—" : (permille / 10).toFixed(1) + " %");
  const badge = (status, cls) => node("span", { class: "badge " + (cls || "status-") + status, text: status.replace(/_/g, " ") });

  function live(state, text) {
    const el = document.getElementById("live");
    if (!el) return;
    el.dataset.state = state;
    el.textContent = text;
  }

  return { node, svg, api, utcMs, utcS, hms, int, pct, badge, live, pad };
})();
