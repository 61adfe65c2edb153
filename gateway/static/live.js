// Live fragments: the element with data-live holds a server-rendered fragment; the server
// streams the same fragment, re-rendered, whenever the attendance store changes.
"use strict";
(function () {
  const target = document.querySelector("[data-live]");
  const status = document.getElementById("status");
  if (target && window.EventSource) {
    const connect = () => {
      const source = new EventSource(target.dataset.live);
      source.onopen = () => { status.className = "on"; status.textContent = "live"; };
      source.onmessage = (msg) => {
        target.innerHTML = JSON.parse(msg.data).html;
        target.dispatchEvent(new CustomEvent("live-update"));
      };
      source.onerror = () => { status.className = "off"; status.textContent = "reconnecting…"; };
    };
    connect();
  }
  // Action panels: <form data-api="POST /api/..."> posts its fields as JSON.
  document.addEventListener("submit", async (ev) => {
    const form = ev.target;
    if (!form.dataset.api) return;
    ev.preventDefault();
    const fields = Object.fromEntries(new FormData(form).entries());
    const url = form.dataset.api.replace(/\{(\w+)\}/g, (_, k) => encodeURIComponent(fields[k] || ""));
    const out = form.querySelector(".msg");
    const response = await fetch(url, {method: "POST", headers: {"Content-Type": "application/json"},
                                       body: JSON.stringify(fields), credentials: "same-origin"});
    const body = await response.json().catch(() => ({}));
    if (out) {
      out.textContent = response.ok ? "done" : ("refused: " + JSON.stringify(body.detail ?? body));
      out.className = "msg " + (response.ok ? "accepted" : "refused");
    }
    if (response.ok) form.reset();
  });
  // Buttons that fill an action panel (e.g. "admit…" in a roster row).
  document.addEventListener("click", (ev) => {
    const button = ev.target.closest("[data-fill]");
    if (!button) return;
    const values = JSON.parse(button.dataset.fill);
    const form = document.getElementById(button.dataset.form);
    for (const [k, v] of Object.entries(values)) form.elements[k].value = v;
    form.querySelector("input[name=reason]")?.focus();
  });
  // Buttons that post directly (e.g. acknowledge an alert).
  document.addEventListener("click", async (ev) => {
    const button = ev.target.closest("[data-post]");
    if (!button) return;
    button.disabled = true;
    await fetch(button.dataset.post, {method: "POST", credentials: "same-origin",
                                      headers: {"Content-Type": "application/json"}, body: "{}"});
  });
})();
