// SPDX-License-Identifier: Apache-2.0
// The Dibba dashboard: login, nodes (polled, with sparklines), pods, live tasks over /v1/events, schedules.
// Plain DOM code; every server string goes through textContent, never innerHTML.
"use strict";

(function () {
  const TOKEN_KEY = "dibba.token";
  const NODE_POLL_MS = 3000;
  const POD_POLL_MS = 5000;
  const SCHEDULE_POLL_MS = 10000;
  const SPARK_SAMPLES = 60;
  const MAX_TASK_ROWS = 200;
  const FINAL = new Set(["SUCCESS", "FAILURE", "REVOKED"]);

  const $ = (id) => document.getElementById(id);
  const state = {
    token: null,
    view: "nodes",
    timers: {},
    nodes: new Map(), // host -> {samples: {cpu: [], mem: [], load: []}, lastSample}
    tasks: new Map(), // id -> {row, seq, status, trail}
    ws: null,
    wsRetry: 0,
    wsTimer: null,
    selectedPod: null,
  };

  // ---- small helpers ----

  function el(tag, attrs, ...children) {
    const e = document.createElement(tag);
    for (const [k, v] of Object.entries(attrs || {})) {
      if (k === "class") e.className = v;
      else if (k === "text") e.textContent = v;
      else e.setAttribute(k, v);
    }
    for (const c of children) if (c != null) e.append(c);
    return e;
  }

  function showError(id, msg) {
    const e = $(id);
    if (!e) return;
    e.textContent = msg || "";
    e.hidden = !msg;
  }

  function fmtBytes(n) {
    if (typeof n !== "number" || !isFinite(n)) return "–";
    const u = ["B", "KiB", "MiB", "GiB", "TiB"];
    let i = 0;
    while (n >= 1024 && i < u.length - 1) {
      n /= 1024;
      i++;
    }
    return (i ? n.toFixed(1) : String(n)) + " " + u[i];
  }

  function fmtTime(ms) {
    if (!ms) return "–";
    const d = new Date(ms);
    return isNaN(d) ? "–" : d.toLocaleTimeString();
  }

  function detailOf(body, status) {
    if (body && typeof body.detail === "string") return body.detail;
    if (body && Array.isArray(body.detail) && body.detail[0] && body.detail[0].msg) return body.detail[0].msg;
    return "HTTP " + status;
  }

  class ApiError extends Error {
    constructor(status, detail) {
      super(detail);
      this.status = status;
    }
  }

  // fetch with the bearer token; JSON (or text with asText). 401 ends the session.
  async function api(path, opts) {
    opts = opts || {};
    const headers = Object.assign({}, opts.headers || {});
    if (state.token) headers["Authorization"] = "Bearer " + state.token;
    let res;
    try {
      res = await fetch(path, { method: opts.method || "GET", headers, body: opts.body, cache: "no-store" });
    } catch (e) {
      throw new ApiError(0, "cannot reach the API (" + e.message + ")");
    }
    if (res.status === 401 && state.token && !opts.login) {
      logout("Your session has ended; sign in again.");
      throw new ApiError(401, "not signed in");
    }
    if (!res.ok) {
      let body = null;
      try {
        body = await res.json();
      } catch (e) {
        /* not JSON */
      }
      throw new ApiError(res.status, detailOf(body, res.status));
    }
    return opts.asText ? res.text() : res.json();
  }

  function every(name, ms, fn) {
    clearInterval(state.timers[name]);
    fn();
    state.timers[name] = setInterval(fn, ms);
  }

  function stopTimers() {
    for (const k of Object.keys(state.timers)) clearInterval(state.timers[k]);
    state.timers = {};
  }

  // ---- login / logout ----

  async function login(ev) {
    ev.preventDefault();
    showError("login-error", "");
    const user = $("login-user").value.trim();
    const password = $("login-password").value;
    const body = new URLSearchParams({ username: user, password: password });
    $("login-submit").disabled = true;
    try {
      const r = await api("/token", {
        method: "POST",
        login: true,
        headers: { "Content-Type": "application/x-www-form-urlencoded" },
        body: body.toString(),
      });
      if (!r || typeof r.access_token !== "string") throw new ApiError(0, "the API sent no token");
      sessionStorage.setItem(TOKEN_KEY, r.access_token);
      $("login-password").value = "";
      await start(r.access_token);
    } catch (e) {
      showError("login-error", e.status === 401 ? "Wrong user or password." : e.message);
    } finally {
      $("login-submit").disabled = false;
    }
  }

  function logout(msg) {
    sessionStorage.removeItem(TOKEN_KEY);
    state.token = null;
    stopTimers();
    closeEvents();
    state.nodes.clear();
    state.tasks.clear();
    $("nodes-list").replaceChildren();
    $("tasks-body").replaceChildren();
    $("pods-body").replaceChildren();
    $("pod-detail").hidden = true;
    $("app").hidden = true;
    $("whoami").hidden = true;
    $("live").hidden = true;
    $("logout").hidden = true;
    $("login").hidden = false;
    showError("login-error", msg || "");
  }

  async function start(token) {
    state.token = token;
    let me;
    try {
      me = await api("/v1/me");
    } catch (e) {
      if (state.token) logout(e.message);
      return;
    }
    $("whoami").textContent = me.sub + " (" + me.role + ")";
    $("whoami").hidden = false;
    $("logout").hidden = false;
    $("live").hidden = false;
    $("login").hidden = true;
    $("app").hidden = false;
    openEvents();
    select(location.hash.replace("#", "") || state.view);
  }

  // ---- tabs ----

  function select(view) {
    if (!["nodes", "pods", "tasks", "schedules"].includes(view)) view = "nodes";
    state.view = view;
    for (const b of document.querySelectorAll(".tabs button"))
      b.setAttribute("aria-selected", b.dataset.view === view ? "true" : "false");
    for (const s of document.querySelectorAll(".view")) s.hidden = s.id !== "view-" + view;
    if (location.hash !== "#" + view) history.replaceState(null, "", "#" + view);
    // Nodes keep sampling in the background so the sparklines have history; pods and schedules poll while shown.
    if (!state.timers.nodes) every("nodes", NODE_POLL_MS, pollNodes);
    clearInterval(state.timers.pods);
    clearInterval(state.timers.schedules);
    delete state.timers.pods;
    delete state.timers.schedules;
    if (view === "pods") every("pods", POD_POLL_MS, pollPods);
    if (view === "schedules") every("schedules", SCHEDULE_POLL_MS, pollSchedules);
  }

  // ---- nodes ----

  function cpuPercent(usage) {
    const a = usage && usage.cpuPercent;
    if (!Array.isArray(a) || a.length === 0) return null;
    return a.reduce((s, x) => s + (Number(x) || 0), 0) / a.length;
  }

  function sparkline(values, max) {
    const NS = "http://www.w3.org/2000/svg";
    const svg = document.createElementNS(NS, "svg");
    svg.setAttribute("viewBox", "0 0 " + (SPARK_SAMPLES - 1) + " 100");
    svg.setAttribute("preserveAspectRatio", "none");
    svg.setAttribute("role", "img");
    const line = document.createElementNS(NS, "polyline");
    const top = Math.max(max || 0, ...values, 1e-9);
    // The samples so far span the whole width (a single one is a flat line) and scroll once there are enough.
    const vs = values.length === 1 ? [values[0], values[0]] : values;
    const step = vs.length > 1 ? (SPARK_SAMPLES - 1) / (vs.length - 1) : 0;
    line.setAttribute(
      "points",
      vs.map((v, i) => (i * step).toFixed(2) + "," + (100 - (Math.max(0, v) / top) * 96 - 2).toFixed(1)).join(" ")
    );
    svg.append(line);
    return svg;
  }

  function push(arr, v) {
    if (v == null || !isFinite(v)) return;
    arr.push(v);
    if (arr.length > SPARK_SAMPLES) arr.shift();
  }

  async function pollNodes() {
    let list;
    try {
      list = (await api("/v1/nodes")).nodes || [];
    } catch (e) {
      if (state.token) showError("nodes-error", "Nodes: " + e.message);
      return;
    }
    // One request per node for its facts and usage; a small fleet's dashboard, not a monitoring system.
    const details = await Promise.all(
      list.map((n) =>
        api("/v1/nodes/" + encodeURIComponent(n.hostname)).catch((e) => ({ hostname: n.hostname, error: e.message }))
      )
    );
    if (!state.token) return;
    showError("nodes-error", "");
    $("nodes-empty").hidden = list.length > 0;
    const cards = [];
    list.forEach((n, i) => {
      const d = Object.assign({}, n, details[i] || {});
      let s = state.nodes.get(n.hostname);
      if (!s) {
        s = { samples: { cpu: [], mem: [], load: [] }, lastSample: 0 };
        state.nodes.set(n.hostname, s);
      }
      const u = d.usage || {};
      const at = u.sampledAtMs || d.lastHeartbeatMs || 0;
      if (d.online && at && at !== s.lastSample) {
        s.lastSample = at;
        push(s.samples.cpu, cpuPercent(u));
        const total = Number(u.memoryTotalBytes) || 0;
        push(s.samples.mem, total ? (100 * (Number(u.memoryUsedBytes) || 0)) / total : null);
        push(s.samples.load, typeof u.load1 === "number" ? u.load1 : null);
      }
      cards.push(nodeCard(d, s));
    });
    $("nodes-list").replaceChildren(...cards);
  }

  function nodeCard(d, s) {
    const info = d.info || {};
    const u = d.usage || {};
    const online = !!d.online;
    const card = el("article", { class: "card node", "data-host": d.hostname, "data-online": String(online) });
    card.append(
      el("h2", {}, el("span", { text: d.hostname }),
        el("span", { class: "badge " + (online ? "online" : "offline"), text: online ? "online" : "offline" }))
    );
    const facts = el("dl", { class: "facts" });
    const fact = (k, v) => facts.append(el("dt", { text: k }), el("dd", { text: v }));
    fact("CPUs", info.logicalCpus ? String(info.logicalCpus) : "–");
    fact("Memory", fmtBytes(Number(info.memoryTotalBytes || u.memoryTotalBytes)));
    fact("Load", typeof u.load1 === "number" ? [u.load1, u.load5, u.load15].map((x) => (x || 0).toFixed(2)).join(" ") : "–");
    fact("Heartbeat", fmtTime(d.lastHeartbeatMs));
    if (d.roles) fact("Roles", d.roles);
    if (d.error) fact("Error", d.error);
    card.append(facts);
    const spark = (label, arr, max, fmt) => {
      const last = arr.length ? arr[arr.length - 1] : null;
      card.append(
        el("div", { class: "spark" }, el("span", { text: label }), sparkline(arr, max),
          el("span", { class: "val", text: last == null ? "–" : fmt(last) }))
      );
    };
    spark("CPU", s.samples.cpu, 100, (v) => v.toFixed(0) + "%");
    spark("Memory", s.samples.mem, 100, (v) => v.toFixed(0) + "%");
    spark("Load 1m", s.samples.load, info.logicalCpus || 1, (v) => v.toFixed(2));
    return card;
  }

  // ---- pods ----

  function missingRoute(e, what) {
    return e.status === 404 || e.status === 405
      ? what + " is not available on this API server yet (" + e.message + ")."
      : what + ": " + e.message;
  }

  async function pollPods() {
    const q = new URLSearchParams();
    if ($("pods-ns").value.trim()) q.set("namespace", $("pods-ns").value.trim());
    if ($("pods-host").value.trim()) q.set("host", $("pods-host").value.trim());
    let r;
    try {
      r = await api("/v1/pods" + (q.toString() ? "?" + q : ""));
    } catch (e) {
      if (!state.token) return;
      showError("pods-error", missingRoute(e, "The pods API"));
      $("pods-body").replaceChildren();
      $("pods-empty").hidden = true;
      return;
    }
    showError("pods-error", "");
    const items = Array.isArray(r) ? r : (r && r.items) || [];
    $("pods-empty").hidden = items.length > 0;
    $("pods-body").replaceChildren(...items.map(podRow));
    if (state.selectedPod) {
      const p = items.find((x) => podKey(x) === state.selectedPod);
      if (p) showPod(p, false);
    }
  }

  function podKey(p) {
    const m = p.metadata || {};
    return (m.namespace || "default") + "/" + (m.name || "");
  }

  function restarts(p) {
    const cs = (p.status && p.status.containerStatuses) || [];
    return cs.reduce((s, c) => s + (Number(c.restartCount) || 0), 0);
  }

  function podRow(p) {
    const m = p.metadata || {};
    const st = p.status || {};
    const phase = st.phase || "Unknown";
    const tr = el("tr", { class: "selectable", "data-pod": podKey(p) },
      el("td", { text: m.namespace || "default" }), el("td", { text: m.name || "" }),
      el("td", {}, el("span", { class: "badge " + phase, text: phase })), el("td", { text: st.podIP || "–" }),
      el("td", { text: st.hostName || (p.spec && p.spec.nodeName) || "–" }), el("td", { text: String(restarts(p)) }));
    if (podKey(p) === state.selectedPod) tr.classList.add("selected");
    tr.addEventListener("click", () => showPod(p, true));
    return tr;
  }

  function containerState(s) {
    if (!s || typeof s !== "object") return String(s || "–");
    const k = Object.keys(s)[0];
    if (!k) return "–";
    const v = s[k] || {};
    return k + (v.reason ? " (" + v.reason + ")" : "") + (v.exitCode != null ? " exit " + v.exitCode : "");
  }

  async function showPod(p, fresh) {
    state.selectedPod = podKey(p);
    for (const r of $("pods-body").children) r.classList.toggle("selected", r.dataset.pod === state.selectedPod);
    const m = p.metadata || {};
    const st = p.status || {};
    $("pod-detail").hidden = false;
    $("pod-title").textContent = state.selectedPod;
    const facts = $("pod-facts");
    facts.replaceChildren();
    const fact = (k, v) => facts.append(el("dt", { text: k }), el("dd", { text: v }));
    fact("Phase", st.phase || "Unknown");
    fact("IP", st.podIP || "–");
    fact("Host", st.hostName || "–");
    for (const c of st.containerStatuses || [])
      fact(c.name || "container", containerState(c.state) + ", restarts " + (Number(c.restartCount) || 0));
    if (fresh) $("pod-logs").textContent = "loading…";
    try {
      const text = await api(
        "/v1/pods/" + encodeURIComponent(m.namespace || "default") + "/" + encodeURIComponent(m.name || "") +
          "/logs?tailLines=100",
        { asText: true }
      );
      showError("pod-logs-error", "");
      $("pod-logs").textContent = text || "(no output)";
    } catch (e) {
      if (!state.token) return;
      $("pod-logs").textContent = "";
      showError("pod-logs-error", missingRoute(e, "Pod logs"));
    }
  }

  // ---- schedules ----

  function scalar(v) {
    if (v == null) return "–";
    if (typeof v === "object") return JSON.stringify(v);
    return String(v);
  }

  async function pollSchedules() {
    let r;
    try {
      r = await api("/v1/schedules");
    } catch (e) {
      if (!state.token) return;
      showError("schedules-error", missingRoute(e, "The schedules API"));
      $("schedules-head").replaceChildren();
      $("schedules-body").replaceChildren();
      $("schedules-empty").hidden = true;
      return;
    }
    showError("schedules-error", "");
    // The API sends {"items": [...]}, a list, or an object keyed by name: show each as a row.
    let items = Array.isArray(r) ? r : Array.isArray(r && r.items) ? r.items : null;
    if (items == null && r && typeof r === "object")
      items = Object.entries(r).map(([k, v]) => Object.assign({ name: k }, typeof v === "object" ? v : { value: v }));
    items = items || [];
    $("schedules-empty").hidden = items.length > 0;
    const preferred = ["name", "schedule", "cron", "every", "task", "target", "host", "role", "enabled", "next", "last"];
    const keys = [];
    for (const it of items)
      for (const k of Object.keys(it || {})) if (!keys.includes(k)) keys.push(k);
    keys.sort((a, b) => {
      const ia = preferred.findIndex((p) => a.toLowerCase().startsWith(p));
      const ib = preferred.findIndex((p) => b.toLowerCase().startsWith(p));
      return (ia < 0 ? 99 : ia) - (ib < 0 ? 99 : ib);
    });
    const cols = keys.slice(0, 8);
    $("schedules-head").replaceChildren(el("tr", {}, ...cols.map((k) => el("th", { text: k }))));
    $("schedules-body").replaceChildren(
      ...items.map((it) => el("tr", {}, ...cols.map((k) => el("td", { text: scalar((it || {})[k]) }))))
    );
  }

  // ---- tasks: the live stream ----

  function setLive(s, text) {
    $("live").dataset.state = s;
    $("live").textContent = text || s;
  }

  function wantedStates() {
    const v = $("task-filter").value;
    return v ? [v] : [];
  }

  function sendFilter() {
    if (state.ws && state.ws.readyState === WebSocket.OPEN)
      state.ws.send(JSON.stringify({ filter: { states: wantedStates() } }));
  }

  function openEvents() {
    closeEvents();
    if (!state.token) return;
    setLive("connecting", "connecting");
    const url = (location.protocol === "https:" ? "wss://" : "ws://") + location.host + "/v1/events";
    let ws;
    try {
      // Browsers cannot set Authorization on a WebSocket: the token travels as a subprotocol.
      ws = new WebSocket(url, ["dibba.bearer", state.token]);
    } catch (e) {
      showError("tasks-error", "Task events: " + e.message);
      return;
    }
    state.ws = ws;
    ws.onopen = () => {
      state.wsRetry = 0;
      sendFilter();
    };
    ws.onmessage = (m) => {
      let ev;
      try {
        ev = JSON.parse(m.data);
      } catch (e) {
        return;
      }
      onEvent(ev);
    };
    ws.onclose = (c) => {
      if (state.ws !== ws) return;
      state.ws = null;
      if (!state.token) return;
      setLive("stale", "disconnected");
      if (c.code === 1008) showError("tasks-error", "The event stream was closed: " + (c.reason || "policy"));
      else if (c.code === 1013) showError("tasks-error", "The API has too many dashboards open; retrying.");
      // A refused handshake (expired token) looks like 1006: /v1/me tells, and logs out on 401.
      if (c.code === 1006) api("/v1/me").catch(() => {});
      const delay = Math.min(30000, 1000 * Math.pow(2, state.wsRetry++));
      state.wsTimer = setTimeout(openEvents, delay);
    };
  }

  function closeEvents() {
    clearTimeout(state.wsTimer);
    state.wsTimer = null;
    if (state.ws) {
      const ws = state.ws;
      state.ws = null;
      ws.close(1000, "bye");
    }
  }

  function onEvent(ev) {
    switch (ev.type) {
      case "ready":
        setLive("live", "live");
        showError("tasks-error", "");
        refreshOpenTasks(); // events may have been missed while the stream was down
        break;
      case "lost":
        setLive("stale", "stale");
        break;
      case "filter":
        break;
      case "error":
        showError("tasks-error", "Task events: " + ev.detail);
        break;
      case "task":
        upsertTask(ev);
        break;
    }
  }

  async function refreshOpenTasks() {
    for (const [id, t] of state.tasks) {
      if (FINAL.has(t.status)) continue;
      try {
        const rec = await api("/v1/tasks/" + encodeURIComponent(id));
        upsertTask(Object.assign({ task_id: id }, rec));
      } catch (e) {
        /* expired records simply stay as they were */
      }
    }
  }

  function progressOf(p) {
    if (!p || typeof p !== "object") return null;
    const cur = Number(p.current);
    const tot = Number(p.total);
    if (!tot || !isFinite(cur)) return null;
    return { pct: Math.max(0, Math.min(100, (100 * cur) / tot)), msg: p.message || "" };
  }

  function upsertTask(ev) {
    const id = ev.task_id;
    if (typeof id !== "string") return;
    let t = state.tasks.get(id);
    if (!t) {
      t = { seq: 0, status: null, trail: [], row: taskRow(id) };
      state.tasks.set(id, t);
      $("tasks-body").prepend(t.row.tr);
      trimTasks();
    }
    const seq = Number(ev.seq) || 0;
    if (seq && seq <= t.seq) return; // already shown (a re-read after "ready" can repeat an event)
    if (seq) t.seq = seq;
    const status = ev.status || t.status || "UNKNOWN";
    if (status !== t.status) {
      t.trail.push(status);
      t.status = status;
    }
    const r = t.row;
    if (ev.name) r.name.textContent = ev.name;
    if (ev.worker) r.worker.textContent = ev.worker;
    r.badge.className = "badge " + status;
    r.badge.textContent = status;
    r.tr.dataset.status = status;
    r.tr.dataset.trail = t.trail.join(" ");
    r.trail.textContent = t.trail.join(" → ");
    const p = progressOf(ev.progress);
    if (p) {
      r.fill.style.width = p.pct.toFixed(0) + "%";
      r.label.textContent = p.pct.toFixed(0) + "%" + (p.msg ? " " + p.msg : "");
    }
    if (status === "SUCCESS") {
      r.fill.style.width = "100%";
      if (!p) r.label.textContent = "100%";
    }
    r.bar.classList.toggle("done", status === "SUCCESS");
    r.bar.classList.toggle("failed", status === "FAILURE" || status === "REVOKED");
    if (ev.error && ev.error.message) r.label.textContent = ev.error.message;
    r.updated.textContent = fmtTime(ev.time_ms || ev.updated_at_ms || Date.now());
    applyTaskFilter(t);
  }

  function taskRow(id) {
    const badge = el("span", { class: "badge" });
    const trail = el("span", { class: "trail" });
    const fill = el("span");
    const bar = el("div", { class: "bar", role: "progressbar" }, fill);
    const label = el("span", { class: "bar-label" });
    const name = el("td", { text: "–" });
    const worker = el("td", { text: "–" });
    const updated = el("td", { text: "–" });
    const tr = el("tr", { id: "task-" + id, "data-task": id },
      el("td", { title: id }, el("code", { text: id.slice(0, 8) })), name, el("td", {}, badge, trail),
      el("td", {}, bar, label), worker, updated);
    $("tasks-empty").hidden = true;
    return { tr, badge, trail, fill, bar, label, name, worker, updated };
  }

  function applyTaskFilter(t) {
    const want = wantedStates();
    t.row.tr.hidden = want.length > 0 && !want.includes(t.status);
  }

  function trimTasks() {
    if (state.tasks.size <= MAX_TASK_ROWS) return;
    // Drop the oldest finished rows first (the map keeps insertion order).
    for (const [id, t] of state.tasks) {
      if (state.tasks.size <= MAX_TASK_ROWS) break;
      if (FINAL.has(t.status)) {
        t.row.tr.remove();
        state.tasks.delete(id);
      }
    }
  }

  function clearFinished() {
    for (const [id, t] of state.tasks)
      if (FINAL.has(t.status)) {
        t.row.tr.remove();
        state.tasks.delete(id);
      }
    $("tasks-empty").hidden = state.tasks.size > 0;
  }

  // ---- wiring ----

  function init() {
    $("login-form").addEventListener("submit", login);
    $("logout").addEventListener("click", () => logout(""));
    for (const b of document.querySelectorAll(".tabs button")) b.addEventListener("click", () => select(b.dataset.view));
    $("pods-filter").addEventListener("submit", (ev) => {
      ev.preventDefault();
      state.selectedPod = null;
      $("pod-detail").hidden = true;
      every("pods", POD_POLL_MS, pollPods);
    });
    $("task-filter").addEventListener("change", () => {
      sendFilter();
      for (const t of state.tasks.values()) applyTaskFilter(t);
    });
    $("tasks-clear").addEventListener("click", clearFinished);
    window.addEventListener("hashchange", () => state.token && select(location.hash.replace("#", "")));
    const saved = sessionStorage.getItem(TOKEN_KEY);
    if (saved) start(saved);
  }

  init();
})();
