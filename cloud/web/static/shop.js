// The carbon shop's pages (cloud/api/shop_pages_routes.py): the basket, display-currency
// prices, checkout with the sandbox payment, and an order followed until it is final.
//
// The basket lives in localStorage ("gridmint.basket": {currency, lines: [...]}) and holds one
// currency, because an order has one (the API refuses a lot in another currency). Every amount
// is an integer of minor units; a converted price is computed exactly (BigInt) and rounded half
// to even like the server's convert. Errors from the API are shown in its words.
"use strict";

(() => {
  const BASKET_KEY = "gridmint.basket";
  const DISPLAY_KEY = "gridmint.shop.display";

  // ---------------------------------------------------------------------------------------
  // helpers

  const pad = (n) => String(n).padStart(2, "0");
  function utcMs(ms) {
    const d = new Date(ms);
    return d.getUTCFullYear() + "-" + pad(d.getUTCMonth() + 1) + "-" + pad(d.getUTCDate()) +
      " " + pad(d.getUTCHours()) + ":" + pad(d.getUTCMinutes()) + ":" + pad(d.getUTCSeconds());
  }
  // Minor units as major with two decimals (exact, like the server's money_2).
  function money(minor) {
    const sign = minor < 0 ? "-" : "";
    const a = Math.abs(minor);
    return sign + Math.floor(a / 100) + "." + pad(a % 100);
  }
  // ISO 4217 minor-unit exponents (cloud.domain.payments.CURRENCY_EXPONENTS), from the page.
  const EXPONENTS = (() => {
    const el = document.getElementById("currency-exponents");
    try { return el ? JSON.parse(el.textContent) : {}; } catch (_e) { return {}; }
  })();
  const exponent = (c) => (c in EXPONENTS ? EXPONENTS[c] : 2);
  function moneyIn(minor, currency) {
    const e = exponent(currency);
    if (e === 0) return String(minor);
    const sign = minor < 0 ? "-" : "";
    const a = Math.abs(minor), unit = 10 ** e;
    return sign + Math.floor(a / unit) + "." + String(a % unit).padStart(e, "0");
  }
  // An amount of the rate's base in its quote's minor units, rounded half to even, exactly as
  // cloud.domain.payments.convert does (BigInt: no float in the arithmetic).
  function convertMinor(minor, rate) {
    const n = BigInt(minor) * BigInt(rate.rate_ppm) * 10n ** BigInt(exponent(rate.quote));
    const d = 1000000n * 10n ** BigInt(exponent(rate.base));
    let q = n / d;
    const r2 = 2n * (n % d);
    if (r2 > d || (r2 === d && q % 2n === 1n)) q += 1n;
    return Number(q);
  }
  // kg x price per tonne / 1000, rounded half up (cloud.domain.carbon_shop.price_minor).
  const lineMinor = (kg, perT) => Math.floor((2 * kg * perT + 1000) / 2000);

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
      let reason = r.status + " " + r.statusText;
      if (data && typeof data.detail === "string") reason = data.detail;
      else if (data && Array.isArray(data.detail)) {
        reason = data.detail.map((d) => (d.loc || []).slice(1).join(".") + ": " + d.msg).join("; ");
      }
      const err = new Error(reason);
      err.status = r.status;
      throw err;
    }
    return data;
  }

  // ---------------------------------------------------------------------------------------
  // the basket

  function loadBasket() {
    try {
      const b = JSON.parse(localStorage.getItem(BASKET_KEY) || "null");
      if (b && Array.isArray(b.lines)) return b;
    } catch (_e) { /* a broken basket starts empty */ }
    return { currency: null, lines: [] };
  }
  function saveBasket(b) {
    if (!b.lines.length) b.currency = null;
    localStorage.setItem(BASKET_KEY, JSON.stringify(b));
    showCount();
  }
  function showCount() {
    const el = document.getElementById("basket-count");
    if (!el) return;
    const b = loadBasket();
    el.textContent = String(b.lines.length);
    el.title = b.lines.length ? b.lines.reduce((s, l) => s + l.kg, 0) + " kg in " + b.currency : "empty";
  }

  function say(text, isError) {
    const el = document.getElementById("basket-message");
    if (!el) return;
    el.textContent = text;
    el.classList.toggle("error", !!isError);
  }

  function addToBasket(row) {
    const input = row.querySelector(".add-kg");
    const kg = Number(input.value);
    if (!Number.isInteger(kg) || kg <= 0) {
      say("Enter a whole number of kg, 1 or more.", true);
      return;
    }
    const lot = {
      lot_id: row.dataset.lot,
      project_id: row.dataset.project,
      project_name: row.dataset.projectName,
      serials: row.dataset.serials,
      price_minor_per_t: Number(row.dataset.price),
      currency: row.dataset.currency,
      kg,
    };
    const b = loadBasket();
    if (b.lines.length && b.currency !== lot.currency) {
      say("Your basket is in " + b.currency + " and this lot is priced in " + lot.currency +
        ": an order is paid in one currency. Check out or empty the basket first.", true);
      return;
    }
    const same = b.lines.find((l) => l.lot_id === lot.lot_id);
    if (same) same.kg += kg;
    else b.lines.push(lot);
    b.currency = lot.currency;
    saveBasket(b);
    say("Added " + kg + " kg of " + lot.project_name + " (" + lot.lot_id + ") to your basket.", false);
  }

  // ---------------------------------------------------------------------------------------
  // display currency (newest stored rate of lot currency -> display currency)

  async function displayPrices() {
    const select = document.getElementById("display-currency");
    const rows = document.querySelectorAll("tr.lot");
    if (!select) return;
    let rates = [];
    try {
      rates = await api("GET", "/api/v1/fx-rates");
    } catch (_e) {
      rates = []; // no payments in this process: no conversions
    }
    const currencies = new Set(rates.map((r) => r.quote));
    for (const c of [...currencies].sort()) {
      select.append(new Option(c, c));
    }
    const saved = localStorage.getItem(DISPLAY_KEY) || "";
    if (saved && currencies.has(saved)) select.value = saved;
    function newest(base, quote) {
      // The API lists newest first per pair; pick the first match.
      return rates.find((r) => r.base === base && r.quote === quote) || null;
    }
    function apply() {
      const want = select.value;
      localStorage.setItem(DISPLAY_KEY, want);
      const used = new Map();
      for (const row of rows) {
        const cell = row.querySelector("td.fx");
        const from = row.dataset.currency;
        if (!want) { cell.textContent = ""; continue; }
        if (from === want) { cell.textContent = moneyIn(Number(row.dataset.price), want) + " " + want; continue; }
        const rate = newest(from, want);
        if (!rate) { cell.textContent = ""; continue; } // no stored rate: no conversion
        cell.textContent = "≈ " + moneyIn(convertMinor(Number(row.dataset.price), rate), want) + " " + want;
        used.set(from + want, rate);
      }
      const note = document.getElementById("fx-note");
      if (note) {
        note.textContent = [...used.values()].map((r) =>
          "1 " + r.base + " = " + (r.rate_ppm / 1e6).toFixed(6).replace(/0+$/, "").replace(/\.$/, "") +
          " " + r.quote + " (" + r.source + ", " + r.as_of + ")").join("; ");
      }
    }
    select.addEventListener("change", apply);
    apply();
  }

  // ---------------------------------------------------------------------------------------
  // pages

  function shopPage() {
    const main = document.getElementById("shop");
    if (!main) return;
    main.addEventListener("click", (ev) => {
      const btn = ev.target.closest("button.add-lot");
      if (btn) addToBasket(btn.closest("tr.lot"));
    });
    displayPrices();
  }

  function renderBasket() {
    const table = document.getElementById("basket");
    const b = loadBasket();
    const body = table.tBodies[0];
    body.replaceChildren();
    document.getElementById("basket-currency").textContent = b.currency ? "(" + b.currency + ")" : "";
    if (!b.lines.length) {
      const tr = body.insertRow();
      tr.className = "empty";
      const td = tr.insertCell();
      td.colSpan = 6;
      td.innerHTML = 'Your basket is empty: <a href="/shop">find a project</a>.';
    }
    let kg = 0, total = 0;
    b.lines.forEach((l, i) => {
      const tr = body.insertRow();
      tr.dataset.lot = l.lot_id;
      const amount = lineMinor(l.kg, l.price_minor_per_t);
      kg += l.kg;
      total += amount;
      const cells = [
        l.project_name, l.lot_id + " · " + l.serials, String(l.kg),
        money(l.price_minor_per_t) + " " + l.currency, money(amount) + " " + l.currency,
      ];
      cells.forEach((text, j) => {
        const td = tr.insertCell();
        td.textContent = text;
        if (j >= 2) td.className = "num";
        if (j === 1) td.className = "mono small";
      });
      const td = tr.insertCell();
      const rm = document.createElement("button");
      rm.type = "button";
      rm.className = "ghost remove";
      rm.textContent = "remove";
      rm.addEventListener("click", () => {
        const nb = loadBasket();
        nb.lines.splice(i, 1);
        saveBasket(nb);
        renderBasket();
      });
      td.append(rm);
    });
    document.getElementById("basket-kg").textContent = String(kg);
    document.getElementById("basket-total").textContent = b.lines.length ? money(total) + " " + b.currency : "—";
    document.getElementById("retire-now").disabled = !b.lines.length;
  }

  function checkoutPage() {
    const main = document.getElementById("checkout");
    if (!main) return;
    renderBasket();
    const form = document.getElementById("checkout-form");
    const err = document.getElementById("checkout-error");
    const submit = document.getElementById("retire-now");
    let busy = false;
    form.addEventListener("submit", async (ev) => {
      ev.preventDefault();
      if (busy) return;
      const b = loadBasket();
      if (!b.lines.length) { err.textContent = "Your basket is empty."; return; }
      busy = true;
      submit.disabled = true;
      err.textContent = "";
      try {
        const order = await api("POST", "/api/v1/shop/orders", {
          lines: b.lines.map((l) => ({ lot_id: l.lot_id, kg: l.kg })),
          currency: b.currency,
          beneficiary: document.getElementById("beneficiary").value,
          reason: document.getElementById("reason").value,
          retire_now: !document.getElementById("retire-later").checked,
        });
        // The units are reserved in the order now: the basket has done its job.
        saveBasket({ currency: null, lines: [] });
        renderBasket();
        showPayment(order, b);
      } catch (e) {
        err.textContent = "The shop refused the order: " + e.message;
        submit.disabled = false;
      } finally {
        busy = false;
      }
    });
  }

  function showPayment(order, basket) {
    const pay = document.getElementById("pay");
    const link = document.getElementById("pay-order");
    link.textContent = order.order_id;
    link.href = "/shop/orders/" + order.order_id;
    document.getElementById("pay-kg").textContent = String(order.lines.reduce((s, l) => s + l.kg, 0));
    document.getElementById("pay-total").textContent = money(order.total_minor) + " " + order.currency;
    document.getElementById("pay-expires").textContent = utcMs(order.expires_ms);
    document.getElementById("pay-beneficiary").textContent = order.beneficiary;
    const names = new Map(basket.lines.map((l) => [l.lot_id, l]));
    const list = document.getElementById("pay-lines");
    list.replaceChildren();
    for (const ln of order.lines) {
      const lot = names.get(ln.lot_id);
      const li = document.createElement("li");
      li.textContent = ln.kg + " kg of " + (lot ? lot.project_name : ln.lot_id) + ", serials " +
        (lot ? lot.serials.split("-").slice(0, -1).join("-") + "-" : "") + ln.serial_start + ".." +
        ln.serial_end + ": " + money(ln.price_minor) + " " + order.currency;
      list.append(li);
    }
    document.getElementById("checkout-form").hidden = true;
    document.getElementById("basket-panel").hidden = true;
    pay.hidden = false;
    bindPay(document.getElementById("pay-sandbox"), order.payment_id, order.order_id);
  }

  function bindPay(button, paymentId, orderId) {
    if (!button) return;
    const err = document.getElementById("pay-error");
    button.addEventListener("click", async () => {
      button.disabled = true;
      err.textContent = "";
      try {
        await api("POST", "/api/v1/payments/sandbox/" + encodeURIComponent(paymentId) + "/complete",
          { succeed: true });
        window.location.href = "/shop/orders/" + encodeURIComponent(orderId);
      } catch (e) {
        err.textContent = "The payment did not go through: " + e.message;
        button.disabled = false;
      }
    });
  }

  function orderPage() {
    const main = document.getElementById("order-page");
    if (!main) return;
    const orderId = main.dataset.order;
    bindPay(document.getElementById("pay-sandbox"), main.dataset.payment, orderId);
    const retireForm = document.getElementById("retire-form");
    retireForm.addEventListener("submit", async (ev) => {
      ev.preventDefault();
      const btn = document.getElementById("retire-order");
      btn.disabled = true;
      try {
        await api("POST", "/api/v1/shop/orders/" + encodeURIComponent(orderId) + "/retire", {
          beneficiary: document.getElementById("retire-beneficiary").value,
          reason: document.getElementById("retire-reason").value,
        });
        window.location.reload();
      } catch (e) {
        document.getElementById("order-error").textContent = "The shop refused the retirement: " + e.message;
        btn.disabled = false;
      }
    });
    const later = main.dataset.retireLater === "yes";
    if (main.dataset.final === "yes" || (later && main.dataset.state === "placed")) return;
    const pollMs = Number(main.dataset.pollMs) || 1000;
    const FINAL = new Set(["complete", "cancelled", "expired"]);
    const EXPLAIN = {
      reserved: "Waiting for the payment.",
      placed: later
        ? "Paid; the units are yours and not yet retired: retire them below when you choose."
        : "Paid; retiring the units.",
      complete: "Paid; the units are retired for the beneficiary.",
      cancelled: "The payment failed; the units went back on sale.",
      expired: "The reservation ran out before the payment; the units went back on sale.",
    };
    async function poll() {
      try {
        const o = await api("GET", "/api/v1/shop/orders/" + encodeURIComponent(orderId));
        const badge = document.getElementById("order-state");
        badge.textContent = o.state;
        badge.className = "badge state-" + o.state;
        main.dataset.state = o.state;
        document.getElementById("order-explain").textContent = EXPLAIN[o.state] || "";
        if (FINAL.has(o.state)) {
          main.dataset.final = "yes";
          document.getElementById("statement-box").hidden = o.state !== "complete";
          const payBtn = document.getElementById("pay-sandbox");
          if (payBtn) payBtn.closest("p").hidden = true;
          return;
        }
        if (later && o.state === "placed") {  // paid: now it waits for the buyer, not for us
          retireForm.hidden = false;
          const payBtn = document.getElementById("pay-sandbox");
          if (payBtn) payBtn.closest("p").hidden = true;
          return;
        }
        document.getElementById("order-error").textContent = "";
      } catch (e) {
        document.getElementById("order-error").textContent = "Could not read the order: " + e.message;
      }
      setTimeout(poll, pollMs);
    }
    setTimeout(poll, pollMs);
  }

  function subscribeForm() {
    const form = document.getElementById("subscribe-form");
    if (!form) return;
    const out = document.getElementById("subscribe-result");
    form.addEventListener("submit", async (ev) => {
      ev.preventDefault();
      const btn = document.getElementById("subscribe");
      btn.disabled = true;
      out.className = "";
      try {
        const s = await api("POST", "/api/v1/shop/subscriptions", {
          project_id: form.dataset.project,
          kg_per_month: Number(document.getElementById("subscribe-kg").value),
          currency: document.getElementById("subscribe-currency").value,
          beneficiary: document.getElementById("subscribe-beneficiary").value,
        });
        const run = s.runs[0];
        out.replaceChildren();
        if (run && run.order_id) {
          out.append("Subscribed. This month's order: ");
          const a = document.createElement("a");
          a.href = "/shop/orders/" + run.order_id;
          a.id = "subscription-order";
          a.className = "mono";
          a.textContent = run.order_id;
          out.append(a, " (pay it there).");
        } else {
          out.textContent = "Subscribed; this month was skipped: " + (run ? run.detail : "");
        }
      } catch (e) {
        out.className = "error";
        out.textContent = "The shop refused the subscription: " + e.message;
        btn.disabled = false;
      }
    });
  }

  function subscriptionsList() {
    for (const btn of document.querySelectorAll("button.cancel-subscription")) {
      btn.addEventListener("click", async () => {
        const row = btn.closest("tr");
        btn.disabled = true;
        try {
          await api("DELETE", "/api/v1/shop/subscriptions/" + encodeURIComponent(row.dataset.subscription));
          window.location.reload();
        } catch (e) {
          document.getElementById("subscriptions-error").textContent = "Could not cancel: " + e.message;
          btn.disabled = false;
        }
      });
    }
  }

  function statementPage() {
    const btn = document.getElementById("print");
    if (btn) btn.addEventListener("click", () => window.print());
  }

  showCount();
  shopPage();
  checkoutPage();
  orderPage();
  subscribeForm();
  subscriptionsList();
  statementPage();
})();
