// Pavana's operator dashboard: polls dashboard/api/state with the operator token and renders
// it. Time series accumulate here, one point per poll, bounded to MAX_POINTS per trace.
"use strict";

const STATE_URL = "dashboard/api/state";
const POLL_MS = 1000;
const MAX_POINTS = 900; // 15 minutes at one poll a second
const TOKEN_KEY = "pavana.operatorToken";
const PLOT_CONFIG = { displaylogo: false, responsive: true };
const PLOT_LAYOUT = {
  margin: { l: 50, r: 10, t: 10, b: 35 }, legend: { orientation: "h", y: -0.2 },
  xaxis: { type: "date" }, paper_bgcolor: "rgba(0,0,0,0)", plot_bgcolor: "rgba(0,0,0,0)",
};

const $ = (id) => document.getElementById(id);
let timer = null;
const charts = {}; // chart id -> {names: [trace names], ready: bool}

// -- the token ---------------------------------------------------------------------------------
function tokenFromFragment() {
  // `#token=...` never reaches the server; drop it from the address bar once read.
  const params = new URLSearchParams(location.hash.replace(/^#/, ""));
  const token = params.get("token");
  if (token) {
    sessionStorage.setItem(TOKEN_KEY, token);
    history.replaceState(null, "", location.pathname + location.search);
  }
}

function setStatus(state, text) {
  const el = $("status");
  el.dataset.state = state;
  el.textContent = text;
}

function showLogin({ refused = false, closed = null } = {}) {
  $("board").hidden = true;
  $("login").hidden = false;
  $("forget").hidden = true;
  $("refused").hidden = !refused;
  $("closed").hidden = closed === null;
  $("closed").textContent = closed || "";
  $("token-form").hidden = closed !== null;
  if (refused) setStatus("refused", "token refused");
  else if (closed !== null) setStatus("closed", "dashboard closed");
  else setStatus("idle", "waiting for a token");
}

function stop() {
  if (timer !== null) clearTimeout(timer);
  timer = null;
}

// -- polling -------------------------------------------------------------------------------------
async function poll() {
  const token = sessionStorage.getItem(TOKEN_KEY);
  if (!token) return showLogin();
  let response;
  try {
    response = await fetch(STATE_URL, { headers: { Authorization: `Bearer ${token}` }, cache: "no-store" });
  } catch (err) {
    setStatus("error", "cluster unreachable");
    timer = setTimeout(poll, POLL_MS * 2);
    return;
  }
  if (response.status === 401) {
    sessionStorage.removeItem(TOKEN_KEY);
    stop();
    return showLogin({ refused: true });
  }
  if (response.status === 403) {
    stop();
    const body = await response.json().catch(() => ({}));
    return showLogin({ closed: body?.error?.message || "The dashboard is closed on this cluster." });
  }
  if (!response.ok) {
    setStatus("error", `error ${response.status}`);
  } else {
    render(await response.json());
  }
  timer = setTimeout(poll, POLL_MS);
}

// -- rendering -----------------------------------------------------------------------------------
const fmt = {
  int: (v) => (v === null || v === undefined ? "–" : String(Math.round(v))),
  num: (v, digits = 1) => (v === null || v === undefined ? "–" : v.toFixed(digits)),
  pct: (v) => (v === null || v === undefined ? "–" : `${(100 * v).toFixed(1)}%`),
  secs: (v) => {
    if (v === null || v === undefined) return "–";
    return v < 1 ? `${(1000 * v).toFixed(v < 0.01 ? 1 : 0)} ms` : `${v.toFixed(2)} s`;
  },
  watts: (v) => (v === null || v === undefined ? "–" : v >= 1000 ? `${(v / 1000).toFixed(2)} kW` : `${v.toFixed(0)} W`),
};

function cell(row, text, className) {
  const td = document.createElement("td");
  td.textContent = text; // never innerHTML: reasons and names are data
  if (className) td.className = className;
  row.appendChild(td);
  return td;
}

function renderPools(state) {
  const body = $("pools").querySelector("tbody");
  body.replaceChildren(...state.pools.map((p) => {
    const tr = document.createElement("tr");
    tr.dataset.key = p.key;
    cell(tr, p.pool, "pool");
    cell(tr, p.site, "site");
    cell(tr, fmt.int(p.running), "num running" + (p.desired !== null && p.desired !== p.running ? " mismatch" : ""));
    cell(tr, fmt.int(p.desired), "num desired");
    cell(tr, fmt.int(p.queued_requests), "num queued");
    cell(tr, fmt.int(p.running_requests), "num");
    cell(tr, fmt.int(p.queued_prefill_tokens), "num");
    cell(tr, fmt.pct(p.kv_occupancy), "num kv");
    cell(tr, fmt.num(p.tokens_per_s), "num");
    cell(tr, p.reason ?? "no plan yet", "reason");
    return tr;
  }));
  $("plan-age").textContent = state.plan ? `plan ${fmt.num(state.plan.age_s)} s old` : "no plan yet";
}

function renderClasses(state) {
  const body = $("classes").querySelector("tbody");
  body.replaceChildren(...state.classes.map((c) => {
    const tr = document.createElement("tr");
    tr.dataset.qosClass = c.qos_class;
    cell(tr, c.qos_class);
    cell(tr, fmt.secs(c.slo_ttft_s), "num");
    cell(tr, fmt.secs(c.slo_tbt_s), "num");
    cell(tr, fmt.int(c.requests), "num requests");
    cell(tr, fmt.secs(c.ttft_p50_s), "num");
    cell(tr, fmt.secs(c.ttft_p99_s), "num");
    cell(tr, fmt.secs(c.tbt_p50_s), "num");
    cell(tr, fmt.secs(c.tbt_p99_s), "num");
    cell(tr, fmt.pct(c.attainment), "num attainment");
    return tr;
  }));
  $("stats-window").textContent = `last ${fmt.int(state.requests.stats_window_s / 60)} min`;
}

function renderRouting(state) {
  const r = state.routing;
  $("no-routing").hidden = r !== null;
  $("shares").hidden = $("modes").hidden = r === null;
  $("routing-age").textContent = r ? `plan ${fmt.num(r.age_s)} s old` : "";
  if (r === null) return;
  $("shares").querySelector("tbody").replaceChildren(...r.shares.map((s) => {
    const tr = document.createElement("tr");
    cell(tr, s.qos_class);
    cell(tr, s.site, "site");
    cell(tr, fmt.pct(s.share), "num share");
    return tr;
  }));
  $("modes").querySelector("tbody").replaceChildren(...r.modes.map((m) => {
    const tr = document.createElement("tr");
    cell(tr, m.site, "site");
    cell(tr, m.planned_power_w === null ? "–" : `${fmt.int(m.planned_power_w)} W`, "num");
    cell(tr, Object.entries(m.modes).map(([mode, n]) => `${n} ${mode}`).join(", ") || "none");
    return tr;
  }));
}

function renderDecisions(state) {
  const list = $("decisions");
  list.replaceChildren(...state.decisions.map((d) => {
    const li = document.createElement("li");
    const badge = document.createElement("span");
    badge.className = `badge ${d.source}`;
    badge.textContent = d.source === "power" ? "power planner" : "autoscaler";
    const what = document.createElement("span");
    const when = new Date(d.timestamp_s * 1000).toLocaleTimeString();
    what.textContent = `${when} · ${d.kind.replace("_", " ")} ${d.target}: ${d.before} → ${d.after}`;
    const why = document.createElement("span");
    why.className = "reason";
    why.textContent = d.reason;
    li.append(badge, what, why);
    return li;
  }));
  $("no-decisions").hidden = state.decisions.length > 0;
}

// Appends one point per named trace; a name seen for the first time gets a new trace.
function extend(chartId, time, series, yTitle) {
  const div = $(chartId);
  const chart = charts[chartId] || (charts[chartId] = { names: [], ready: false });
  if (!chart.ready) {
    Plotly.newPlot(div, [], { ...PLOT_LAYOUT, yaxis: { title: { text: yTitle }, rangemode: "tozero" } }, PLOT_CONFIG);
    chart.ready = true;
  }
  const fresh = series.filter((s) => !chart.names.includes(s.name));
  if (fresh.length) {
    Plotly.addTraces(div, fresh.map((s) => ({ name: s.name, x: [], y: [], mode: "lines", line: s.line || {} })));
    chart.names.push(...fresh.map((s) => s.name));
  }
  const indices = series.map((s) => chart.names.indexOf(s.name));
  Plotly.extendTraces(div, { x: series.map(() => [time]), y: series.map((s) => [s.value]) }, indices, MAX_POINTS);
}

function renderCharts(state) {
  const time = new Date(state.now_s * 1000);
  extend("power-chart", time, state.sites.flatMap((s) => [
    { name: `${s.site} available`, value: s.available_w, line: { dash: "dot" } },
    { name: `${s.site} drawn`, value: s.drawn_w },
  ]), "W");
  extend("rate-chart", time, [
    { name: "all classes", value: state.requests.rate_per_s },
    ...state.classes.map((c) => ({ name: c.qos_class, value: c.rate_per_s, line: { dash: "dot" } })),
  ], "requests/s");
  extend("latency-chart", time, state.classes.flatMap((c) => [
    { name: `${c.qos_class} TTFT P99`, value: c.ttft_p99_s },
    { name: `${c.qos_class} TBT P99`, value: c.tbt_p99_s, line: { dash: "dot" } },
  ]), "seconds");
  $("rate-now").textContent = `${fmt.num(state.requests.rate_per_s, 2)} /s over ${fmt.int(state.requests.rate_window_s)} s`;
}

function render(state) {
  $("login").hidden = true;
  $("board").hidden = false;
  $("forget").hidden = false;
  const t = state.telemetry;
  if (t.stale) setStatus("stale", t.age_s === null ? "telemetry unavailable" : `telemetry stale (${fmt.num(t.age_s)} s old)`);
  else setStatus("live", `live · ${state.model} · ${new Date(state.now_s * 1000).toLocaleTimeString()}`);
  renderPools(state);
  renderClasses(state);
  renderRouting(state);
  renderDecisions(state);
  renderCharts(state);
}

// -- start -----------------------------------------------------------------------------------------
function start() {
  stop();
  poll();
}

$("token-form").addEventListener("submit", (event) => {
  event.preventDefault();
  const token = $("token-input").value.trim();
  if (!token) return;
  sessionStorage.setItem(TOKEN_KEY, token);
  $("token-input").value = "";
  start();
});
$("forget").addEventListener("click", () => {
  sessionStorage.removeItem(TOKEN_KEY);
  stop();
  showLogin();
});
window.addEventListener("hashchange", () => { tokenFromFragment(); start(); });

tokenFromFragment();
start();
