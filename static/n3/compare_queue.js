// Blind comparison queue: keys for the vote buttons (1/← left, 2/→ right, 0/t tie, k skip) and going back (p previous
// pair, u undo the latest vote, Esc back to the queue); one submit per page;
// while the worker is still generating the responses, the page looks again every few seconds.
(function () {
  "use strict";

  const KEYS = {
    "1": "n3-vote-left", "ArrowLeft": "n3-vote-left",
    "2": "n3-vote-right", "ArrowRight": "n3-vote-right",
    "0": "n3-vote-tie", "t": "n3-vote-tie",
    "k": "n3-skip",
    "p": "n3-previous", "u": "n3-undo", "Escape": "n3-back",
  };

  document.addEventListener("DOMContentLoaded", function () {
    const queue = document.getElementById("n3-compare-queue");
    if (!queue) return;
    if (queue.dataset.status === "generating") {
      setTimeout(function () { window.location.reload(); }, 3000);
      return;
    }
    let sent = false;
    document.querySelectorAll("#n3-vote-form, #n3-skip-form, #n3-undo-form").forEach(function (form) {
      form.addEventListener("submit", function (event) {
        if (sent) { event.preventDefault(); return; }
        sent = true;
        // After the browser has read the pressed button's value: no second vote on this pair.
        setTimeout(function () {
          document.querySelectorAll("#n3-vote-form button, #n3-skip-form button, #n3-undo-form button").forEach(function (b) {
            b.disabled = true;
          });
        }, 0);
      });
    });
    document.addEventListener("keydown", function (event) {
      if (event.ctrlKey || event.metaKey || event.altKey || event.repeat) return;
      const target = event.target;
      if (target && (target.isContentEditable || /^(INPUT|TEXTAREA|SELECT)$/.test(target.tagName))) return;
      const id = KEYS[event.key];
      const button = id && document.getElementById(id);
      if (!button || button.disabled) return;
      event.preventDefault();
      button.click();
    });
  });
})();
