// Live updates of an open page: the server says what changed (server-sent events), the page
// fetches its changing part again, rendered and escaped by the server, and swaps it in.
"use strict";
(function () {
  const main = document.querySelector("main[data-stream]");
  const badge = document.getElementById("live-status");
  const target = document.getElementById("live");
  if (!main || !target || !window.EventSource) {
    return;
  }
  const partial = new URL(main.dataset.partial, window.location.href);
  partial.searchParams.set("partial", "1");
  const throttle = Number(main.dataset.throttle || 200);
  let timer = null;
  let busy = false;
  let again = false;

  function show(state, text) {
    if (badge) {
      badge.dataset.state = state;
      badge.textContent = text;
    }
  }

  function refresh() {
    if (busy) {
      again = true;
      return;
    }
    busy = true;
    fetch(partial, { credentials: "same-origin", cache: "no-store", headers: { Accept: "text/html" } })
      .then((response) => (response.ok ? response.text() : Promise.reject(new Error(String(response.status)))))
      .then((html) => {
        target.innerHTML = html;
        main.dataset.refreshed = String(Number(main.dataset.refreshed || 0) + 1);
      })
      .catch(() => show("error", "update failed"))
      .finally(() => {
        busy = false;
        if (again) {
          again = false;
          schedule();
        }
      });
  }

  function schedule() {
    if (timer === null) {
      timer = window.setTimeout(() => {
        timer = null;
        refresh();
      }, throttle);
    }
  }

  const source = new EventSource(main.dataset.stream);
  source.onopen = () => show("on", "live");
  source.onerror = () => show("off", "reconnecting");
  for (const kind of (main.dataset.listen || "run-event").split(" ")) {
    source.addEventListener(kind, schedule);
  }
  if (main.dataset.every) {
    // Ages ("3 s ago") change without any event: refresh them now and then.
    window.setInterval(schedule, Number(main.dataset.every));
  }
  source.addEventListener("error", (event) => {
    if (event.data) {
      show("error", JSON.parse(event.data).message);
    }
  });
})();
