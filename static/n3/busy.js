// Forms that start server work (<form data-n3-busy>): once submitted, their buttons are disabled and the one
// pressed says it is working, so that a slow answer is visible and a second click cannot submit the form again.
(function () {
  "use strict";

  document.addEventListener("submit", function (event) {
    const form = event.target;
    if (!(form instanceof HTMLFormElement) || !form.hasAttribute("data-n3-busy")) return;
    if (form.dataset.n3Submitted === "1") {
      event.preventDefault(); // already on its way
      return;
    }
    form.dataset.n3Submitted = "1";
    form.setAttribute("aria-busy", "true");
    const pressed = event.submitter;
    // After the browser has built the submission: a button disabled or relabelled before that would not be sent
    // as pressed (the view tells "Preview" from "Start training" by its name).
    setTimeout(function () {
      if (pressed) pressed.value = pressed.dataset.busyLabel || "Working…";
      form.querySelectorAll("input[type=submit], button[type=submit], button:not([type])").forEach(function (b) {
        b.disabled = true;
      });
    }, 0);
  });

  // Back/forward cache: a page shown again must not keep its buttons disabled.
  window.addEventListener("pageshow", function (event) {
    if (!event.persisted) return;
    document.querySelectorAll("form[data-n3-busy]").forEach(function (form) {
      delete form.dataset.n3Submitted;
      form.removeAttribute("aria-busy");
      form.querySelectorAll("[disabled]").forEach(function (b) { b.disabled = false; });
    });
  });
})();
