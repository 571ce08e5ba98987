// Policy version page: while a run is queued or running, poll its progress JSON and update the
// status box, the log tail and (when new steps arrived) the server-rendered charts.
(function () {
  "use strict";

  const POLL_MS = 2000;

  document.addEventListener("DOMContentLoaded", function () {
    const root = document.getElementById("n3-version");
    if (!root) return;
    const $ = (id) => document.getElementById(id);
    const log = $("n3-log");
    log.scrollTop = log.scrollHeight; // the latest lines are the interesting ones
    if (root.dataset.active !== "1") return;
    let historyLength = parseInt(root.dataset.historyLength, 10) || 0;
    const fixed = (value) => (typeof value === "number" ? value.toFixed(3) : "—");
    // The summary table's format (training/admin/views.py _format: 4 significant digits).
    const short = (value) => (typeof value === "number" ? String(Number(value.toPrecision(4))) : "—");

    async function refreshCharts() {
      const response = await fetch(root.dataset.chartsUrl, { credentials: "same-origin" });
      if (response.ok) $("n3-charts").innerHTML = await response.text();
    }

    async function poll() {
      let data;
      try {
        const response = await fetch(root.dataset.progressUrl, {
          credentials: "same-origin", headers: { "Accept": "application/json" },
        });
        if (!response.ok) throw new Error(String(response.status));
        data = await response.json();
      } catch (err) {
        setTimeout(poll, POLL_MS * 3); // the server is busy or restarting: try again a little later
        return;
      }
      if (!data.active) {
        window.location.reload(); // finished, failed or cancelled: show the final page
        return;
      }
      // The same words as the server's first render (training/jobs/status.py's progress()).
      $("n3-status-badge").textContent = data.statusLabel;
      $("n3-status-badge").className = "n3-status-badge n3-status-" + data.status;
      $("n3-step").textContent = data.done;
      $("n3-max-steps").textContent = data.total;
      $("n3-unit").textContent = data.unit;
      $("n3-phase").textContent = data.phaseDetail ? "· " + data.phaseDetail : "";
      $("n3-progress").title = data.done + " of " + data.total + " " + data.unit;
      $("n3-progress-bar").style.width = data.percent + "%";
      $("n3-elapsed").textContent = data.elapsed || "—";
      $("n3-eta").textContent = data.eta || "—";
      $("n3-eta-label").textContent = data.etaLabel;
      $("n3-reward").textContent = fixed(data.rewardMean);
      $("n3-kl").textContent = fixed(data.kl);
      $("n3-loss").textContent = fixed(data.loss);
      $("n3-cancel-note").hidden = !data.cancelRequested;
      $("n3-waiting").hidden = !data.waitingFor;
      $("n3-waiting-for").textContent = data.waitingFor || "";
      // The summary table's live rows say what the status box says (it was rendered when the page loaded).
      const summary = {
        status: data.statusLabel, "reward-mean": short(data.rewardMean), kl: short(data.kl), loss: short(data.loss),
        steps: data.step + " / " + data.maxSteps,
      };
      for (const [row, value] of Object.entries(summary)) {
        const cell = document.querySelector('tr[data-summary="' + row + '"] td');
        if (cell) cell.textContent = value;
      }
      if (data.logTail !== null) {
        const atBottom = log.scrollTop + log.clientHeight >= log.scrollHeight - 4;
        log.textContent = data.logTail;
        if (atBottom) log.scrollTop = log.scrollHeight;
      }
      if (data.historyLength !== historyLength) {
        historyLength = data.historyLength;
        await refreshCharts();
      }
      setTimeout(poll, POLL_MS);
    }

    setTimeout(poll, POLL_MS);
  });
})();
