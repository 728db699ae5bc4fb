// meshctl dashboard: refresh the live part of each page, and stream live calls.
// No framework: the server renders every fragment; this file only swaps them in.
"use strict";

(function () {
  const seconds = Number(document.body.dataset.refreshSeconds || "5");

  // --- numbers that refresh on their own -------------------------------------
  const live = document.getElementById("live");
  const updated = document.getElementById("updated");
  let inFlight = false;

  async function refresh() {
    if (!live || inFlight || document.hidden) return;
    inFlight = true;
    try {
      const response = await fetch(live.dataset.fragment, { cache: "no-store", headers: { Accept: "text/html" } });
      const html = await response.text();
      live.innerHTML = html;
      if (updated) updated.textContent = "updated " + new Date().toLocaleTimeString();
    } catch (err) {
      if (updated) updated.textContent = "refresh failed: " + err.message;
    } finally {
      inFlight = false;
    }
  }
  if (live) {
    setInterval(refresh, seconds * 1000);
    if (updated) updated.textContent = "updated " + new Date().toLocaleTimeString();
  }

  // --- live calls (tap over Server-Sent Events) ------------------------------
  const calls = document.getElementById("live-calls");
  if (!calls) return;
  const body = calls.querySelector("tbody");
  const state = document.getElementById("tap-state");
  const maxRows = Number(calls.dataset.maxRows || "50");
  const source = new EventSource(calls.dataset.tap);

  function cell(text, className) {
    const td = document.createElement("td");
    td.textContent = text;
    if (className) td.className = className;
    return td;
  }
  function latency(ms) {
    if (ms === null || ms === undefined) return "-";
    return ms >= 10 ? ms.toFixed(0) + " ms" : ms.toFixed(1) + " ms";
  }

  source.addEventListener("open", () => { state.textContent = "streaming"; state.className = "tap-state ok"; });
  source.addEventListener("error", () => { state.textContent = "reconnecting…"; state.className = "tap-state warn"; });
  source.addEventListener("tap-error", (event) => {
    // A refusal or a mesh without tap: retrying cannot help, so stop and say why.
    source.close();
    state.textContent = JSON.parse(event.data).message;
    state.className = "tap-state bad";
  });
  source.addEventListener("call", (event) => {
    const c = JSON.parse(event.data);
    const tr = document.createElement("tr");
    tr.className = "call " + (c.error || (c.status && c.status >= 500) ? "failed" : "ok");
    tr.dataset.method = c.method;
    tr.dataset.path = c.path;
    tr.dataset.status = c.status === null ? "" : String(c.status);
    tr.append(
      cell(new Date(c.at * 1000).toLocaleTimeString()),
      cell(c.direction),
      cell(c.source, "mono"),
      cell(c.destination, "mono"),
      cell(c.tls ? "mTLS" : "-"),
      cell(c.method),
      cell(c.path, "mono"),
      cell(c.error ? c.error : c.status === null ? "-" : String(c.status), "num"),
      cell(latency(c.latency_ms), "num"),
    );
    body.prepend(tr);
    while (body.rows.length > maxRows) body.deleteRow(body.rows.length - 1);
  });
  window.addEventListener("pagehide", () => source.close());
})();
