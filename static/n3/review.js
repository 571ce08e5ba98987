// The review queue: shows one claimed response at a time and scores it from the keyboard.
// Talks to feedback/views.py (POST JSON with the CSRF token); no page reloads between items.
// Two modes: "queue" (the claimed item: save creates this reviewer's review) and "edit" (going back: an item this
// reviewer scored, with their score and notes; save changes that review). Undo removes the review saved last.
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
    let editing = false; // the item on screen is one this reviewer scored before (going back)
    let lastSaved = null; // {reviewId, id, score, notes}: the queue save that undo removes
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
      // The item's status line, or the empty card's when there is no item.
      const status = current ? $("n3-status") : $("n3-empty-status");
      (current ? $("n3-empty-status") : $("n3-status")).textContent = "";
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

    function setEditing(on) {
      editing = on;
      $("n3-editing").hidden = !on;
      $("n3-skip").hidden = on;
      $("n3-back").hidden = !on;
      $("n3-save").firstChild.textContent = on ? "Save change " : "Save & next ";
    }

    function showUndo() {
      $("n3-undo").disabled = !lastSaved;
      $("n3-undo-empty").hidden = !lastSaved;
    }

    function overlapLine(item) {
      const line = $("n3-overlap");
      if (editing) {
        line.textContent = item.overlap > 1
          ? "Your review. The item has " + item.reviews + " of " + item.overlap + " reviews; " +
            (item.score === null ? "it awaits more before it gets a score." : "its score (their mean) is " + item.score + ".")
          : "";
      } else {
        line.textContent = item.overlap > 1
          ? "Review " + (item.reviews + 1) + " of " + item.overlap + ": each item is scored by " + item.overlap +
            " reviewers independently; its score is their mean."
          : "";
      }
      line.hidden = !line.textContent;
      // The same prompt and response stored again (a served answer, each time served): shown once with the count.
      const identical = $("n3-identical");
      identical.textContent = !editing && item.identical
        ? "This prompt and response are in the queue " + (item.identical + 1) + " times (the same answer, stored " +
          "each time it was served): your score applies to all " + (item.identical + 1) + "."
        : "";
      identical.hidden = !identical.textContent;
    }

    function showItem(item) {
      current = item;
      $("n3-loading").hidden = true;
      $("n3-empty").hidden = true;
      $("n3-item").hidden = false;
      metaLine(current);
      overlapLine(current);
      // Prompts and responses are untrusted text: the only HTML set here is the server's rendering of them
      // (feedback/rendering.py: Markdown with raw HTML escaped, no javascript: links, no images).
      $("n3-prompt").innerHTML = current.promptHtml;
      $("n3-response").innerHTML = current.responseHtml;
      scoreInput.value = editing ? String(current.review.score) : "";
      notesInput.value = editing ? current.review.notes : (current.notes || "");
      if (editing) $("n3-editing-when").textContent = new Date(current.review.createdAt).toLocaleString();
      highlightBand();
      if (document.activeElement && document.activeElement !== document.body) document.activeElement.blur();
      window.scrollTo(0, 0);
    }

    function show(payload) {
      $("n3-loading").hidden = true;
      $("n3-remaining").textContent = payload.remaining;
      $("n3-reviewed").textContent = payload.reviewed;
      $("n3-reviewed-counter").hidden = !payload.reviewed;
      setEditing(false);
      showUndo();
      if (!payload.item) {
        current = null;
        $("n3-item").hidden = true;
        $("n3-empty").hidden = false;
        $("n3-empty-title").textContent = payload.empty.title;
        const lines = $("n3-empty-lines");
        lines.replaceChildren(...payload.empty.lines.map((text) => {
          const li = document.createElement("li");
          li.textContent = text;
          return li;
        }));
        $("n3-empty-skipped").hidden = !payload.skipped;
        $("n3-skipped-count").textContent = payload.skipped;
        return;
      }
      showItem(payload.item);
    }

    async function run(action) {
      if (busy) return;
      busy = true;
      try {
        await action();
      } catch (err) {
        if (!current) {
          if (!$("n3-empty").hidden) {
            setStatus(err.message, "error");
            return;
          }
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
      if (editing) return saveChange();
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
        const saved = payload.saved;
        lastSaved = { reviewId: saved.reviewId, id: saved.id, score: saved.score, notes: notesInput.value,
                      also: saved.identicalReviewIds || [] };
        show(payload);
        const progress = saved.overlap > 1 ? " (review " + saved.reviews + " of " + saved.overlap + ")" : "";
        const also = lastSaved.also.length
          ? " and its " + lastSaved.also.length + " identical item" + (lastSaved.also.length === 1 ? "" : "s") : "";
        setStatus("Saved #" + saved.id + also + " = " + saved.score + progress + ". Press u to undo.", "ok");
      });
    }

    function saveChange() {
      const score = parseScore(scoreInput.value);
      if (score === null) {
        setStatus("A score is a number between 0 and 1.", "error");
        scoreInput.focus();
        return;
      }
      run(async () => {
        const item = current;
        setStatus("Saving…");
        const answer = await post(itemUrl(root.dataset.editUrl, item.review.id), { score: score, notes: notesInput.value });
        if (lastSaved && lastSaved.reviewId === item.review.id) {
          lastSaved.score = answer.saved.score;
          lastSaved.notes = answer.saved.notes;
        }
        show(await post(root.dataset.nextUrl, { agent: agent }));
        setStatus("Changed your review of #" + item.id + " to " + answer.saved.score + ".", "ok");
      });
    }

    function previous() {
      run(async () => {
        const before = editing ? current.review.id : null;
        const answer = await post(root.dataset.previousUrl, { agent: agent, before: before });
        if (!answer.item) {
          setStatus(before ? "No earlier review: this is the first you gave." : "You have not scored anything yet.");
          return;
        }
        setEditing(true);
        showItem(answer.item);
        setStatus("");
      });
    }

    function backToQueue() {
      run(async () => {
        show(await post(root.dataset.nextUrl, { agent: agent }));
        setStatus("");
      });
    }

    function undo() {
      if (!lastSaved) {
        setStatus("Nothing to undo: undo removes the score you saved last in this page.");
        return;
      }
      run(async () => {
        const undone = lastSaved;
        const payload = await post(itemUrl(root.dataset.undoUrl, undone.reviewId), { agent: agent, also: undone.also });
        lastSaved = null;
        done = Math.max(done - 1, 0);
        $("n3-done").textContent = done;
        show(payload);
        const of = "#" + undone.id + (undone.also.length
          ? " and its " + undone.also.length + " identical item" + (undone.also.length === 1 ? "" : "s") : "");
        if (payload.undone.shownAgain) {
          scoreInput.value = String(undone.score);
          notesInput.value = undone.notes;
          highlightBand();
          setStatus("Undone: your score " + undone.score + " of " + of +
            " was removed and the item is back in the queue. Score it again, or skip it.", "ok");
        } else {
          setStatus("Undone: your score " + undone.score + " of " + of +
            " was removed; the item is back in the queue (someone else is reviewing it now).", "ok");
        }
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
    $("n3-back").addEventListener("click", backToQueue);
    $("n3-previous").addEventListener("click", previous);
    $("n3-previous-empty").addEventListener("click", previous);
    $("n3-undo").addEventListener("click", undo);
    $("n3-undo-empty").addEventListener("click", undo);
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
      if (e.key === "p") {
        e.preventDefault();
        previous();
        return;
      } else if (e.key === "u") {
        e.preventDefault();
        undo();
        return;
      } else if (e.key === "m") {
        e.preventDefault();
        window.location.href = $("n3-mine-link").href;
        return;
      } else if (e.key === "Escape" && editing) {
        e.preventDefault();
        backToQueue();
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
      } else if (e.key === "k" && !editing) {
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
