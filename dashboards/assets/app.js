// Lamplighter dashboard.
//
// Login first (api/v1/login sets an HttpOnly session cookie and returns the session's CSRF
// token, which every state-changing request echoes in X-CSRF-Token). Then: the header and
// the zone table follow the server's event stream (api/v1/stream: `summary` and `zones`
// events, every second); the map and the level histogram re-read api/v1/lamps every few
// seconds; roads come once from api/v1/roads. The map is one canvas (no element per lamp):
// pan by dragging or the arrow keys, zoom with the wheel, the buttons or + and -. Every
// value is written with textContent, never as markup.
"use strict";

(function () {
  const LAMPS_REFRESH_MS = 5000;
  const LAMPS_TIMEOUT_MS = 8000;
  const STALE_AFTER_MS = 5000;
  const REOPEN_AFTER_MS = 3000;
  const SIDE_REFRESH_MS = 10000;

  const $ = (id) => document.getElementById(id);

  // ---- formatting -------------------------------------------------------------------------

  const intFmt = new Intl.NumberFormat(undefined, { maximumFractionDigits: 0 });
  const dec1 = new Intl.NumberFormat(undefined, { minimumFractionDigits: 1, maximumFractionDigits: 1 });
  const dec2 = new Intl.NumberFormat(undefined, { minimumFractionDigits: 2, maximumFractionDigits: 2 });

  function fmt(formatter, n) {
    return typeof n === "number" && isFinite(n) ? formatter.format(n) : "–";
  }

  function setText(id, text) {
    const el = $(id);
    if (el && el.textContent !== text) el.textContent = text;
  }

  function timeText(ms) {
    return typeof ms === "number" ? new Date(ms).toLocaleString() : "–";
  }

  // ---- session ----------------------------------------------------------------------------

  let me = null; // { username, role, tenant, csrf_token }

  function canOperate() {
    return me && (me.role === "operator" || me.role === "admin");
  }

  async function api(path, options) {
    const opts = Object.assign({ cache: "no-store", credentials: "same-origin" }, options || {});
    opts.headers = Object.assign({}, opts.headers || {});
    if (opts.body !== undefined) {
      opts.headers["Content-Type"] = "application/json";
      if (me && me.csrf_token) opts.headers["X-CSRF-Token"] = me.csrf_token;
    }
    const res = await fetch(path, opts);
    if (res.status === 401 && path !== "api/v1/login") {
      showLogin("Your session ended; log in again.");
      throw new Error("logged out");
    }
    return res;
  }

  async function errorText(res) {
    try {
      const body = await res.json();
      return body.error || "HTTP " + res.status;
    } catch (err) {
      return "HTTP " + res.status;
    }
  }

  function showLogin(message) {
    stopLive();
    me = null;
    $("app").hidden = true;
    $("login").hidden = false;
    setText("login-error", message || "");
    $("login-username").focus();
  }

  function showApp() {
    $("login").hidden = true;
    $("app").hidden = false;
    setText("who", me.username + " · " + me.role + (me.tenant ? " · " + me.tenant : ""));
    $("override-panel").hidden = !canOperate();
    startLive();
  }

  async function login(ev) {
    ev.preventDefault();
    setText("login-error", "");
    const body = JSON.stringify({
      username: $("login-username").value,
      password: $("login-password").value,
    });
    try {
      const res = await api("api/v1/login", { method: "POST", body: body });
      if (res.ok) {
        me = await res.json();
        $("login-password").value = "";
        showApp();
      } else if (res.status === 429) {
        const wait = res.headers.get("Retry-After");
        setText("login-error", "Too many failed attempts; try again in " + (wait || "a few") + " s.");
      } else {
        setText("login-error", await errorText(res));
      }
    } catch (err) {
      setText("login-error", "Cannot reach the server.");
    }
  }

  async function logout() {
    try {
      await api("api/v1/logout", { method: "POST", body: "{}" });
    } catch (err) {
      /* logged out either way */
    }
    showLogin("Logged out.");
  }

  // ---- connection badge -------------------------------------------------------------------

  function setBadge(state, text) {
    const el = $("conn");
    el.className = "badge badge-" + state;
    setText("conn", text);
  }

  // ---- summary ----------------------------------------------------------------------------

  let lastSummaryAt = 0;

  function renderSummary(s) {
    lastSummaryAt = Date.now();
    setText("s-lamps", fmt(intFmt, s.lamps));
    setText("s-online", fmt(intFmt, s.lamps_online));
    setText("s-uplinks", fmt(intFmt, s.uplinks));
    setText("s-commands", fmt(intFmt, s.commands));
    setText("s-rejected", fmt(intFmt, s.rejected));
    setText("s-energy", fmt(dec2, s.energy_wh / 1000));
    setText("s-power", fmt(dec2, s.power_w / 1000));
    setText("s-level", fmt(dec1, s.mean_level_pct));
    setText("s-faults", fmt(intFmt, s.lamps_with_faults));
    const reasons = Object.entries(s.rejected_by_reason || {})
      .filter(([, n]) => n > 0)
      .sort((a, b) => b[1] - a[1])
      .map(([k, n]) => k + " " + intFmt.format(n))
      .join(", ");
    $("s-rejected").title = reasons ? "Rejected: " + reasons : "";
    setText("s-rejected-why", reasons);
    if (typeof s.now_ms === "number") {
      nowMs = s.now_ms;
      // The export's days default to the controller's today (a demo may run in the past).
      const today = new Date(s.now_ms).toISOString().slice(0, 10);
      if (!$("hh-from").value) $("hh-from").value = today;
      if (!$("hh-to").value) $("hh-to").value = today;
      setText("clock", new Date(s.now_ms).toLocaleString());
    }
  }

  let nowMs = Date.now();

  // ---- zones ------------------------------------------------------------------------------

  let zones = [];
  let sortKey = "zone";
  let sortDir = 1;
  let chartZone = null; // { tenant, zone }

  function zoneLabel(z) {
    return z.tenant + " · " + z.zone;
  }

  function compareZones(a, b) {
    let d;
    const byName = a.tenant < b.tenant ? -1 : a.tenant > b.tenant ? 1 : a.zone - b.zone;
    if (sortKey === "zone") {
      d = byName;
    } else if (sortKey === "class") {
      d = String(a.class || "") < String(b.class || "") ? -1 : String(a.class || "") > String(b.class || "") ? 1 : byName;
    } else {
      d = (a[sortKey] || 0) - (b[sortKey] || 0);
      if (d === 0) d = byName;
    }
    return d * sortDir;
  }

  function reasonsText(reasons) {
    return Object.entries(reasons || {})
      .filter(([, n]) => n > 0)
      .sort((a, b) => b[1] - a[1] || (a[0] < b[0] ? -1 : 1))
      .map(([k, n]) => k + " " + intFmt.format(n))
      .join(" · ");
  }

  function cell(text, cls) {
    const td = document.createElement("td");
    td.textContent = text;
    if (cls) td.className = cls;
    return td;
  }

  function forecastText(z) {
    if (typeof z.forecast_per_h !== "number") return "–";
    return fmt(intFmt, z.forecast_per_h) + " (" + fmt(intFmt, z.forecast_q10_per_h) + "–" +
      fmt(intFmt, z.forecast_q90_per_h) + ")";
  }

  function renderZones() {
    const body = $("zones-body");
    const rows = zones.slice().sort(compareZones).map((z) => {
      const tr = document.createElement("tr");
      const th = document.createElement("th");
      th.scope = "row";
      const b = document.createElement("button");
      b.type = "button";
      b.className = "link";
      b.textContent = zoneLabel(z);
      b.addEventListener("click", () => {
        chartZone = { tenant: z.tenant, zone: z.zone };
        refreshZoneChart();
        loadZoneSettings();
        const form = $("ov-zone");
        if (form) {
          $("ov-zone").value = String(z.zone);
          $("ov-tenant").value = z.tenant;
        }
      });
      th.append(b);
      const cls = z.class ? String(z.class) + (z.design_class && z.design_class !== z.class ? " (design " + z.design_class + ")" : "") : "–";
      tr.append(
        th,
        cell(cls),
        cell(fmt(intFmt, z.demand_per_h), "num"),
        cell(forecastText(z), "num"),
        cell(fmt(intFmt, z.lamps), "num"),
        cell(fmt(intFmt, z.lamps_online), z.lamps_online < z.lamps ? "num warn" : "num"),
        cell(fmt(dec1, z.mean_level_pct), "num"),
        cell(fmt(intFmt, z.power_w), "num"),
        cell(fmt(intFmt, z.energy_wh), "num"),
        cell(fmt(intFmt, z.presence_total), "num"),
        cell(reasonsText(z.reasons), "reasons")
      );
      return tr;
    });
    if (rows.length === 0) {
      const tr = document.createElement("tr");
      const td = cell("No zones.", "note");
      td.colSpan = 11;
      tr.append(td);
      rows.push(tr);
    }
    body.replaceChildren(...rows);
  }

  function setupSorting() {
    const heads = document.querySelectorAll("#zones th[data-key]");
    heads.forEach((th) => {
      th.querySelector("button").addEventListener("click", () => {
        const key = th.dataset.key;
        if (key === sortKey) {
          sortDir = -sortDir;
        } else {
          sortKey = key;
          // Names read best A to Z; figures, largest first.
          sortDir = key === "zone" || key === "class" ? 1 : -1;
        }
        heads.forEach((h) => h.removeAttribute("aria-sort"));
        th.setAttribute("aria-sort", sortDir === 1 ? "ascending" : "descending");
        renderZones();
      });
    });
  }

  // ---- charts (inline SVG) ----------------------------------------------------------------

  const SVG = "http://www.w3.org/2000/svg";

  function svgEl(name, attrs) {
    const el = document.createElementNS(SVG, name);
    for (const [k, v] of Object.entries(attrs || {})) el.setAttribute(k, String(v));
    return el;
  }

  // series: [{ label, cls, points: [[t_ms, value]], axis: "left"|"right" }]
  function lineChart(container, series, opts) {
    const W = 640, H = 200, L = 40, R = 44, T = 10, B = 24;
    const svg = svgEl("svg", { viewBox: "0 0 " + W + " " + H, role: "img", class: "chart-svg" });
    const title = svgEl("title");
    title.textContent = opts.title;
    svg.append(title);
    const all = series.flatMap((s) => s.points);
    if (all.length === 0) {
      const t = svgEl("text", { x: W / 2, y: H / 2, "text-anchor": "middle", class: "chart-note" });
      t.textContent = "No history yet.";
      svg.append(t);
      container.replaceChildren(svg);
      return;
    }
    const t0 = opts.from_ms, t1 = opts.to_ms;
    const x = (t) => L + ((t - t0) / Math.max(1, t1 - t0)) * (W - L - R);
    const max = { left: opts.leftMax || 1, right: 1 };
    for (const s of series) {
      for (const p of s.points) max[s.axis] = Math.max(max[s.axis], p[1]);
    }
    const y = (axis, v) => H - B - (v / max[axis]) * (H - T - B);
    svg.append(svgEl("line", { x1: L, y1: H - B, x2: W - R, y2: H - B, class: "axis" }));
    for (const [axis, xpos, anchor] of [["left", L - 4, "end"], ["right", W - R + 4, "start"]]) {
      if (!series.some((s) => s.axis === axis)) continue;
      for (const f of [0, 0.5, 1]) {
        const t = svgEl("text", { x: xpos, y: y(axis, max[axis] * f) + 4, "text-anchor": anchor, class: "tick" });
        t.textContent = intFmt.format(max[axis] * f);
        svg.append(t);
      }
    }
    for (const f of [0, 0.25, 0.5, 0.75, 1]) {
      const tm = t0 + (t1 - t0) * f;
      const t = svgEl("text", { x: x(tm), y: H - 6, "text-anchor": "middle", class: "tick" });
      t.textContent = new Date(tm).toLocaleTimeString([], { hour: "2-digit", minute: "2-digit" });
      svg.append(t);
    }
    for (const s of series) {
      if (s.band) {
        for (const b of s.band) {
          svg.append(svgEl("line", { x1: x(b[0]), y1: y(s.axis, b[1]), x2: x(b[0]), y2: y(s.axis, b[2]), class: "band " + s.cls }));
        }
      }
      if (s.points.length === 0) continue;
      const d = s.points.map((p, i) => (i ? "L" : "M") + x(p[0]).toFixed(1) + " " + y(s.axis, p[1]).toFixed(1)).join(" ");
      svg.append(svgEl("path", { d: d, class: "series " + s.cls }));
      if (s.points.length === 1) {
        const p = s.points[0];
        svg.append(svgEl("circle", { cx: x(p[0]), cy: y(s.axis, p[1]), r: 3, class: "dot " + s.cls }));
      }
    }
    const legend = document.createElement("ul");
    legend.className = "chart-legend";
    for (const s of series) {
      const li = document.createElement("li");
      const sw = document.createElement("span");
      sw.className = "key " + s.cls;
      li.append(sw, document.createTextNode(s.label));
      legend.append(li);
    }
    container.replaceChildren(svg, legend);
  }

  async function refreshZoneChart() {
    if (!chartZone) return;
    const z = chartZone;
    setText("zone-chart-title", "Zone " + z.tenant + " · " + z.zone + ": last 24 hours");
    try {
      const res = await api("api/v1/zones/" + encodeURIComponent(z.tenant) + "/" + z.zone + "/history");
      if (!res.ok) throw new Error(await errorText(res));
      const points = await res.json();
      const now = nowMs;
      const demand = points.map((p) => [p.t_s * 1000, (p.pedestrians + p.cyclists + p.vehicles) * 4]);
      const level = points.map((p) => [p.t_s * 1000, p.level_pct_mean]);
      const live = zones.find((q) => q.tenant === z.tenant && q.zone === z.zone);
      const forecast = [];
      const band = [];
      if (live && typeof live.forecast_per_h === "number") {
        const at = now + (live.forecast_horizon_s || 0) * 1000;
        forecast.push([at, live.forecast_per_h]);
        band.push([at, live.forecast_q10_per_h || 0, live.forecast_q90_per_h || 0]);
      }
      lineChart($("zone-chart"), [
        { label: "demand (detections per hour)", cls: "s-demand", axis: "right", points: demand },
        { label: "forecast with 80 % band", cls: "s-forecast", axis: "right", points: forecast, band: band },
        { label: "mean level %", cls: "s-level", axis: "left", points: level },
      ], { title: "Demand, forecast and level", from_ms: now - 86400000, to_ms: now + 1800000, leftMax: 100 });
    } catch (err) {
      setText("zone-chart", "History unavailable: " + err.message);
    }
  }

  // ---- zone settings ----------------------------------------------------------------------

  function settingsPath(z) {
    return "api/v1/zones/" + encodeURIComponent(z.tenant) + "/" + z.zone + "/settings";
  }

  async function loadZoneSettings() {
    if (!chartZone) return;
    const z = chartZone;
    $("zs-form").hidden = false;
    setText("zs-heading", "Policy settings of zone " + z.tenant + " · " + z.zone);
    const admin = me && me.role === "admin";
    for (const id of ["zs-policy", "zs-class", "zs-min", "zs-up", "zs-down", "zs-reason", "zs-submit"]) {
      $(id).disabled = !admin;
    }
    $("zs-reason").hidden = !admin;
    $("zs-submit").hidden = !admin;
    try {
      const res = await api(settingsPath(z));
      if (!res.ok) throw new Error(await errorText(res));
      const s = await res.json();
      $("zs-policy").value = s.policy;
      $("zs-class").value = s.design_class;
      $("zs-min").value = String(s.min_level_pct);
      $("zs-up").value = String(s.ramp_up_ms);
      $("zs-down").value = String(s.ramp_down_ms);
      setText("zs-message", admin ? "" : "Only an admin can change these.");
    } catch (err) {
      setText("zs-message", "Settings unavailable: " + err.message);
    }
  }

  async function saveZoneSettings(ev) {
    ev.preventDefault();
    if (!chartZone) return;
    const body = {
      policy: $("zs-policy").value,
      design_class: $("zs-class").value.trim().toUpperCase(),
      min_level_pct: parseInt($("zs-min").value, 10),
      ramp_up_ms: parseInt($("zs-up").value, 10),
      ramp_down_ms: parseInt($("zs-down").value, 10),
      reason: $("zs-reason").value,
    };
    try {
      const res = await api(settingsPath(chartZone), { method: "PUT", body: JSON.stringify(body) });
      setText("zs-message", res.ok ? "Saved; the zone's lamps follow it now." : "Refused: " + (await errorText(res)));
    } catch (err) {
      setText("zs-message", "Cannot reach the server.");
    }
    refreshAudit();
    refreshLamps();
  }

  // ---- lamps: map -------------------------------------------------------------------------

  let lamps = [];
  let roads = [];
  let lampById = new Map();
  let selected = null; // lamp id

  // Lit lamps run from a dim amber (1 %) to a bright warm white (100 %).
  const DIM = [120, 70, 20];
  const BRIGHT = [255, 236, 140];
  const OFF = "#4a515c";
  const OFFLINE = "#e0605a";
  const OVERRIDE = "#36c5f0";
  const FAULT = "#ff3b30";
  const ROAD = "#2b3644";
  const COMMS_LOST = 4;

  function levelColour(pct) {
    const t = Math.max(0, Math.min(1, (pct - 1) / 99));
    const c = DIM.map((lo, i) => Math.round(lo + (BRIGHT[i] - lo) * t));
    return "rgb(" + c.join(",") + ")";
  }
  // Eleven bands of colour, so a frame is eleven fills, not one per lamp.
  const BAND_COLOURS = Array.from({ length: 11 }, (_, i) => levelColour(Math.max(1, i * 10)));

  // The view: world coordinates are (lon * k, lat); `scale` is CSS pixels per world unit
  // and (cx, cy) the world point at the canvas centre.
  const view = { k: 1, scale: 1, cx: 0, cy: 0, fitted: false };
  let bounds = null;

  function computeBounds() {
    let minLat = Infinity, maxLat = -Infinity, minLon = Infinity, maxLon = -Infinity;
    for (const l of lamps) {
      if (!isFinite(l.lat) || !isFinite(l.lon)) continue;
      minLat = Math.min(minLat, l.lat);
      maxLat = Math.max(maxLat, l.lat);
      minLon = Math.min(minLon, l.lon);
      maxLon = Math.max(maxLon, l.lon);
    }
    if (!isFinite(minLat)) return null;
    return { minLat, maxLat, minLon, maxLon };
  }

  function canvasSize() {
    const c = $("map");
    return { w: c.clientWidth || 640, h: c.clientHeight || 420 };
  }

  function fitView() {
    bounds = computeBounds();
    if (!bounds) return;
    const { w, h } = canvasSize();
    view.k = Math.cos(((bounds.minLat + bounds.maxLat) / 2) * Math.PI / 180);
    const spanX = Math.max((bounds.maxLon - bounds.minLon) * view.k, 1e-6);
    const spanY = Math.max(bounds.maxLat - bounds.minLat, 1e-6);
    view.scale = Math.min((w - 24) / spanX, (h - 24) / spanY);
    view.cx = ((bounds.minLon + bounds.maxLon) / 2) * view.k;
    view.cy = (bounds.minLat + bounds.maxLat) / 2;
    view.fitted = true;
    requestDraw();
  }

  function toScreen(lat, lon) {
    const { w, h } = canvasSize();
    return [w / 2 + (lon * view.k - view.cx) * view.scale, h / 2 - (lat - view.cy) * view.scale];
  }

  function zoomAt(factor, sx, sy) {
    const { w, h } = canvasSize();
    if (sx === undefined) { sx = w / 2; sy = h / 2; }
    // Keep the world point under (sx, sy) where it is.
    const wx = view.cx + (sx - w / 2) / view.scale;
    const wy = view.cy - (sy - h / 2) / view.scale;
    view.scale = Math.max(1, Math.min(view.scale * factor, 5e7));
    view.cx = wx - (sx - w / 2) / view.scale;
    view.cy = wy + (sy - h / 2) / view.scale;
    requestDraw();
  }

  function panBy(dx, dy) {
    view.cx -= dx / view.scale;
    view.cy += dy / view.scale;
    requestDraw();
  }

  let drawPending = false;
  function requestDraw() {
    if (drawPending) return;
    drawPending = true;
    requestAnimationFrame(() => {
      drawPending = false;
      drawMap();
    });
  }

  function hasFault(l) {
    return (l.faults & ~COMMS_LOST) !== 0;
  }

  let lastDrawMs = 0;

  function drawMap() {
    const started = performance.now();
    drawLamps();
    lastDrawMs = performance.now() - started;
  }

  function drawLamps() {
    const canvas = $("map");
    const ctx = canvas.getContext("2d");
    if (!ctx) return;
    const dpr = window.devicePixelRatio || 1;
    const { w: cssW, h: cssH } = canvasSize();
    if (canvas.width !== Math.round(cssW * dpr) || canvas.height !== Math.round(cssH * dpr)) {
      canvas.width = Math.round(cssW * dpr);
      canvas.height = Math.round(cssH * dpr);
    }
    ctx.setTransform(dpr, 0, 0, dpr, 0, 0);
    ctx.fillStyle = "#0d1520";
    ctx.fillRect(0, 0, cssW, cssH);
    if (!view.fitted) return;

    // Roads under the lamps.
    ctx.strokeStyle = ROAD;
    ctx.lineWidth = Math.max(1, Math.min(6, view.scale * 0.00008));
    ctx.lineJoin = "round";
    ctx.beginPath();
    const rsx = view.k * view.scale, rox = cssW / 2 - view.cx * view.scale;
    const roy = cssH / 2 + view.cy * view.scale;
    for (const r of roads) {
      const pts = r.points;
      for (let i = 0; i < pts.length; i++) {
        const x = rox + pts[i][1] * rsx, y = roy - pts[i][0] * view.scale;
        if (i === 0) ctx.moveTo(x, y); else ctx.lineTo(x, y);
      }
    }
    ctx.stroke();

    // Lamps, batched by colour; only those on screen.
    const r = Math.max(1.5, Math.min(7, view.scale * 0.00004));
    const byColour = new Map();
    const rings = { offline: [], override: [], fault: [] };
    // The view transform, unrolled: no allocation or layout read per lamp.
    const sx = view.k * view.scale, ox = cssW / 2 - view.cx * view.scale;
    const oy = cssH / 2 + view.cy * view.scale, sc = view.scale;
    for (const l of lamps) {
      const x = ox + l.lon * sx, y = oy - l.lat * sc;
      if (!(x >= -r && y >= -r && x <= cssW + r && y <= cssH + r)) continue;
      if (!l.online || l.level_pct === null || l.level_pct === undefined) {
        rings.offline.push(x, y);
      } else {
        const colour = l.level_pct === 0 ? OFF : BAND_COLOURS[Math.round(l.level_pct / 10)];
        let list = byColour.get(colour);
        if (!list) byColour.set(colour, (list = []));
        list.push(x, y);
      }
      if (l.reason === "override") rings.override.push(x, y);
      if (hasFault(l)) rings.fault.push(x, y);
    }
    // Tiny dots are squares: indistinguishable at that size, and far cheaper than arcs
    // when a whole city is on screen.
    const dot = r < 2.5
      ? (x, y, rr) => ctx.rect(x - rr, y - rr, 2 * rr, 2 * rr)
      : (x, y, rr) => { ctx.moveTo(x + rr, y); ctx.arc(x, y, rr, 0, 2 * Math.PI); };
    for (const [colour, pts] of byColour) {
      ctx.fillStyle = colour;
      ctx.beginPath();
      for (let i = 0; i < pts.length; i += 2) dot(pts[i], pts[i + 1], r);
      ctx.fill();
    }
    const ring = (pts, colour, rr, width) => {
      if (pts.length === 0) return;
      ctx.strokeStyle = colour;
      ctx.lineWidth = width;
      ctx.beginPath();
      for (let i = 0; i < pts.length; i += 2) dot(pts[i], pts[i + 1], rr);
      ctx.stroke();
    };
    ring(rings.offline, OFFLINE, r, 1);
    ring(rings.override, OVERRIDE, r + 2.5, 2);
    if (rings.fault.length) {
      ctx.strokeStyle = FAULT;
      ctx.lineWidth = 2;
      ctx.beginPath();
      const s = r + 3;
      for (let i = 0; i < rings.fault.length; i += 2) {
        const x = rings.fault[i], y = rings.fault[i + 1];
        ctx.moveTo(x - s, y - s); ctx.lineTo(x + s, y + s);
        ctx.moveTo(x + s, y - s); ctx.lineTo(x - s, y + s);
      }
      ctx.stroke();
    }
    const sel = selected !== null ? lampById.get(selected) : null;
    if (sel) {
      const [x, y] = toScreen(sel.lat, sel.lon);
      ctx.strokeStyle = "#ffffff";
      ctx.lineWidth = 2;
      ctx.beginPath();
      ctx.arc(x, y, r + 6, 0, 2 * Math.PI);
      ctx.stroke();
    }
  }

  // The nearest lamp within `maxPx` of a canvas point.
  function lampAt(sx, sy, maxPx) {
    let best = null, bestD = (maxPx || 10) ** 2;
    for (const l of lamps) {
      const [x, y] = toScreen(l.lat, l.lon);
      const d = (x - sx) ** 2 + (y - sy) ** 2;
      if (d < bestD) { bestD = d; best = l; }
    }
    return best;
  }

  function setupMap() {
    const canvas = $("map");
    let drag = null;
    canvas.addEventListener("pointerdown", (ev) => {
      drag = { x: ev.clientX, y: ev.clientY, moved: 0 };
      canvas.setPointerCapture(ev.pointerId);
    });
    canvas.addEventListener("pointermove", (ev) => {
      if (!drag) return;
      const dx = ev.clientX - drag.x, dy = ev.clientY - drag.y;
      drag.moved += Math.abs(dx) + Math.abs(dy);
      drag.x = ev.clientX;
      drag.y = ev.clientY;
      panBy(dx, dy);
    });
    canvas.addEventListener("pointerup", (ev) => {
      const wasClick = drag && drag.moved < 4;
      drag = null;
      if (!wasClick) return;
      const rect = canvas.getBoundingClientRect();
      const l = lampAt(ev.clientX - rect.left, ev.clientY - rect.top, 12);
      if (l) selectLamp(l.lamp, false);
    });
    canvas.addEventListener("wheel", (ev) => {
      ev.preventDefault();
      const rect = canvas.getBoundingClientRect();
      zoomAt(ev.deltaY < 0 ? 1.25 : 0.8, ev.clientX - rect.left, ev.clientY - rect.top);
    }, { passive: false });
    canvas.addEventListener("keydown", (ev) => {
      const step = 60;
      const keys = {
        ArrowLeft: () => panBy(step, 0), ArrowRight: () => panBy(-step, 0),
        ArrowUp: () => panBy(0, step), ArrowDown: () => panBy(0, -step),
        "+": () => zoomAt(1.5), "=": () => zoomAt(1.5), "-": () => zoomAt(1 / 1.5),
        "0": () => fitView(),
      };
      const f = keys[ev.key];
      if (f) { ev.preventDefault(); f(); }
    });
    $("zoom-in").addEventListener("click", () => zoomAt(1.5));
    $("zoom-out").addEventListener("click", () => zoomAt(1 / 1.5));
    $("zoom-reset").addEventListener("click", () => fitView());
    $("lamp-find-form").addEventListener("submit", (ev) => {
      ev.preventDefault();
      const id = parseInt($("lamp-find").value, 10);
      if (lampById.has(id)) {
        selectLamp(id, true);
      } else {
        setText("lamps-status", "No lamp " + $("lamp-find").value + " here.");
      }
    });
    // For scripts and tests: where a lamp is drawn, in CSS pixels from the canvas's corner.
    window.lamplighterMap = {
      screenOf: (id) => {
        const l = lampById.get(id);
        return l ? toScreen(l.lat, l.lon) : null;
      },
      lampCount: () => lamps.length,
      ids: () => lamps.map((l) => l.lamp),
      scale: () => view.scale,
      lastDrawMs: () => lastDrawMs,
      zoomBy: (f) => { zoomAt(f); drawMap(); return lastDrawMs; },
    };
  }

  // ---- a lamp's details -------------------------------------------------------------------

  function detail(dl, name, value) {
    const dt = document.createElement("dt");
    dt.textContent = name;
    const dd = document.createElement("dd");
    dd.textContent = value;
    dd.dataset.field = name;
    dl.append(dt, dd);
  }

  function selectLamp(id, centre) {
    selected = id;
    const l = lampById.get(id);
    if (l && centre) {
      view.cx = l.lon * view.k;
      view.cy = l.lat;
      if (view.scale < 200000) zoomAt(200000 / view.scale);
    }
    $("lamp-panel").dataset.lamp = String(id);
    renderLampDetails();
    refreshLampHistory();
    if (canOperate()) {
      $("ov-scope").value = "lamp";
      $("ov-lamp").value = String(id);
    }
    requestDraw();
  }

  function renderLampDetails() {
    const dl = $("lamp-details");
    const l = selected !== null ? lampById.get(selected) : null;
    if (!l) {
      dl.replaceChildren();
      $("lamp-none").hidden = false;
      setText("lamp-title", "Lamp");
      return;
    }
    $("lamp-none").hidden = true;
    setText("lamp-title", "Lamp " + l.lamp);
    dl.replaceChildren();
    detail(dl, "Zone", l.tenant + " · " + l.zone);
    detail(dl, "State", l.online ? "online" : "offline");
    detail(dl, "Level", l.level_pct == null ? "unknown" : l.level_pct + " %");
    detail(dl, "Target", l.target_level_pct == null ? "–" : l.target_level_pct + " %");
    detail(dl, "Commanded", l.commanded_level_pct == null ? "–" : l.commanded_level_pct + " %");
    detail(dl, "Reason", l.reason || "–");
    detail(dl, "Power", l.power_w == null ? "–" : dec1.format(l.power_w) + " W");
    detail(dl, "Energy", dec1.format(l.energy_wh) + " Wh");
    detail(dl, "Mode", l.mode || "–");
    detail(dl, "Faults", l.faults ? "0x" + l.faults.toString(16) : "none");
    detail(dl, "Last seen", timeText(l.last_seen_ms));
    detail(dl, "Position", l.lat.toFixed(6) + ", " + l.lon.toFixed(6));
    const ov = overrides.find((o) => coversLamp(o, l));
    if (ov) detail(dl, "Override", ov.level_pct + " % until " + timeText(ov.until_ms) + " (" + ov.reason + ")");
  }

  async function refreshLampHistory() {
    if (selected === null) return;
    const id = selected;
    try {
      const res = await api("api/v1/lamps/" + id + "/history");
      if (!res.ok) throw new Error(await errorText(res));
      const h = await res.json();
      if (id !== selected) return;
      const now = nowMs;
      lineChart($("lamp-chart"), [
        { label: "level %", cls: "s-level", axis: "left", points: h.points.map((p) => [p.t_s * 1000, p.level_pct_mean]) },
        { label: "power W", cls: "s-power", axis: "right", points: h.points.map((p) => [p.t_s * 1000, p.power_w]) },
        { label: "presence", cls: "s-demand", axis: "right", points: h.points.filter((p) => p.pedestrians + p.cyclists + p.vehicles > 0).map((p) => [p.t_s * 1000, p.pedestrians + p.cyclists + p.vehicles]) },
      ], { title: "Lamp " + id + ": level, power and presence", from_ms: now - 86400000, to_ms: now, leftMax: 100 });
      const rows = h.commands.slice(-50).reverse().map((c) => {
        const tr = document.createElement("tr");
        tr.append(cell(timeText(c.sent_ms)), cell(String(c.level_pct), "num"), cell(dec1.format(c.ramp_ms / 1000), "num"), cell(c.reason));
        return tr;
      });
      $("lamp-commands").replaceChildren(...rows);
    } catch (err) {
      setText("lamp-chart", "History unavailable: " + err.message);
    }
  }

  // ---- histogram --------------------------------------------------------------------------

  const BANDS = [
    { label: "Offline or unknown", cls: "sw-offline", test: (l) => !l.online || l.level_pct == null },
    { label: "Off (0 %)", cls: "sw-off", test: (l) => l.level_pct === 0 },
    { label: "1–25 %", cls: "sw-low", test: (l) => l.level_pct <= 25 },
    { label: "26–50 %", cls: "sw-low", test: (l) => l.level_pct <= 50 },
    { label: "51–75 %", cls: "sw-mid", test: (l) => l.level_pct <= 75 },
    { label: "76–100 %", cls: "sw-high", test: () => true },
  ];

  function renderHistogram() {
    const counts = BANDS.map(() => 0);
    for (const l of lamps) {
      const i = BANDS.findIndex((b) => b.test(l));
      counts[i] += 1;
    }
    const max = Math.max(1, ...counts);
    const rows = BANDS.map((b, i) => {
      const tr = document.createElement("tr");
      const th = document.createElement("th");
      th.scope = "row";
      th.textContent = b.label;
      const bar = document.createElement("span");
      bar.className = "bar " + b.cls;
      bar.style.width = ((100 * counts[i]) / max).toFixed(1) + "%";
      const barCell = document.createElement("td");
      barCell.className = "bar-cell";
      barCell.append(bar);
      tr.append(th, cell(intFmt.format(counts[i]), "num"), barCell);
      return tr;
    });
    $("hist-body").replaceChildren(...rows);

    const lit = lamps.length - counts[0] - counts[1];
    $("map").setAttribute(
      "aria-label",
      "Map of " + intFmt.format(lamps.length) + " lamps: " + intFmt.format(lit) + " lit, " +
        intFmt.format(counts[1]) + " off, " + intFmt.format(counts[0]) + " offline or unknown"
    );
  }

  let lampsInFlight = false;

  async function refreshLamps() {
    if (!me || lampsInFlight || document.hidden) return;
    lampsInFlight = true;
    const abort = new AbortController();
    const timer = setTimeout(() => abort.abort(), LAMPS_TIMEOUT_MS);
    try {
      const res = await api("api/v1/lamps", { signal: abort.signal });
      if (!res.ok) throw new Error("HTTP " + res.status);
      lamps = await res.json();
      lampById = new Map(lamps.map((l) => [l.lamp, l]));
      if (!view.fitted) fitView();
      requestDraw();
      renderHistogram();
      renderLampDetails();
      $("map").dataset.lamps = String(lamps.length);
      setText("lamps-status", "Updated " + new Date().toLocaleTimeString() + ".");
    } catch (err) {
      if (me) setText("lamps-status", "Lamp list unavailable; retrying.");
    } finally {
      clearTimeout(timer);
      lampsInFlight = false;
    }
  }

  async function refreshRoads() {
    try {
      const res = await api("api/v1/roads");
      if (res.ok) {
        roads = await res.json();
        requestDraw();
      }
    } catch (err) {
      /* the map works without roads */
    }
  }

  // ---- overrides --------------------------------------------------------------------------

  let overrides = [];

  function coversLamp(o, l) {
    const t = o.target;
    if (t.scope === "lamp") return t.lamp === l.lamp;
    if (t.scope === "zone") return t.tenant === l.tenant && t.zone === l.zone;
    return o.tenant == null || o.tenant === l.tenant;
  }

  function targetText(t) {
    if (t.scope === "lamp") return "lamp " + t.lamp;
    if (t.scope === "zone") return "zone " + t.tenant + " · " + t.zone;
    return "town";
  }

  function targetBody(t) {
    if (t.scope === "lamp") return { scope: "lamp", lamp: t.lamp };
    if (t.scope === "zone") return { scope: "zone", zone: t.zone, tenant: t.tenant };
    return { scope: "town" };
  }

  async function refreshOverrides() {
    try {
      const res = await api("api/v1/overrides");
      if (!res.ok) return;
      const body = await res.json();
      overrides = body.overrides || [];
      setText("s-overrides", intFmt.format(overrides.length));
      const rows = overrides.map((o) => {
        const tr = document.createElement("tr");
        tr.append(cell(targetText(o.target)), cell(String(o.level_pct), "num"), cell(intFmt.format(o.lamps), "num"),
          cell(timeText(o.until_ms)), cell(o.username), cell(o.reason));
        const td = document.createElement("td");
        if (canOperate()) {
          const b = document.createElement("button");
          b.type = "button";
          b.textContent = "Clear";
          b.setAttribute("aria-label", "Clear the override of " + targetText(o.target));
          b.addEventListener("click", () => clearOverride(o));
          td.append(b);
        }
        tr.append(td);
        return tr;
      });
      if (rows.length === 0) {
        const tr = document.createElement("tr");
        const td = cell("None.", "note");
        td.colSpan = 7;
        tr.append(td);
        rows.push(tr);
      }
      $("ov-list").replaceChildren(...rows);
      renderLampDetails();
    } catch (err) {
      /* shown on the next refresh */
    }
  }

  async function clearOverride(o) {
    const reason = window.prompt("Why clear the override of " + targetText(o.target) + "?", "cleared by operator");
    if (!reason) return;
    const body = Object.assign(targetBody(o.target), { reason: reason });
    const res = await api("api/v1/overrides/clear", { method: "POST", body: JSON.stringify(body) });
    setText("ov-message", res.ok ? "Cleared." : await errorText(res));
    refreshOverrides();
    refreshAudit();
    refreshLamps();
  }

  function syncOverrideForm() {
    const scope = $("ov-scope").value;
    $("ov-lamp").disabled = scope !== "lamp";
    $("ov-zone").disabled = scope !== "zone";
    $("ov-tenant").disabled = scope !== "zone";
  }

  async function submitOverride(ev) {
    ev.preventDefault();
    const scope = $("ov-scope").value;
    const body = {
      scope: scope,
      level_pct: parseInt($("ov-level").value, 10),
      duration_s: Math.round(parseFloat($("ov-duration").value) * 60),
      reason: $("ov-reason").value,
    };
    if (scope === "lamp") body.lamp = parseInt($("ov-lamp").value, 10);
    if (scope === "zone") {
      body.zone = parseInt($("ov-zone").value, 10);
      if ($("ov-tenant").value.trim()) body.tenant = $("ov-tenant").value.trim();
    }
    try {
      const res = await api("api/v1/overrides", { method: "POST", body: JSON.stringify(body) });
      if (res.ok) {
        const o = await res.json();
        setText("ov-message", "Override set on " + intFmt.format(o.lamps) + " lamps until " + timeText(o.until_ms) + ".");
      } else {
        setText("ov-message", "Refused: " + (await errorText(res)));
      }
    } catch (err) {
      setText("ov-message", "Cannot reach the server.");
    }
    refreshOverrides();
    refreshAudit();
    refreshLamps();
  }

  // ---- faults and energy ------------------------------------------------------------------

  async function refreshFaults() {
    try {
      const res = await api("api/v1/faults");
      if (!res.ok) return;
      const body = await res.json();
      const c = body.counts || {};
      setText("s-faults-open", fmt(intFmt, c.open));
      setText("s-faults-ack", typeof c.acknowledged === "number" ? intFmt.format(c.acknowledged) + " acknowledged" : "");
      const kinds = Object.entries(c.by_kind || {})
        .filter(([, k]) => k.open + k.acknowledged > 0)
        .map(([kind, k]) => kind + " " + intFmt.format(k.open + k.acknowledged))
        .join(" · ");
      setText("faults-summary", kinds ? "By kind: " + kinds : "No faults.");
      const rows = (body.faults || []).slice(0, 200).map((f) => {
        const tr = document.createElement("tr");
        const lampCell = document.createElement("td");
        const b = document.createElement("button");
        b.type = "button";
        b.className = "link";
        b.textContent = String(f.lamp);
        b.addEventListener("click", () => selectLamp(f.lamp, true));
        lampCell.append(b);
        const state = f.acknowledged ? "acknowledged by " + (f.acknowledged.by || "?") : "open";
        tr.append(cell(timeText(f.raised_at)), lampCell, cell(f.kind), cell(f.detail), cell(state));
        const td = document.createElement("td");
        if (canOperate()) {
          for (const [label, action] of [["Acknowledge", "acknowledge"], ["Clear", "clear"]]) {
            if (action === "acknowledge" && f.acknowledged) continue;
            const btn = document.createElement("button");
            btn.type = "button";
            btn.textContent = label;
            btn.setAttribute("aria-label", label + " fault " + f.id + " (" + f.kind + ", lamp " + f.lamp + ")");
            btn.addEventListener("click", () => faultAction(f, action));
            td.append(btn);
          }
        }
        tr.append(td);
        return tr;
      });
      if (rows.length === 0) {
        const tr = document.createElement("tr");
        const td = cell("None.", "note");
        td.colSpan = 6;
        tr.append(td);
        rows.push(tr);
      }
      $("faults-body").replaceChildren(...rows);
    } catch (err) {
      /* shown on the next refresh */
    }
  }

  async function faultAction(f, action) {
    const note = window.prompt(action === "clear" ? "Why clear this fault?" : "Note (who goes, or why)", "");
    if (!note) return;
    const res = await api("api/v1/faults/" + f.id + "/" + action, { method: "POST", body: JSON.stringify({ note: note }) });
    setText("faults-message", res.ok ? "Done." : "Refused: " + (await errorText(res)));
    refreshFaults();
    refreshAudit();
  }

  function savedText(s) {
    if (!s || typeof s.saved_kwh !== "number") return "–";
    return dec1.format(s.saved_kwh) + " kWh" + (typeof s.saved_pct === "number" ? " (" + dec1.format(s.saved_pct) + " %)" : "");
  }

  async function refreshEnergy() {
    try {
      const res = await api("api/v1/energy");
      if (!res.ok) return;
      const list = await res.json();
      let todayKwh = 0, todaySaved = 0;
      const rows = [];
      for (const e of list) {
        for (const [label, p] of [["today", e.today], ["this week", e.week], ["this month", e.month]]) {
          const tr = document.createElement("tr");
          const th = document.createElement("th");
          th.scope = "row";
          th.textContent = (list.length > 1 ? e.tenant + " · " : "") + label;
          tr.append(th, cell(fmt(dec1, p.metered_kwh), "num"), cell(fmt(dec2, p.gbp), "num"),
            cell(p.co2e_t.toFixed(4), "num"), cell(savedText(p.savings.full), "num"),
            cell(savedText(p.savings["part-night"]), "num"));
          rows.push(tr);
        }
        todayKwh += e.today.metered_kwh;
        if (e.today.savings.full) todaySaved += e.today.savings.full.saved_kwh;
      }
      $("energy-body").replaceChildren(...rows);
      setText("s-today-kwh", fmt(dec1, todayKwh));
      setText("s-today-saved", list.length ? dec1.format(todaySaved) + " kWh saved vs full" : "");
    } catch (err) {
      /* shown on the next refresh */
    }
  }

  function downloadHalfHourly(ev) {
    ev.preventDefault();
    const from = Date.parse($("hh-from").value + "T00:00:00Z");
    const to = Date.parse($("hh-to").value + "T00:00:00Z") + 86400000;
    if (!isFinite(from) || !isFinite(to) || to <= from) {
      setText("hh-message", "Choose a first and a last day.");
      return;
    }
    setText("hh-message", "");
    const a = document.createElement("a");
    a.href = "api/v1/energy/half-hourly.csv?from_s=" + from / 1000 + "&to_s=" + to / 1000;
    a.download = "lamplighter-half-hourly.csv";
    document.body.append(a);
    a.click();
    a.remove();
  }

  // ---- audit ------------------------------------------------------------------------------

  async function refreshAudit() {
    try {
      const res = await api("api/v1/audit?limit=100");
      if (!res.ok) return;
      const lines = await res.json();
      const rows = lines.map((a) => {
        const tr = document.createElement("tr");
        tr.append(cell(timeText(a.at_ms)), cell(a.username), cell(a.action), cell(a.target), cell(a.detail, "detail"), cell(a.reason));
        return tr;
      });
      if (rows.length === 0) {
        const tr = document.createElement("tr");
        const td = cell("Nothing yet.", "note");
        td.colSpan = 6;
        tr.append(td);
        rows.push(tr);
      }
      $("audit-body").replaceChildren(...rows);
    } catch (err) {
      /* shown on the next refresh */
    }
  }

  // ---- the event stream -------------------------------------------------------------------

  let source = null;
  let timers = [];

  function parse(ev) {
    try {
      return JSON.parse(ev.data);
    } catch (err) {
      return null;
    }
  }

  function connect() {
    if (!me) return;
    if (source) source.close();
    source = new EventSource("api/v1/stream");
    source.onopen = () => setBadge("live", "live");
    source.addEventListener("summary", (ev) => {
      const s = parse(ev);
      if (s) {
        renderSummary(s);
        setBadge("live", "live");
      }
    });
    source.addEventListener("zones", (ev) => {
      const z = parse(ev);
      if (Array.isArray(z)) {
        zones = z;
        renderZones();
      }
    });
    source.onerror = () => {
      setBadge("reconnecting", "reconnecting");
      // CONNECTING: the browser retries by itself. CLOSED: it gave up (an HTTP error, say,
      // or the session ended); check the session and open a new stream after a pause.
      if (source.readyState === EventSource.CLOSED) {
        source.close();
        timers.push(setTimeout(() => {
          api("api/v1/me").then(connect, () => {});
        }, REOPEN_AFTER_MS));
      }
    };
  }

  function startLive() {
    stopLive();
    connect();
    refreshLamps();
    refreshRoads();
    refreshOverrides();
    refreshAudit();
    refreshFaults();
    refreshEnergy();
    // The lamp list is the one large answer (about 280 bytes a lamp): a big town re-reads
    // it less often, up to every 30 s at 50,000 lamps.
    const lampsLoop = () => {
      refreshLamps();
      const every = Math.max(LAMPS_REFRESH_MS, Math.min(30000, lamps.length * 0.6));
      timers.push(setTimeout(lampsLoop, every));
    };
    timers.push(setTimeout(lampsLoop, LAMPS_REFRESH_MS));
    timers.push(setInterval(() => {
      refreshOverrides();
      refreshAudit();
      refreshLampHistory();
      refreshZoneChart();
      refreshFaults();
      refreshEnergy();
    }, SIDE_REFRESH_MS));
    timers.push(setInterval(() => {
      if (source && source.readyState === EventSource.OPEN && lastSummaryAt > 0 &&
          Date.now() - lastSummaryAt > STALE_AFTER_MS) {
        setBadge("stale", "no data");
      }
    }, 1000));
  }

  function stopLive() {
    if (source) source.close();
    source = null;
    for (const t of timers) {
      clearInterval(t);
      clearTimeout(t);
    }
    timers = [];
  }

  // ---- start ------------------------------------------------------------------------------

  async function start() {
    setupSorting();
    setupMap();
    renderHistogram();
    drawMap();
    $("login-form").addEventListener("submit", login);
    $("logout").addEventListener("click", logout);
    $("override-form").addEventListener("submit", submitOverride);
    $("zs-form").addEventListener("submit", saveZoneSettings);
    $("hh-form").addEventListener("submit", downloadHalfHourly);
    $("zs-form").hidden = true;
    $("ov-scope").addEventListener("change", syncOverrideForm);
    syncOverrideForm();
    document.addEventListener("visibilitychange", () => {
      if (!document.hidden) refreshLamps();
    });
    if (typeof ResizeObserver === "function") {
      new ResizeObserver(() => requestDraw()).observe($("map"));
    } else {
      window.addEventListener("resize", requestDraw);
    }
    try {
      const res = await fetch("api/v1/me", { cache: "no-store", credentials: "same-origin" });
      if (res.ok) {
        me = await res.json();
        showApp();
      } else {
        showLogin("");
      }
    } catch (err) {
      showLogin("Cannot reach the server.");
    }
  }

  if (document.readyState === "loading") {
    document.addEventListener("DOMContentLoaded", start);
  } else {
    start();
  }
})();
