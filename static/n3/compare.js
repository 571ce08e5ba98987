// Compare page: while the worker generates the versions' samples, poll their status and show the page again
// (with the samples) once none is pending.
(function () {
  "use strict";

  const POLL_MS = 1500;

  document.addEventListener("DOMContentLoaded", function () {
    const panel = document.getElementById("n3-samples");
    if (!panel || panel.dataset.pending !== "1") return;

    async function poll() {
      try {
        const response = await fetch(panel.dataset.statusUrl, {
          credentials: "same-origin", headers: { "Accept": "application/json" },
        });
        if (!response.ok) throw new Error(String(response.status));
        const data = await response.json();
        if (!data.pending) {
          window.location.reload();
          return;
        }
      } catch (err) {
        setTimeout(poll, POLL_MS * 3); // the server is busy or restarting: try again a little later
        return;
      }
      setTimeout(poll, POLL_MS);
    }

    setTimeout(poll, POLL_MS);
  });
})();
