// The trading desk: the anonymous book of the selected delivery interval, the caller's orders
// and trades, the clearing-price history and a depth chart, from the market API (session
// cookie). Live: every `market` event on /api/v1/market/stream re-fetches everything; trades
// are also polled every few seconds, because settlement happens in the ledger loop without a
// market event. Homeowners get an order form and cancel/amend controls; other roles read only.
// Prices are whole minor units per kWh and energy whole Wh: the page sends integers only.
"use strict";

(() => {
  const desk = document.getElementById("desk");
  if (!desk) return;

  const SVG = "http://www.w3.org/2000/svg";
  const canTrade = desk.dataset.canTrade === "yes";
  const pollMs = Number(desk.dataset.pollMs) || 5000;
  const upcoming = Number(desk.dataset.upcoming) || 12;
  const RESTING = new Set(["open", "partially_filled"]);

  const state = {
    info: JSON.parse(document.getElementById("market-info").textContent),
    // The market runs on the server's clock: the countdown follows it, not the browser's.
    offsetMs: Number(desk.dataset.nowMs) - Date.now(),
    selected: null,
    book: null,
    history: [],
    gateWasOpen: null,
  };
  state.selected = state.info.next_interval;

  // ---------------------------------------------------------------------------------------
  // formatting

  const pad = (n) => String(n).padStart(2, "0");
  function utc(s) {
    const d = new Date(s * 1000);
    return d.getUTCFullYear() + "-" + pad(d.getUTCMonth() + 1) + "-" + pad(d.getUTCDate()) +
      " " + pad(d.getUTCHours()) + ":" + pad(d.getUTCMinutes()) + ":" + pad(d.getUTCSeconds());
  }
  function hm(s) {
    const d = new Date(s * 1000);
    return pad(d.getUTCHours()) + ":" + pad(d.getUTCMinutes());
  }
  const int = (n) => (n === null || n === undefined ? "—" : Number(n).toLocaleString("en-US"));
  const minor = (n) => (n === null || n === undefined ? "—" : int(n) + " c");
  function duration(s) {
    const h = Math.floor(s / 3600), m = Math.floor((s % 3600) / 60), sec = s % 60;
    return (h ? h + ":" + pad(m) : String(m)) + ":" + pad(sec);
  }

  function node(tag, attrs, ...children) {
    const e = document.createElement(tag);
    for (const [k, v] of Object.entries(attrs || {})) {
      if (v === null || v === undefined || v === false) continue;
      if (k === "class") e.className = v;
      else if (k === "text") e.textContent = v;
      else if (k.startsWith("data-")) e.setAttribute(k, v);
      else if (k in e) e[k] = v;
      else e.setAttribute(k, v);
    }
    for (const c of children) if (c !== null && c !== undefined) e.append(c);
    return e;
  }
  function svgEl(tag, attrs, text) {
    const e = document.createElementNS(SVG, tag);
    for (const [k, v] of Object.entries(attrs || {})) e.setAttribute(k, v);
    if (text !== undefined) e.textContent = text;
    return e;
  }
  const badge = (status) => node("span", { class: "badge status-" + status, text: status.replace("_", " ") });

  function live(s, text) {
    const el = document.getElementById("live");
    el.dataset.state = s;
    el.textContent = text;
  }

  // ---------------------------------------------------------------------------------------
  // the API

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
    if (!resp.ok) {
      const err = new Error(detailText(data, resp.status));
      err.status = resp.status;
      throw err;
    }
    return data;
  }

  // ---------------------------------------------------------------------------------------
  // the market's clock, the intervals and the gate

  function serverNow() { return (Date.now() + state.offsetMs) / 1000; }

  function applyInfo(info) {
    state.info = info;
    // next_interval = N tells the server's time: N - interval - gate <= now < N - gate.
    const lo = info.next_interval - info.interval_s - info.gate_closure_s;
    const hi = info.next_interval - info.gate_closure_s - 0.001;
    const now = serverNow();
    if (now < lo) state.offsetMs += (lo - now) * 1000;
    else if (now > hi) state.offsetMs -= (now - hi) * 1000;
    renderIntervals();
  }

  function renderIntervals() {
    const info = state.info, open = new Set(info.open_intervals);
    const all = new Set([state.selected]);
    for (let k = 0; k < upcoming; k++) all.add(info.next_interval + k * info.interval_s);
    for (const t of info.open_intervals) all.add(t);
    const list = [...all].sort((a, b) => a - b);
    const label = (t) => hm(t) + "–" + hm(t + info.interval_s) + " UTC" +
      (t < info.next_interval ? " · gate closed" : open.has(t) ? " · book open" : "");
    const select = document.getElementById("interval");
    const key = list.map((t) => t + label(t)).join(",");
    if (select.dataset.key !== key) {
      select.replaceChildren(...list.map((t) => node("option", { value: String(t), text: label(t) })));
      select.dataset.key = key;
    }
    select.value = String(state.selected);
    document.getElementById("interval-window").textContent =
      utc(state.selected) + " – " + utc(state.selected + info.interval_s).slice(11) + " UTC";
    tick();
  }

  function gateOpen() {
    const t = state.selected, info = state.info;
    if (t < info.next_interval) return false;
    if (state.book && state.book.interval_start === t && !state.book.open) return false;
    return t - info.gate_closure_s - serverNow() > 0;
  }

  function tick() {
    const el = document.getElementById("gate");
    const gate = state.selected - state.info.gate_closure_s;
    const open = gateOpen();
    el.dataset.state = open ? "open" : "closed";
    el.textContent = open
      ? "gate closes in " + duration(Math.ceil(gate - serverNow())) + " (" + utc(gate).slice(11, 16) + " UTC)"
      : "gate closed " + utc(gate).slice(11, 16) + " UTC";
    if (canTrade) {
      const button = document.getElementById("order-submit");
      button.dataset.gate = open ? "open" : "closed";
      button.disabled = !open || submitting;
      button.title = open ? "" : "orders for this interval are closed";
    }
    if (state.gateWasOpen === true && !open) refresh(); // the gate just passed: ask the server
    state.gateWasOpen = open;
  }

  // ---------------------------------------------------------------------------------------
  // the book and the depth chart

  function renderSide(id, levels, best) {
    const body = document.querySelector("#" + id + " tbody");
    if (!levels.length) {
      body.replaceChildren(node("tr", { class: "empty" }, node("td", { colSpan: 3, text: id === "bids" ? "no bids" : "no offers" })));
      return;
    }
    body.replaceChildren(...levels.map((l) => node(
      "tr", { class: l.price === best ? "best" : "", "data-price": l.price },
      node("td", { class: "num price", text: String(l.price) }),
      node("td", { class: "num qty", text: int(l.quantity_wh) }),
      node("td", { class: "num count", text: String(l.orders) }),
    )));
  }

  function renderBook(book) {
    state.book = book;
    const bids = [...book.bids].sort((a, b) => b.price - a.price);
    const offers = [...book.offers].sort((a, b) => a.price - b.price);
    renderSide("bids", bids, book.best_bid);
    renderSide("offers", offers, book.best_ask);
    document.getElementById("best-bid").textContent = book.best_bid ?? "—";
    document.getElementById("best-ask").textContent = book.best_ask ?? "—";
    drawDepth(bids, offers);
  }

  function frame(svg, fallbackH) {
    const w = Math.max(200, Math.round(svg.clientWidth || 480));
    const h = Math.max(100, Math.round(svg.clientHeight || fallbackH));
    svg.setAttribute("viewBox", "0 0 " + w + " " + h);
    svg.replaceChildren();
    return { w, h, pad: { l: 44, r: 12, t: 18, b: 22 } };
  }

  function drawDepth(bids, offers) {
    const svg = document.getElementById("depth");
    const { w, h, pad: p } = frame(svg, 170);
    const info = state.info;
    const lo = info.feed_in_price, hi = Math.max(info.retail_price, lo + 1);
    const x = (price) => p.l + ((price - lo) / (hi - lo)) * (w - p.l - p.r);
    const cum = (levels) => { let c = 0; return levels.map((l) => ({ price: l.price, c: (c += l.quantity_wh) })); };
    const cb = cum(bids), co = cum(offers);
    const top = Math.max(1, ...cb.map((v) => v.c), ...co.map((v) => v.c));
    const y = (q) => h - p.b - (q / top) * (h - p.t - p.b);
    const axis = h - p.b;
    svg.append(svgEl("line", { x1: p.l, y1: axis, x2: w - p.r, y2: axis, class: "axis" }));
    for (const v of [lo, Math.round((lo + hi) / 2), hi]) {
      svg.append(svgEl("text", { x: x(v), y: h - 6, "text-anchor": "middle", class: "tick" }, String(v)));
    }
    if (cb.length || co.length) {
      svg.append(svgEl("text", { x: p.l - 6, y: p.t + 8, "text-anchor": "end", class: "tick" }, int(top)));
      svg.append(svgEl("text", { x: p.l - 6, y: p.t + 22, "text-anchor": "end", class: "tick" }, "Wh"));
    }
    svg.append(svgEl("text", { x: p.l - 6, y: axis, "text-anchor": "end", class: "tick" }, "0"));
    // Bids: what is bid at this price or more, stepping down to the floor; offers likewise up.
    const step = (points, end, cls) => {
      if (!points.length) return;
      let d = "M" + x(points[0].price) + "," + axis;
      for (let i = 0; i < points.length; i++) {
        d += " V" + y(points[i].c);
        d += " H" + x(i + 1 < points.length ? points[i + 1].price : end);
      }
      d += " V" + axis + " Z";
      svg.append(svgEl("path", { d, class: cls }));
    };
    step(cb, lo, "depth-bids");
    step(co, hi, "depth-offers");
    const best = [[cb, "bid ", "best-bid", "end", -4], [co, "offer ", "best-offer", "start", 4]];
    for (const [points, name, cls, anchor, dx] of best) {
      if (!points.length) continue;
      const bx = x(points[0].price);
      svg.append(svgEl("line", { x1: bx, y1: p.t - 16, x2: bx, y2: axis, class: "best-line " + cls }));
      svg.append(svgEl("text", { x: bx + dx, y: p.t - 6, "text-anchor": anchor, class: "tick " + cls }, name + points[0].price));
    }
    if (!cb.length && !co.length) {
      svg.append(svgEl("text", { x: w / 2, y: h / 2, "text-anchor": "middle", class: "empty-chart" }, "no orders in this interval's book"));
    }
  }

  // ---------------------------------------------------------------------------------------
  // the clearing-price history

  function drawHistory(rows) {
    state.history = rows;
    const svg = document.getElementById("history");
    const { w, h, pad: p } = frame(svg, 170);
    const info = state.info;
    const data = [...rows].sort((a, b) => a.interval_start - b.interval_start);
    if (!data.length) {
      svg.append(svgEl("text", { x: w / 2, y: h / 2, "text-anchor": "middle", class: "empty-chart" }, "no trades yet"));
      return;
    }
    const lo = Math.min(info.feed_in_price, ...data.map((r) => r.low_price));
    const hi = Math.max(info.retail_price, ...data.map((r) => r.high_price), lo + 1);
    const n = data.length, slot = (w - p.l - p.r) / n;
    const x = (i) => p.l + slot * (i + 0.5);
    const y = (price) => h - p.b - ((price - lo) / (hi - lo)) * (h - p.t - p.b);
    const vmax = Math.max(...data.map((r) => r.volume_wh));
    for (const [v, name] of [[info.feed_in_price, "feed-in"], [info.retail_price, "retail"]]) {
      svg.append(svgEl("line", { x1: p.l, y1: y(v), x2: w - p.r, y2: y(v), class: "band" }));
      svg.append(svgEl("text", { x: p.l - 6, y: y(v) + 4, "text-anchor": "end", class: "tick" }, String(v)));
      svg.append(svgEl("text", { x: w - p.r, y: y(v) - 3, "text-anchor": "end", class: "tick" }, name));
    }
    data.forEach((r, i) => { // volume, scaled to the lower third
      const bh = (r.volume_wh / vmax) * (h - p.t - p.b) * 0.33, bw = Math.min(slot * 0.7, 22);
      svg.append(svgEl("rect", { x: x(i) - bw / 2, y: h - p.b - bh, width: bw, height: bh, class: "volume" }));
      svg.lastChild.append(svgEl("title", {}, hm(r.interval_start) + " UTC: " + int(r.volume_wh) + " Wh in " + r.trades + " trades"));
      svg.append(svgEl("line", { x1: x(i), y1: y(r.low_price), x2: x(i), y2: y(r.high_price), class: "range" }));
    });
    svg.append(svgEl("polyline", { points: data.map((r, i) => x(i) + "," + y(r.average_price)).join(" "), class: "price" }));
    data.forEach((r, i) => {
      const dot = svgEl("circle", { cx: x(i), cy: y(r.average_price), r: 3.5, class: "price-dot" });
      dot.append(svgEl("title", {}, hm(r.interval_start) + " UTC: average " + r.average_price + " c/kWh (" + r.low_price + "–" + r.high_price + "), last " + r.last_price));
      svg.append(dot);
    });
    const labels = n === 1 ? [0] : [0, n - 1];
    for (const i of labels) {
      svg.append(svgEl("text", { x: x(i), y: h - 6, "text-anchor": n === 1 ? "middle" : i ? "end" : "start", class: "tick" }, hm(data[i].interval_start)));
    }
    const last = data[n - 1];
    svg.append(svgEl("text", { x: x(n - 1) - 6, y: y(last.average_price) - 8, "text-anchor": "end", class: "last-label" }, last.average_price + " c/kWh"));
  }

  // ---------------------------------------------------------------------------------------
  // orders: rows are kept by order id, so an open amend control survives a refresh

  function orderCells(o) {
    const status = node("td", { "data-field": "status" }, badge(o.status));
    if (o.cancel_reason && o.cancel_reason !== "user") status.append(node("span", { class: "sub", text: o.cancel_reason.replace(/_/g, " ") }));
    return [
      node("td", { class: "mono", "data-field": "interval", text: hm(o.interval_start), title: utc(o.interval_start) + " UTC" }),
      node("td", { class: "mono site", "data-field": "site", text: o.site_id }),
      node("td", { "data-field": "side" }, node("span", { class: "side side-" + o.side, text: o.side })),
      node("td", { class: "num", "data-field": "limit", text: String(o.limit_price) }),
      node("td", { class: "num", "data-field": "filled", text: int(o.filled_wh) + " / " + int(o.quantity_wh) }),
      node("td", { class: "num", "data-field": "remaining", text: int(o.remaining_wh) }),
      node("td", { class: "num", "data-field": "avg", text: o.average_price === null ? "—" : String(o.average_price) }),
      status,
    ];
  }

  function orderActions(o, cell) {
    const error = node("span", { class: "row-error" });
    const cancel = node("button", { type: "button", class: "small danger", text: "cancel", "data-action": "cancel" });
    const amend = node("button", { type: "button", class: "small", text: "amend", "data-action": "amend" });
    const price = node("input", { type: "number", class: "amend-price", min: state.info.feed_in_price, max: state.info.retail_price, step: state.info.tick, value: o.limit_price, title: "limit c/kWh", "aria-label": "new limit price" });
    const qty = node("input", { type: "number", class: "amend-qty", min: 1, step: 1, value: o.quantity_wh, title: "total Wh", "aria-label": "new total quantity" });
    const save = node("button", { type: "button", class: "small", text: "save", "data-action": "save" });
    const close = node("button", { type: "button", class: "small ghost", text: "×", title: "close", "data-action": "close" });
    const editor = node("span", { class: "amend", hidden: true }, price, " c ", qty, " Wh ", save, close);
    const buttons = node("span", { class: "buttons" }, amend, cancel);
    cell.replaceChildren(buttons, editor, error);
    const busy = (b) => { for (const x of [cancel, amend, save]) x.disabled = b; };
    amend.addEventListener("click", () => {
      price.value = o.limit_price; qty.value = o.quantity_wh;
      editor.hidden = false; buttons.hidden = true; error.textContent = ""; price.focus();
    });
    close.addEventListener("click", () => { editor.hidden = true; buttons.hidden = false; });
    cancel.addEventListener("click", async () => {
      busy(true); error.textContent = "";
      try { await api("DELETE", "/api/v1/market/orders/" + encodeURIComponent(o.order_id)); refresh(); }
      catch (err) { error.textContent = err.message; }
      finally { busy(false); }
    });
    save.addEventListener("click", async () => {
      const body = {};
      for (const [input, field, current] of [[price, "limit_price", o.limit_price], [qty, "quantity_wh", o.quantity_wh]]) {
        if (!/^\d+$/.test(input.value.trim())) { error.textContent = field + ": a whole number, please"; return; }
        if (Number(input.value) !== current) body[field] = Number(input.value);
      }
      if (!Object.keys(body).length) { editor.hidden = true; buttons.hidden = false; return; }
      busy(true); error.textContent = "";
      try {
        await api("PATCH", "/api/v1/market/orders/" + encodeURIComponent(o.order_id), body);
        editor.hidden = true; buttons.hidden = false;
        refresh();
      } catch (err) { error.textContent = err.message; }
      finally { busy(false); }
    });
  }

  function renderOrders(orders) {
    const body = document.querySelector("#orders tbody");
    const cols = canTrade ? 9 : 8;
    if (!orders.length) {
      body.replaceChildren(node("tr", { class: "empty" }, node("td", { colSpan: cols, text: canTrade ? "no orders yet: place one with the form above" : "no orders" })));
      return;
    }
    const old = new Map([...body.querySelectorAll("tr[data-order]")].map((r) => [r.dataset.order, r]));
    const rows = orders.map((o) => {
      let row = old.get(o.order_id);
      const resting = RESTING.has(o.status);
      if (!row) row = node("tr", { "data-order": o.order_id });
      const sig = JSON.stringify(o);
      if (row.dataset.sig !== sig) { // unchanged rows are left alone, so an open editor stays
        row.replaceChildren(...orderCells(o));
        if (canTrade) {
          const cell = node("td", { class: "actions" });
          if (resting) orderActions(o, cell);
          row.append(cell);
        }
        row.dataset.sig = sig;
      }
      row.classList.toggle("this-interval", o.interval_start === state.selected);
      return row;
    });
    body.replaceChildren(...rows);
  }

  // ---------------------------------------------------------------------------------------
  // trades

  function renderTrades(trades) {
    const body = document.querySelector("#trades tbody");
    if (!trades.length) {
      body.replaceChildren(node("tr", { class: "empty" }, node("td", { colSpan: 11, text: "no trades yet" })));
      return;
    }
    body.replaceChildren(...trades.map((t) => {
      const settled = t.settled_wh !== null;
      const status = node("td", { "data-field": "status" }, badge(t.status));
      if (t.status === "short") status.append(node("span", { class: "under-delivered", text: "⚠ under-delivered", title: "the seller delivered less than sold" }));
      let amount = "—";
      if (settled) {
        if (t.side === "buy") amount = "paid " + minor(t.buyer_paid_minor);
        else if (t.side === "sell") amount = "recv. " + minor(t.seller_received_minor);
        else amount = minor(t.buyer_paid_minor) + " / " + minor(t.seller_received_minor);
      }
      const short = node("td", { class: "num", "data-field": "shortfall", text: settled ? int(t.shortfall_wh) : "—" });
      if (settled && t.shortfall_wh && t.shortfall_cost_minor !== null) {
        short.append(node("span", { class: "sub", text: "grid " + minor(t.shortfall_cost_minor) }));
      }
      const who = t.side === null // the operator sees both sites
        ? node("span", { class: "mono small sites", title: "seller → buyer" }, t.seller_site_id, node("span", { class: "sub", text: "→ " + t.buyer_site_id }))
        : node("span", { class: "side side-" + t.side, text: t.side });
      const proof = node("a", {
        href: "/api/v1/market/trades/" + encodeURIComponent(t.trade_id) + "/proof",
        target: "_blank", rel: "noopener", class: "mono", "data-field": "entry",
        title: "ledger entry " + t.entry_seq + ": inclusion proof (JSON)", text: "#" + t.entry_seq,
      });
      const entry = node("td", {}, proof);
      if (t.settlement_seq !== null) entry.append(node("span", { class: "sub mono", text: "→ #" + t.settlement_seq, title: "its settlement: ledger entry " + t.settlement_seq }));
      return node("tr", { "data-trade": t.trade_id, "data-status": t.status, class: t.status === "short" ? "short" : "" },
        node("td", { class: "mono", "data-field": "interval", text: hm(t.interval_start), title: utc(t.interval_start) + " UTC" }),
        node("td", { "data-field": "side" }, who),
        node("td", { class: "num", "data-field": "quantity", text: int(t.quantity_wh) }),
        node("td", { class: "num", "data-field": "price", text: String(t.price) }),
        status,
        node("td", { class: "num", "data-field": "settled", text: settled ? int(t.settled_wh) : "—" }),
        short,
        node("td", { class: "num", "data-field": "amount", text: amount }),
        node("td", { class: "num", "data-field": "platform_fee", text: settled ? minor(t.platform_fee_minor) : "—" }),
        node("td", { class: "num", "data-field": "dso_fee", text: settled ? minor(t.dso_fee_minor) : "—" }),
        entry,
      );
    }));
  }

  // ---------------------------------------------------------------------------------------
  // refreshing: one at a time; a request for more while one runs runs once more after it

  let running = null, again = false;
  function refresh(what = "all") {
    if (running) { again = again === "all" || what === "all" ? "all" : what; return running; }
    running = (async () => {
      let part = what;
      for (;;) {
        await refreshOnce(part);
        if (!again) break;
        part = again; again = false;
      }
    })().finally(() => { running = null; });
    return running;
  }

  async function refreshOnce(what) {
    try {
      if (what === "trades") {
        const [info, trades] = await Promise.all([api("GET", "/api/v1/market"), api("GET", "/api/v1/market/trades?limit=50")]);
        applyInfo(info);
        renderTrades(trades);
      } else {
        applyInfo(await api("GET", "/api/v1/market"));
        const t = state.selected;
        const [book, orders, trades, history] = await Promise.all([
          api("GET", "/api/v1/market/book?interval_start=" + t),
          api("GET", "/api/v1/market/orders?limit=50"),
          api("GET", "/api/v1/market/trades?limit=50"),
          api("GET", "/api/v1/market/history?limit=48"),
        ]);
        if (t === state.selected) renderBook(book);
        renderOrders(orders);
        renderTrades(trades);
        drawHistory(history);
        tick();
      }
      document.getElementById("updated").textContent = "Updated " + new Date().toTimeString().slice(0, 8) + " (your clock).";
      if (!stream || stream.readyState === EventSource.OPEN) live("live", "live");
    } catch (err) {
      live("error", "not updating (" + err.message + ")");
    }
  }

  let stream = null;
  function connect() {
    stream = new EventSource("/api/v1/market/stream");
    stream.addEventListener("hello", () => { live("live", "live"); refresh(); });
    stream.addEventListener("market", () => refresh());
    stream.addEventListener("error", () => {
      // EventSource reconnects by itself; until then the poll below carries the page
      live("error", stream.readyState === EventSource.CLOSED ? "stream closed, polling" : "reconnecting…");
    });
  }

  // ---------------------------------------------------------------------------------------
  // the order form

  let submitting = false;
  let pending = null; // {terms, key}: a retry of the same terms reuses the idempotency key

  function newKey() {
    if (crypto.randomUUID) return crypto.randomUUID();
    const b = crypto.getRandomValues(new Uint8Array(16)); // randomUUID needs a secure context
    return [...b].map((x) => x.toString(16).padStart(2, "0")).join("");
  }

  async function loadSites() {
    const select = document.getElementById("order-site");
    try {
      const sites = await api("GET", "/api/v1/sites");
      if (!sites.length) {
        select.replaceChildren(node("option", { value: "", text: "no sites yet" }));
        return;
      }
      select.replaceChildren(...sites.map((s) => node("option", { value: s.site_id, text: s.name || s.site_id, title: s.site_id })));
      select.disabled = false;
    } catch (err) {
      select.replaceChildren(node("option", { value: "", text: "sites unavailable" }));
      document.getElementById("order-error").textContent = err.message;
    }
  }

  function setupForm() {
    const form = document.getElementById("order-form");
    const button = document.getElementById("order-submit");
    const message = document.getElementById("order-message");
    const error = document.getElementById("order-error");
    form.addEventListener("submit", async (ev) => {
      ev.preventDefault();
      if (submitting) return; // a double click places one order
      message.textContent = ""; error.textContent = "";
      const f = new FormData(form);
      const qty = String(f.get("quantity_wh") || "").trim();
      const price = String(f.get("limit_price") || "").trim();
      if (!f.get("site_id")) { error.textContent = "choose a site"; return; }
      if (!/^\d+$/.test(qty) || Number(qty) <= 0) { error.textContent = "quantity: a whole number of Wh above 0"; return; }
      if (!/^\d+$/.test(price)) { error.textContent = "limit price: a whole number of minor units per kWh"; return; }
      const terms = {
        site_id: String(f.get("site_id")),
        side: String(f.get("side")),
        interval_start: state.selected,
        quantity_wh: Number(qty),
        limit_price: Number(price),
        time_in_force: String(f.get("time_in_force")),
      };
      const fingerprint = JSON.stringify(terms);
      if (!pending || pending.terms !== fingerprint) pending = { terms: fingerprint, key: newKey() };
      submitting = true;
      button.disabled = true;
      button.textContent = "Placing…";
      try {
        const out = await api("POST", "/api/v1/market/orders", { client_order_id: pending.key, ...terms });
        pending = null; // the next submission is a new order
        const o = out.order;
        message.textContent = (out.created ? "Placed: " : "Already placed: ") + o.side + " " + int(o.quantity_wh) +
          " Wh at " + o.limit_price + " c/kWh for " + hm(o.interval_start) + " UTC — " +
          (out.trades.length ? out.trades.length + (out.trades.length === 1 ? " trade" : " trades") + " matched" : "") +
          (out.trades.length && o.remaining_wh ? ", " : "") +
          (RESTING.has(o.status) ? int(o.remaining_wh) + " Wh resting in the book" : o.remaining_wh ? int(o.remaining_wh) + " Wh " + o.status : "");
        refresh();
      } catch (err) {
        if (err.status) pending = null; // refused: nothing was placed under this key
        error.textContent = err.message; // the API's own words, e.g. "insufficient_tokens: ..."
      } finally {
        submitting = false;
        button.textContent = "Place order";
        tick();
      }
    });
  }

  // ---------------------------------------------------------------------------------------

  document.getElementById("interval").addEventListener("change", (ev) => {
    state.selected = Number(ev.target.value);
    state.book = null;
    state.gateWasOpen = null;
    renderIntervals();
    refresh();
  });
  let resized = null;
  window.addEventListener("resize", () => {
    clearTimeout(resized);
    resized = setTimeout(() => { if (state.book) renderBook(state.book); drawHistory(state.history); }, 150);
  });

  renderIntervals();
  if (canTrade) { setupForm(); loadSites(); }
  connect();
  refresh();
  setInterval(tick, 1000);
  setInterval(() => refresh(stream && stream.readyState === EventSource.OPEN ? "trades" : "all"), pollMs);
})();
