// Alphadome dashboard: the pages' few behaviours. Every change goes through
// the JSON API (/api/v1) with the session's CSRF token; problems are shown
// next to the field they name.
"use strict";
const csrf = document.querySelector('meta[name="csrf"]')?.content || "";

async function call(method, url, body, type) {
  const headers = { "x-csrf-token": csrf };
  if (body !== undefined) headers["content-type"] = type || "application/json";
  const r = await fetch(url, { method, headers, credentials: "same-origin",
    body: body === undefined ? undefined : (typeof body === "string" ? body : JSON.stringify(body)) });
  const text = await r.text();
  let data = null;
  try { data = text ? JSON.parse(text) : null; } catch (_) { data = text; }
  return { ok: r.ok, status: r.status, data };
}

function value(el) {
  const t = el.dataset.type;
  if (el.type === "checkbox") return el.checked;
  if (el.value === "" && el.dataset.empty === "null") return null;
  if (el.value === "" && el.dataset.empty === "omit") return undefined;
  if (t === "int") return el.value === "" ? null : Number.parseInt(el.value, 10);
  if (t === "float") return el.value === "" ? null : Number.parseFloat(el.value);
  if (t === "datetime") return el.value === "" ? null : new Date(el.value).toISOString();
  if (t === "json") {
    if (el.value.trim() === "") return null;
    try { return JSON.parse(el.value); } catch (_) { return el.value; }
  }
  if (t === "words") return el.value.split(",").map((w) => w.trim()).filter((w) => w);
  if (t === "lines") return el.value.split("\n").map((w) => w.trim()).filter((w) => w);
  return el.value;
}

function showProblem(form, p) {
  form.querySelectorAll("[aria-invalid]").forEach((e) => e.removeAttribute("aria-invalid"));
  const box = form.querySelector(".problem");
  const detail = p && p.detail ? p.detail : "The request failed.";
  const errors = (p && p.errors) || [];
  for (const e of errors.length ? errors : [{ field: p && p.field }]) {
    const el = e.field && form.querySelector(`[name="${CSS.escape(e.field.replace(/^tenant\./, ""))}"]`);
    if (el) el.setAttribute("aria-invalid", "true");
  }
  if (box) box.textContent = errors.length > 1 ? errors.map((e) => `${e.field}: ${e.detail}`).join("\n") : detail;
}

document.addEventListener("submit", async (ev) => {
  const form = ev.target;
  if (!form.dataset.api) return;
  ev.preventDefault();
  const [method, url] = form.dataset.api.split(" ");
  let body;
  const file = form.querySelector('input[type="file"]');
  if (file) {
    const f = file.files[0];
    if (!f) return showProblem(form, { detail: "Choose a file first." });
    const yaml = /\.ya?ml$/i.test(f.name);
    const r = await call(method, url + (yaml ? "?format=yaml" : "?format=csv"), await f.text(), yaml ? "application/yaml" : "text/csv");
    return done(form, r);
  }
  const fields = {};
  for (const el of form.elements) {
    if (!el.name || el.disabled) continue;
    const v = value(el);
    if (v === undefined) continue;
    // "template.name" nests: {"template": {"name": ...}}.
    const path = el.name.split(".");
    let into = fields;
    for (const k of path.slice(0, -1)) into = into[k] = into[k] || {};
    into[path[path.length - 1]] = v;
  }
  body = form.dataset.wrap ? { [form.dataset.wrap]: fields } : fields;
  if (form.dataset.settings) body = { ...body, control_settings: JSON.parse(form.dataset.settings) };
  done(form, await call(method, url, Object.keys(fields).length || form.dataset.wrap ? body : undefined));
});

function done(form, r) {
  if (!r.ok) return showProblem(form, r.data);
  const next = form.dataset.next;
  if (next === "reset") { form.reset(); refreshChat(); return; }
  if (next && next.includes("{id}") && r.data && r.data.id) location.href = next.replace("{id}", r.data.id);
  else if (next) location.href = next;
  else location.reload();
}

document.addEventListener("click", async (ev) => {
  const b = ev.target.closest("button[data-api]");
  if (!b) return;
  ev.preventDefault();
  if (b.dataset.confirm && !confirm(b.dataset.confirm)) return;
  const [method, url] = b.dataset.api.split(" ");
  const r = await call(method, url, b.dataset.body ? JSON.parse(b.dataset.body) : undefined);
  if (!r.ok) { alert((r.data && r.data.detail) || "The request failed."); return; }
  if (b.dataset.next) location.href = b.dataset.next; else location.reload();
});

// The conversation view follows the conversation while it is open.
const chat = document.getElementById("chat");
const seen = new Set();
if (chat) chat.querySelectorAll("[data-id]").forEach((b) => seen.add(b.dataset.id));

function bubble(m) {
  const d = document.createElement("div");
  d.className = `bubble ${m.direction}`;
  d.dataset.id = m.id;
  d.textContent = m.message_text || "";
  const meta = document.createElement("span");
  meta.className = "meta";
  const who = m.direction === "outgoing" ? (m.metadata && m.metadata.author ? m.metadata.author : (m.metadata && m.metadata.reason) || "bot") : "customer";
  meta.textContent = `${who} · ${new Date(m.created_at).toLocaleTimeString()}${m.delivery_status ? " · " + m.delivery_status : ""}`;
  d.appendChild(meta);
  return d;
}

async function refreshChat() {
  if (!chat) return;
  const r = await call("GET", chat.dataset.poll);
  if (!r.ok) return;
  const fresh = r.data.messages.filter((m) => !seen.has(m.id)).reverse();
  for (const m of fresh) { seen.add(m.id); chat.appendChild(bubble(m)); }
  if (fresh.length) chat.scrollTop = chat.scrollHeight;
  const state = document.getElementById("window-state");
  if (state) state.textContent = r.data.conversation.in_window ? "inside the 24-hour window" : "outside the 24-hour window: only a template may be sent";
}
if (chat) { chat.scrollTop = chat.scrollHeight; setInterval(refreshChat, 1500); }
