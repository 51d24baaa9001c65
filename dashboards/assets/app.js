// Lamplighter dashboard: the first page.
//
// The header and the zone table follow the server's event stream (api/v1/stream: `summary`
// and `zones` events, every second). The map and the level histogram re-read api/v1/lamps
// every few seconds. Every value is written with textContent, never as markup.
"use strict";

(function () {
  const LAMPS_REFRESH_MS = 5000;
  const LAMPS_TIMEOUT_MS = 4000;
  const STALE_AFTER_MS = 5000;
  const REOPEN_AFTER_MS = 3000;

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
      setText("clock", new Date(s.now_ms).toLocaleString());
    }
  }

  // ---- zones ------------------------------------------------------------------------------

  let zones = [];
  let sortKey = "zone";
  let sortDir = 1;

  function zoneLabel(z) {
    return z.tenant + " · " + z.zone;
  }

  function compareZones(a, b) {
    let d;
    if (sortKey === "zone") {
      d = a.tenant < b.tenant ? -1 : a.tenant > b.tenant ? 1 : a.zone - b.zone;
    } else {
      d = (a[sortKey] || 0) - (b[sortKey] || 0);
      if (d === 0) d = a.tenant < b.tenant ? -1 : a.tenant > b.tenant ? 1 : a.zone - b.zone;
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

  function renderZones() {
    const body = $("zones-body");
    const rows = zones.slice().sort(compareZones).map((z) => {
      const tr = document.createElement("tr");
      const th = document.createElement("th");
      th.scope = "row";
      th.textContent = zoneLabel(z);
      tr.append(
        th,
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
      td.colSpan = 8;
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
          sortDir = key === "zone" ? 1 : -1;
        }
        heads.forEach((h) => h.removeAttribute("aria-sort"));
        th.setAttribute("aria-sort", sortDir === 1 ? "ascending" : "descending");
        renderZones();
      });
    });
  }

  // ---- lamps: map and histogram -----------------------------------------------------------

  let lamps = [];

  // Lit lamps run from a dim amber (1 %) to a bright warm white (100 %).
  const DIM = [120, 70, 20];
  const BRIGHT = [255, 236, 140];
  const OFF = "#4a515c";
  const OFFLINE = "#e0605a";

  function levelColour(pct) {
    const t = Math.max(0, Math.min(1, (pct - 1) / 99));
    const c = DIM.map((lo, i) => Math.round(lo + (BRIGHT[i] - lo) * t));
    return "rgb(" + c.join(",") + ")";
  }

  function drawMap() {
    const canvas = $("map");
    const ctx = canvas.getContext("2d");
    if (!ctx) return;
    const dpr = window.devicePixelRatio || 1;
    const cssW = canvas.clientWidth || 640;
    const cssH = canvas.clientHeight || 400;
    if (canvas.width !== Math.round(cssW * dpr) || canvas.height !== Math.round(cssH * dpr)) {
      canvas.width = Math.round(cssW * dpr);
      canvas.height = Math.round(cssH * dpr);
    }
    ctx.setTransform(dpr, 0, 0, dpr, 0, 0);
    ctx.fillStyle = "#0d1520";
    ctx.fillRect(0, 0, cssW, cssH);

    const placed = lamps.filter((l) => isFinite(l.lat) && isFinite(l.lon));
    if (placed.length === 0) return;

    let minLat = Infinity, maxLat = -Infinity, minLon = Infinity, maxLon = -Infinity;
    for (const l of placed) {
      minLat = Math.min(minLat, l.lat);
      maxLat = Math.max(maxLat, l.lat);
      minLon = Math.min(minLon, l.lon);
      maxLon = Math.max(maxLon, l.lon);
    }
    // Equirectangular: a degree of longitude is cos(latitude) of a degree of latitude.
    const k = Math.cos(((minLat + maxLat) / 2) * Math.PI / 180);
    const spanX = Math.max((maxLon - minLon) * k, 1e-9);
    const spanY = Math.max(maxLat - minLat, 1e-9);
    const pad = 12;
    const scale = Math.min((cssW - 2 * pad) / spanX, (cssH - 2 * pad) / spanY);
    const offX = (cssW - spanX * scale) / 2;
    const offY = (cssH - spanY * scale) / 2;
    const r = Math.max(1.5, Math.min(5, 300 / Math.sqrt(placed.length)));

    // Offline lamps first, so lit ones are drawn on top where they overlap.
    const order = placed.slice().sort((a, b) => (a.online === b.online ? 0 : a.online ? 1 : -1));
    for (const l of order) {
      const x = offX + (l.lon - minLon) * k * scale;
      const y = cssH - (offY + (l.lat - minLat) * scale);
      ctx.beginPath();
      ctx.arc(x, y, r, 0, 2 * Math.PI);
      if (!l.online || l.level_pct === null || l.level_pct === undefined) {
        ctx.strokeStyle = OFFLINE;
        ctx.lineWidth = 1;
        ctx.stroke();
      } else if (l.level_pct === 0) {
        ctx.fillStyle = OFF;
        ctx.fill();
      } else {
        ctx.fillStyle = levelColour(l.level_pct);
        ctx.fill();
      }
    }
  }

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
    if (lampsInFlight || document.hidden) return;
    lampsInFlight = true;
    const abort = new AbortController();
    const timer = setTimeout(() => abort.abort(), LAMPS_TIMEOUT_MS);
    try {
      const res = await fetch("api/v1/lamps", { signal: abort.signal, cache: "no-store" });
      if (!res.ok) throw new Error("HTTP " + res.status);
      lamps = await res.json();
      drawMap();
      renderHistogram();
      setText("lamps-status", "Updated " + new Date().toLocaleTimeString() + ".");
    } catch (err) {
      setText("lamps-status", "Lamp list unavailable; retrying.");
    } finally {
      clearTimeout(timer);
      lampsInFlight = false;
    }
  }

  // ---- the event stream -------------------------------------------------------------------

  let source = null;

  function parse(ev) {
    try {
      return JSON.parse(ev.data);
    } catch (err) {
      return null;
    }
  }

  function connect() {
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
      // CONNECTING: the browser retries by itself. CLOSED: it gave up (an HTTP error, say);
      // open a new stream after a pause.
      if (source.readyState === EventSource.CLOSED) {
        source.close();
        setTimeout(connect, REOPEN_AFTER_MS);
      }
    };
  }

  function watchStaleness() {
    setInterval(() => {
      if (source && source.readyState === EventSource.OPEN && lastSummaryAt > 0 &&
          Date.now() - lastSummaryAt > STALE_AFTER_MS) {
        setBadge("stale", "no data");
      }
    }, 1000);
  }

  // ---- start ------------------------------------------------------------------------------

  function start() {
    setupSorting();
    renderHistogram();
    drawMap();
    connect();
    watchStaleness();
    refreshLamps();
    setInterval(refreshLamps, LAMPS_REFRESH_MS);
    document.addEventListener("visibilitychange", () => {
      if (!document.hidden) refreshLamps();
    });
    if (typeof ResizeObserver === "function") {
      new ResizeObserver(() => drawMap()).observe($("map"));
    } else {
      window.addEventListener("resize", drawMap);
    }
  }

  if (document.readyState === "loading") {
    document.addEventListener("DOMContentLoaded", start);
  } else {
    start();
  }
})();
