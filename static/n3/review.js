// The review queue: shows one claimed response at a time and scores it from the keyboard.
// Talks to feedback/views.py (POST JSON with the CSRF token); no page reloads between items.
(function () {
  "use strict";

  document.addEventListener("DOMContentLoaded", function () {
    const root = document.getElementById("n3-review");
    if (!root) return;
    const $ = (id) => document.getElementById(id);
    const csrfToken = root.querySelector("[name=csrfmiddlewaretoken]").value;
    const agent = root.dataset.agent || "";
    const bandButtons = Array.from(root.querySelectorAll(".n3-band"));
    const bandValues = {};
    bandButtons.forEach((b) => { bandValues[b.dataset.key] = b.dataset.value; });
    const scoreInput = $("n3-score");
    const notesInput = $("n3-notes");

    let current = null; // the item on screen
    let busy = false; // a request is in flight: ignore keys until it answers
    let done = 0;

    function itemUrl(template, id) {
      return template.replace("/0/", "/" + id + "/");
    }

    async function post(url, body) {
      let response;
      try {
        response = await fetch(url, {
          method: "POST",
          credentials: "same-origin",
          headers: { "Content-Type": "application/json", "Accept": "application/json", "X-CSRFToken": csrfToken },
          body: JSON.stringify(body),
        });
      } catch (err) {
        throw new Error("Network error: the server could not be reached. Try again.");
      }
      let data = null;
      if ((response.headers.get("Content-Type") || "").includes("application/json")) {
        data = await response.json();
      }
      if (!response.ok || data === null) {
        const error = new Error(
          (data && data.detail) ||
          (response.status === 403 ? "You do not have permission to score feedback." :
            "Your session may have expired: reload the page and log in again.")
        );
        error.status = response.status;
        throw error;
      }
      return data;
    }

    function setStatus(text, kind) {
      const status = $("n3-status");
      status.textContent = text;
      status.className = "n3-status" + (kind ? " n3-status-" + kind : "");
    }

    function highlightBand() {
      const value = scoreInput.value.trim();
      bandButtons.forEach((b) => b.classList.toggle("n3-selected", b.dataset.value === value));
    }

    function metaLine(item) {
      const parts = [
        "#" + item.id,
        item.agent,
        "received " + new Date(item.createdAt).toLocaleString(),
      ];
      if (item.runId) parts.push("run " + item.runId);
      if (item.policyVersion) parts.push("policy " + item.policyVersion);
      parts.push("via " + item.source);
      const meta = $("n3-meta");
      meta.textContent = parts.join(" · ") + " · ";
      const link = document.createElement("a");
      link.href = item.adminUrl;
      link.textContent = "open in admin";
      meta.appendChild(link);
    }

    function show(payload) {
      $("n3-loading").hidden = true;
      $("n3-remaining").textContent = payload.remaining;
      current = payload.item;
      if (!current) {
        $("n3-item").hidden = true;
        $("n3-empty").hidden = false;
        $("n3-empty-skipped").hidden = !payload.skipped;
        $("n3-skipped-count").textContent = payload.skipped;
        return;
      }
      $("n3-empty").hidden = true;
      $("n3-item").hidden = false;
      metaLine(current);
      // textContent, never innerHTML: prompts and responses are untrusted text.
      $("n3-prompt").textContent = current.prompt;
      $("n3-response").textContent = current.response;
      scoreInput.value = "";
      notesInput.value = current.notes || "";
      highlightBand();
      if (document.activeElement && document.activeElement !== document.body) document.activeElement.blur();
      window.scrollTo(0, 0);
    }

    async function run(action) {
      if (busy) return;
      busy = true;
      try {
        await action();
      } catch (err) {
        if (!current) {
          $("n3-loading").hidden = false;
          $("n3-loading").textContent = err.message;
          return;
        }
        setStatus(err.message, "error");
        // Someone else scored it or holds it: move on to the next item.
        if (err.status === 409 || err.status === 404) {
          try {
            show(await post(root.dataset.nextUrl, { agent: agent }));
          } catch (again) {
            setStatus(again.message, "error");
          }
        }
      } finally {
        busy = false;
      }
    }

    function parseScore(text) {
      if (!/^\s*(\d+(\.\d*)?|\.\d+)\s*$/.test(text)) return null;
      const value = parseFloat(text);
      return value >= 0 && value <= 1 ? value : null;
    }

    function save() {
      if (!current) return;
      const score = parseScore(scoreInput.value);
      if (score === null) {
        setStatus(scoreInput.value.trim() ? "A score is a number between 0 and 1." : "Pick a score first: press 1–5 or type a value.", "error");
        scoreInput.focus();
        return;
      }
      run(async () => {
        const item = current;
        setStatus("Saving…");
        const payload = await post(itemUrl(root.dataset.scoreUrl, item.id), {
          score: score, notes: notesInput.value, agent: agent,
        });
        done += 1;
        $("n3-done").textContent = done;
        show(payload);
        setStatus("Saved #" + payload.saved.id + " = " + payload.saved.score + ".", "ok");
      });
    }

    function skip() {
      if (!current) return;
      run(async () => {
        const item = current;
        show(await post(itemUrl(root.dataset.skipUrl, item.id), { agent: agent }));
        setStatus("Skipped #" + item.id + ".");
      });
    }

    function next(includeSkipped) {
      run(async () => show(await post(root.dataset.nextUrl, { agent: agent, includeSkipped: !!includeSkipped })));
    }

    function pickBand(key) {
      scoreInput.value = bandValues[key];
      highlightBand();
      setStatus("");
    }

    bandButtons.forEach((b) => b.addEventListener("click", () => pickBand(b.dataset.key)));
    scoreInput.addEventListener("input", highlightBand);
    $("n3-score-form").addEventListener("submit", (e) => { e.preventDefault(); save(); });
    $("n3-skip").addEventListener("click", skip);
    $("n3-refresh").addEventListener("click", () => next(false));
    $("n3-review-skipped").addEventListener("click", () => next(true));

    document.addEventListener("keydown", (e) => {
      if (e.altKey || e.isComposing) return;
      const target = e.target;
      const typing = target.matches && target.matches("input, textarea, select");
      if ((e.ctrlKey || e.metaKey) && e.key === "Enter") {
        e.preventDefault();
        save();
        return;
      }
      if (e.ctrlKey || e.metaKey) return;
      if (typing) {
        if (e.key === "Escape") target.blur();
        if (target === scoreInput && e.key === "Enter") { e.preventDefault(); save(); }
        return;
      }
      if (!current) return;
      if (Object.prototype.hasOwnProperty.call(bandValues, e.key)) {
        e.preventDefault();
        pickBand(e.key);
      } else if (e.key === "0" || e.key === ".") {
        e.preventDefault();
        scoreInput.value = e.key === "." ? "0." : "0";
        scoreInput.focus();
        highlightBand();
      } else if (e.key === "s" || e.key === "Enter") {
        e.preventDefault();
        save();
      } else if (e.key === "k") {
        e.preventDefault();
        skip();
      } else if (e.key === "n") {
        e.preventDefault();
        notesInput.focus();
      }
    });

    next(false);
  });
})();
