// Shared by the executive and on-call pages (served at /assets/common.js).
"use strict";
const $ = (id) => document.getElementById(id);
const esc = (s) => String(s ?? "").replace(/[&<>"']/g, (c) => ({"&":"&amp;","<":"&lt;",">":"&gt;","\"":"&quot;","'":"&#39;"}[c]));
const fmt = (x, d = 2) => (x === null || x === undefined || !isFinite(x)) ? "–" : Number(x).toFixed(d);
const pct = (x, d = 1) => (x === null || x === undefined || !isFinite(x)) ? "–" : (100 * x).toFixed(d) + " %";

async function get(path) {
  const r = await fetch(path, {cache: "no-store"});
  if (!r.ok) throw new Error(path + ": HTTP " + r.status);
  return r.json();
}

// The deploy gate's strategy for a budget left (the same thresholds as /api/v1/gate).
function strategy(b) {
  if (b === null || b === undefined) return "aggressive";
  return b > 0.5 ? "aggressive" : b > 0.2 ? "conservative" : b > 0.05 ? "ultra_conservative" : "frozen";
}
function budgetClass(b) { return b === null || b === undefined ? "b-dim" : b > 0.5 ? "b-ok" : b > 0.2 ? "b-warn" : "b-bad"; }
function budgetBar(b) {
  const w = Math.max(0, Math.min(1, b ?? 0));
  const color = b === null || b === undefined ? "var(--dim)" : b > 0.5 ? "var(--ok)" : b > 0.2 ? "var(--warn)" : "var(--bad)";
  return `<div class="bar"><div style="width:${(100 * w).toFixed(1)}%;background:${color}"></div></div>`;
}
const verdictClass = (v) => v === "fail" || v === "rolled_back" ? "b-bad" : v === "pass" || v === "promoted" ? "b-ok" : v === "holding" ? "b-warn" : "b-dim";

// Runs `refresh` now and 2 s after each run ends; shows whether the API answered.
function every2s(refresh) {
  (async function loop() {
    try {
      await refresh();
      $("asof").textContent = "updated " + new Date().toLocaleTimeString();
      $("conn").innerHTML = '<span class="badge b-ok">live</span>';
    } catch (e) {
      $("conn").innerHTML = `<span class="badge b-bad err">${esc(e.message)}</span>`;
    }
    setTimeout(loop, 2000);
  })();
}
