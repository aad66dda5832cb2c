/* flyball console: charts (uPlot), live refresh and filter suggestions. No inline script
   anywhere (the CSP forbids it); everything here runs from this file. */
(function () {
  "use strict";
  var REFRESH_MS = 5000;
  var COLORS = ["#1f5fbf", "#b42318", "#067647", "#b54708", "#7a4fbf", "#0f8a7a", "#c11574", "#4e5ba6", "#667085"];
  var charts = [];

  function fmtNum(v, unit) {
    if (v == null) return "–";
    var a = Math.abs(v);
    var s = a >= 1e6 ? (v / 1e6).toFixed(2) + "M" : a >= 1e4 ? (v / 1e3).toFixed(1) + "k" :
      a >= 100 ? v.toFixed(0) : a >= 1 ? v.toFixed(2) : v.toPrecision(3);
    if (unit && unit.indexOf("USD") === 0) return "$" + s;
    if (unit === "%") return s + "%";
    return s;
  }

  function markerPlugin(markers) {
    return { hooks: { draw: [function (u) {
      var ctx = u.ctx, top = u.bbox.top, h = u.bbox.height;
      (markers || []).forEach(function (m) {
        var x = u.valToPos(m.t, "x", true);
        if (x < u.bbox.left || x > u.bbox.left + u.bbox.width) return;
        ctx.save();
        ctx.strokeStyle = m.type === "alert" ? "rgba(180,35,24,.85)" : "rgba(31,95,191,.85)";
        ctx.setLineDash(m.type === "alert" ? [] : [5, 4]);
        ctx.lineWidth = 2;
        ctx.beginPath(); ctx.moveTo(x, top); ctx.lineTo(x, top + h); ctx.stroke();
        ctx.restore();
      });
    }] } };
  }

  function bandPlugin(win) {
    return { hooks: { drawClear: [function (u) {
      if (!win) return;
      var x0 = u.valToPos(win[0], "x", true), x1 = u.valToPos(win[1], "x", true);
      u.ctx.save(); u.ctx.fillStyle = "rgba(180,35,24,.10)";
      u.ctx.fillRect(x0, u.bbox.top, Math.max(x1 - x0, 2), u.bbox.height); u.ctx.restore();
    }] } };
  }

  function makeChart(el, axis, series, unit, opts) {
    opts = opts || {};
    var names = Object.keys(series);
    var data = [axis].concat(names.map(function (n) { return series[n]; }));
    var cfg = {
      width: Math.max(el.clientWidth, 280), height: opts.height || 230,
      cursor: { drag: { x: false, y: false } },
      legend: { live: true },
      scales: { x: { time: true }, y: { range: function (u, lo, hi) { return [Math.min(0, lo || 0), (hi || 1) * 1.1]; } } },
      axes: [{ label: "time (your time zone)", labelSize: 18, size: 40 },
             { label: unit, labelSize: 18, size: 62, values: function (u, vals) { return vals.map(function (v) { return fmtNum(v, unit); }); } }],
      series: [{ label: "time" }].concat(names.map(function (n, i) {
        var c = (opts.colors && opts.colors[n]) || COLORS[i % COLORS.length];
        var s = { label: n, stroke: c, width: 2, spanGaps: false, points: { show: false }, value: function (u, v) { return fmtNum(v, unit); } };
        if (opts.fill) s.fill = c + "cc";
        if (opts.dash && opts.dash[n]) s.dash = opts.dash[n];
        return s;
      })),
      plugins: opts.plugins || []
    };
    el.textContent = "";
    var u = new uPlot(cfg, data, el);
    charts.push({ el: el, u: u });
    return u;
  }

  function getJSON(url) {
    return fetch(url, { credentials: "same-origin", headers: { Accept: "application/json" } }).then(function (r) {
      if (r.status === 401) { location.href = "/ui/login"; throw new Error("logged out"); }
      return r.json().then(function (body) { if (!r.ok) throw new Error(body.detail || r.status); return body; });
    });
  }

  function setLive(ok) {
    var s = document.getElementById("live-status");
    if (!s) return;
    s.textContent = ok ? "live" : "reconnecting";
    s.className = ok ? "live" : "live stale";
  }

  function renderMarkers(markers) {
    var list = document.getElementById("marker-list");
    if (!list) return;
    list.textContent = "";
    if (!markers.length) {
      var li = document.createElement("li"); li.className = "hint";
      li.textContent = "No alerts or directive changes in this range.";
      list.appendChild(li); return;
    }
    markers.forEach(function (m) {
      var li = document.createElement("li");
      var when = new Date(m.t * 1000).toLocaleString();
      if (m.type === "alert") {
        var a = document.createElement("a"); a.href = "/ui/alerts/" + encodeURIComponent(m.id);
        a.textContent = "alert " + m.label; li.appendChild(a);
      } else { li.textContent = m.label; }
      li.appendChild(document.createTextNode(" · " + when));
      list.appendChild(li);
    });
  }

  function healthCharts(root) {
    var url = root.getAttribute("data-feed");
    return getJSON(url).then(function (d) {
      charts = [];
      var empty = d.totals.llm_calls + d.totals.tool_calls + d.totals.retrievals === 0;
      var e = document.getElementById("health-empty"); if (e) e.hidden = !empty;
      root.querySelectorAll("[data-chart]").forEach(function (el) {
        var c = d.charts[el.getAttribute("data-chart")];
        var series = c.series;
        if (!Object.keys(series).length) series = { none: d.axis.map(function () { return null; }) };
        makeChart(el, d.axis, series, c.unit, { plugins: [markerPlugin(d.markers)] });
      });
      renderMarkers(d.markers);
    });
  }

  function spendChart(el) {
    return getJSON(el.getAttribute("data-spend-feed")).then(function (d) {
      charts = charts.filter(function (c) { return c.el !== el; });
      var names = Object.keys(d.series);
      if (!names.length) {
        el.textContent = "No spend in this range. Widen the time range or clear a filter.";
        el.className = "plot empty"; return;
      }
      // stacked: each band is the running sum; drawn top first so lower bands paint over it
      var acc = d.axis.map(function () { return 0; }), stacked = {};
      names.forEach(function (n) { acc = acc.map(function (v, i) { return v + (d.series[n][i] || 0); }); stacked[n] = acc.slice(); });
      var order = names.slice().reverse(), ordered = {}, colors = {};
      order.forEach(function (n) { ordered[n + " (stacked)"] = stacked[n]; colors[n + " (stacked)"] = COLORS[names.indexOf(n) % COLORS.length]; });
      makeChart(el, d.axis, ordered, "USD", { fill: true, colors: colors, height: 260, plugins: [markerPlugin(d.markers)] });
    });
  }

  function requestCosts(el) {
    return getJSON(el.getAttribute("data-request-costs-feed")).then(function (d) {
      function usd(v) { return v == null ? "–" : "$" + v; }
      document.getElementById("request-p95").textContent = usd(d.request_p95_usd);
      document.getElementById("chain-p95").textContent = usd(d.chain_p95_usd);
      var note = document.getElementById("request-p95-note");
      if (note) note.textContent = "p95 per request and per request chain (trace): exact, over the " + d.requests +
        " requests and " + d.chains + " chains with an LLM call in the UTC days " + d.first_day + " to " + d.last_day +
        " (the tenant filter applies, the others do not; a request over midnight counts on each day).";
    });
  }

  function alertChart(el) {
    return getJSON(el.getAttribute("data-alert-feed")).then(function (d) {
      charts = charts.filter(function (c) { return c.el !== el; });
      var name = Object.keys(d.series)[0];
      var series = {}; series[name + " per minute"] = d.series[name];
      var scale = d.per_window && d.per_window < 60 && d.unit.indexOf("/min") > 0 ? 60 / d.per_window : 1;
      if (d.baseline != null) series["baseline (per minute)"] = d.axis.map(function () { return d.baseline * scale; });
      if (d.threshold != null) series["threshold (per minute)"] = d.axis.map(function () { return d.threshold * scale; });
      makeChart(el, d.axis, series, d.unit, { height: 260, colors: { "baseline (per minute)": "#667085", "threshold (per minute)": "#b42318" },
        dash: { "baseline (per minute)": [4, 4], "threshold (per minute)": [8, 4] }, plugins: [bandPlugin(d.window)] });
    });
  }

  function drawAll() {
    var jobs = [];
    var h = document.querySelector("[data-feed]"); if (h) jobs.push(healthCharts(h));
    var s = document.querySelector("[data-spend-feed]"); if (s) jobs.push(spendChart(s));
    var a = document.querySelector("[data-alert-feed]"); if (a) jobs.push(alertChart(a));
    var r = document.querySelector("[data-request-costs-feed]"); if (r) jobs.push(requestCosts(r));
    return Promise.all(jobs);
  }

  function refreshRegions() {
    var regions = document.querySelectorAll("[data-live]");
    if (!regions.length) return Promise.resolve();
    var active = document.activeElement;
    if (active && active.closest && active.closest("[data-live] form")) return Promise.resolve();
    return fetch(location.href, { credentials: "same-origin", headers: { Accept: "text/html" } }).then(function (r) {
      if (r.redirected && r.url.indexOf("/ui/login") >= 0) { location.href = r.url; return; }
      if (!r.ok) throw new Error(r.status);
      return r.text().then(function (html) {
        var doc = new DOMParser().parseFromString(html, "text/html");
        regions.forEach(function (el) {
          var fresh = doc.getElementById(el.id);
          if (fresh && fresh.innerHTML !== el.innerHTML) el.innerHTML = fresh.innerHTML;
        });
      });
    });
  }

  function tick() {
    if (document.hidden) return;
    Promise.all([refreshRegions(), drawAll()]).then(function () { setLive(true); }, function () { setLive(false); });
  }

  // Live updates: server-sent events say which part changed (alerts, directives, chart data;
  // a tick every 15 s refreshes the time-left counters); when the stream cannot be opened or
  // keeps failing, the page polls every 5 s instead.
  var polling = null, failures = 0;
  function poll() {
    if (polling) return;
    polling = setInterval(tick, REFRESH_MS);
    document.body.setAttribute("data-live-mode", "polling");
  }
  function refresh(what) {
    if (document.hidden) return;
    var jobs = [refreshRegions()];
    if (what !== "tick") jobs.push(drawAll());
    Promise.all(jobs).then(function () { setLive(true); }, function () { setLive(false); });
  }
  function stream() {
    if (!window.EventSource) { poll(); return; }
    var es = new EventSource("/ui/live");
    es.addEventListener("hello", function () {
      failures = 0; setLive(true);
      document.body.setAttribute("data-live-mode", "stream");
    });
    ["alerts", "directives", "data", "tick"].forEach(function (part) {
      es.addEventListener(part, function () { refresh(part); });
    });
    es.onerror = function () {
      failures += 1; setLive(false);
      if (es.readyState === EventSource.CLOSED || failures >= 3) { es.close(); poll(); }
    };
  }

  function suggest(input) {
    var list = document.getElementById("dl-" + input.getAttribute("data-suggest"));
    if (!list) return;
    getJSON("/ui/data/suggest?column=" + encodeURIComponent(input.getAttribute("data-suggest")) +
            "&prefix=" + encodeURIComponent(input.value)).then(function (values) {
      list.textContent = "";
      values.forEach(function (v) { var o = document.createElement("option"); o.value = v; list.appendChild(o); });
    }, function () {});
  }

  document.addEventListener("DOMContentLoaded", function () {
    drawAll().then(function () { setLive(true); }, function () { setLive(false); });
    stream();
    document.querySelectorAll("[data-suggest]").forEach(function (input) {
      input.addEventListener("focus", function () { suggest(input); });
      input.addEventListener("input", function () { suggest(input); });
    });
    window.addEventListener("resize", function () {
      charts.forEach(function (c) { c.u.setSize({ width: Math.max(c.el.clientWidth, 280), height: c.u.height }); });
    });
  });
})();
