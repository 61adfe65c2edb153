"use strict";
// The applicant screen: renders what the gate pushes on /events (see device/screen.py). The
// texts come from the gate; this only lays them out, always with textContent (never as HTML).
(() => {
  const CONNECTING = {
    state: "connecting", tone: "info", title: ["Menghubungkan…", "Connecting…"],
    hint: ["Gerbang belum siap — tunggu sebentar", "The gate is not ready — please wait"],
    preview: false,
  };
  const SYMBOLS = {
    blink: "◉", turn_left: "←", turn_right: "→", nod: "↕", ok: "✓", bad: "✕", adjust: "!",
  };
  const $ = (id) => document.getElementById(id);
  let restTimer = null;
  let ticker = null;
  let lostTimer = null;
  let previewOn = null;

  function pair(id, text) {
    $(id).hidden = !text;
    $(id + "-id").textContent = text ? text[0] : "";
    $(id + "-en").textContent = text ? text[1] : "";
  }

  function countdown(total, remaining) {
    clearInterval(ticker);
    ticker = null;
    $("countdown").hidden = remaining == null;
    if (remaining == null) return;
    const end = performance.now() + remaining * 1000;
    const draw = () => {
      const left = Math.max(0, (end - performance.now()) / 1000);
      $("countdown-s").textContent = String(Math.ceil(left));
      $("bar-fill").style.width = `${total > 0 ? (100 * left) / total : 0}%`;
      if (left <= 0) clearInterval(ticker);
    };
    draw();
    ticker = setInterval(draw, 100);
  }

  function preview(on) {
    if (on === previewOn) return;
    previewOn = on;
    $("view").dataset.preview = on ? "on" : "off";
    if (on) $("preview").src = `/preview.mjpg?t=${Date.now()}`;
    else $("preview").removeAttribute("src");
  }

  function render(view) {
    clearTimeout(restTimer);
    restTimer = null;
    const main = $("view");
    main.dataset.state = view.state;
    main.dataset.tone = view.tone;
    pair("banner", view.banner);
    pair("title", view.title);
    pair("place", view.place);
    pair("hint", view.hint);
    $("name").textContent = view.name || "";
    $("name").hidden = !view.name;
    $("symbol").textContent = SYMBOLS[view.action] || SYMBOLS[view.tone] || "";
    countdown(view.countdown_s, view.remaining_s);
    preview(Boolean(view.preview));
    if (view.hold_s != null && view.resting) {
      // The gate pushes the resting view when the time is up; this is the fallback for a
      // stream that broke meanwhile, so a name never stays on the screen.
      restTimer = setTimeout(() => render(view.resting), (view.hold_s + 0.5) * 1000);
    }
  }

  const events = new EventSource("/events");
  events.onopen = () => {
    clearTimeout(lostTimer);
    lostTimer = null;
    previewOn = null; // the server may have restarted: reopen the preview stream
    $("status").textContent = "live";
  };
  events.onmessage = (event) => render(JSON.parse(event.data));
  events.onerror = () => {
    $("status").textContent = "reconnecting";
    if (!lostTimer) lostTimer = setTimeout(() => render(CONNECTING), 3000);
  };
  $("preview").onerror = () => {
    if (previewOn) {
      setTimeout(() => { if (previewOn) $("preview").src = `/preview.mjpg?t=${Date.now()}`; }, 1000);
    }
  };
})();
