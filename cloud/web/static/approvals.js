// Approval queue: Approve / Reject / Revoke buttons call the JSON APIs with the session cookie.
// Reject and revoke need a reason; an empty one is refused here, before any request is sent.
"use strict";

const STATUS = { approve: "approved", reject: "rejected", revoke: "revoked" };

function say(text, isError) {
  const el = document.getElementById("message");
  el.textContent = text;
  el.classList.toggle("error", Boolean(isError));
}

function endpoint(kind, id) {
  const safe = encodeURIComponent(id);
  return kind === "account"
    ? "/api/v1/accounts/" + safe + "/status"
    : "/api/v1/admin/devices/" + safe + "/status";
}

async function problem(resp) {
  try {
    const body = await resp.json();
    if (typeof body.detail === "string") return body.detail;
    if (Array.isArray(body.detail)) return body.detail.map((d) => d.msg).join("; ");
  } catch (_) { /* not JSON */ }
  return "HTTP " + resp.status;
}

function removeRow(row) {
  const body = row.parentElement;
  const cols = row.cells.length;
  row.remove();
  if (body.rows.length === 0) {
    const tr = body.insertRow();
    tr.className = "empty";
    const td = tr.insertCell();
    td.colSpan = cols;
    td.textContent = "nothing left here";
  }
}

// Re-read the sections a decision changes from the server, so a just-approved device shows up
// under "approved devices" (with its Revoke button) and the decision logs show who and when.
async function refreshSections() {
  let html;
  try {
    const resp = await fetch("/approvals", { credentials: "same-origin" });
    if (!resp.ok) return;
    html = await resp.text();
  } catch (_) { return; /* the message already says what happened */ }
  const fresh = new DOMParser().parseFromString(html, "text/html");
  for (const label of ["approved devices", "recent account decisions", "recent decisions"]) {
    const sel = 'section[aria-label="' + label + '"]';
    const now = document.querySelector(sel);
    const next = fresh.querySelector(sel);
    if (now && next) now.replaceWith(document.importNode(next, true));
  }
}

function logDecision(row, status, reason) {
  const body = document.querySelector("#decisions tbody");
  if (!body) return;
  const empty = body.querySelector("tr.empty");
  if (empty) empty.remove();
  const tr = body.insertRow(0);
  tr.dataset.device = row.dataset.id;
  const cells = [new Date().toISOString().slice(0, 19).replace("T", " "), row.dataset.id,
    row.dataset.status + " → " + status, "you", reason || "—"];
  cells.forEach((c, i) => {
    const td = tr.insertCell();
    td.textContent = c;
    if (i === 4) td.className = "reason";
  });
}

async function decide(row, action, button) {
  const input = row.querySelector("input.reason");
  const err = row.querySelector(".row-error");
  const reason = input ? input.value.trim() : "";
  err.textContent = "";
  if (action !== "approve" && !reason) {
    err.textContent = "a reason is required to " + action;
    if (input) input.focus();
    return;
  }
  const buttons = row.querySelectorAll("button");
  buttons.forEach((b) => { b.disabled = true; });
  const status = STATUS[action];
  let resp;
  try {
    resp = await fetch(endpoint(row.dataset.kind, row.dataset.id), {
      method: "POST",
      credentials: "same-origin",
      headers: { "Content-Type": "application/json", Accept: "application/json" },
      body: JSON.stringify({ status: status, reason: reason }),
    });
  } catch (e) {
    err.textContent = "could not reach the aggregator: " + e;
    buttons.forEach((b) => { b.disabled = false; });
    return;
  }
  if (!resp.ok) {
    err.textContent = await problem(resp);
    buttons.forEach((b) => { b.disabled = false; });
    return;
  }
  const what = row.dataset.kind === "account" ? "account " : "device ";
  say(what + row.dataset.label + " " + status + (reason ? ": " + reason : ""), false);
  if (row.dataset.kind === "device") logDecision(row, status, reason);
  removeRow(row);
  await refreshSections();
}

document.addEventListener("click", (ev) => {
  const button = ev.target.closest("button[data-action]");
  if (!button) return;
  const row = button.closest("tr[data-kind]");
  if (row) decide(row, button.dataset.action, button);
});

document.addEventListener("keydown", (ev) => {
  // Enter in a reason field presses that row's reject/revoke button.
  if (ev.key !== "Enter" || !ev.target.matches("input.reason")) return;
  const row = ev.target.closest("tr[data-kind]");
  const button = row && row.querySelector('button[data-action="reject"], button[data-action="revoke"]');
  if (button) decide(row, button.dataset.action, button);
});
