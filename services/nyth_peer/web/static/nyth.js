// The little the pages need besides htmx: the live-stream indicator and a full refresh
// after a reconnect, retry countdowns, local times, form resets, and QR scanning.
// No inline handlers anywhere: the Content-Security-Policy allows scripts from /ui/static only.
(function () {
  "use strict";
  var opened = false;

  function setLive(state, text) {
    var el = document.getElementById("live");
    if (el) { el.dataset.state = state; el.textContent = text; }
  }

  document.addEventListener("htmx:sseOpen", function () {
    setLive("live", "live");
    // Events sent while we were away are gone: redraw everything from the engine's state.
    if (opened) { htmx.trigger(document.body, "nyth:resync"); }
    opened = true;
  });
  document.addEventListener("htmx:sseError", function () {
    setLive("down", "reconnecting to your peer…");
  });

  function tick() {
    var now = Date.now() / 1000;
    document.querySelectorAll("[data-until]").forEach(function (el) {
      var left = Math.round(parseFloat(el.dataset.until) - now);
      el.textContent = left > 0 ? "in " + left + " s" : "now";
    });
  }

  function localTimes(root) {
    root.querySelectorAll("time[datetime]").forEach(function (el) {
      var d = new Date(el.getAttribute("datetime"));
      if (!isNaN(d)) {
        el.textContent = d.toLocaleTimeString([], {hour: "2-digit", minute: "2-digit"});
        el.title = d.toLocaleString();
      }
    });
  }

  function scrollLogs(root) {
    root.querySelectorAll(".log").forEach(function (log) { log.scrollTop = log.scrollHeight; });
  }

  document.addEventListener("htmx:afterSwap", function (evt) {
    localTimes(evt.target); tick(); scrollLogs(document);
  });

  document.addEventListener("htmx:afterRequest", function (evt) {
    var form = evt.detail.elt;
    if (form && form.matches && form.matches("form[data-reset]") && evt.detail.xhr &&
        evt.detail.xhr.status < 300) {
      form.reset();
    }
  });

  document.addEventListener("keydown", function (evt) {
    var el = evt.target;
    if (evt.key === "Enter" && !evt.shiftKey && el.matches && el.matches("[data-enter-submits]")) {
      evt.preventDefault();
      if (el.form) { el.form.requestSubmit(); }
    }
  });

  document.addEventListener("focusin", function (evt) {
    if (evt.target.matches && evt.target.matches("[data-select-on-focus]")) { evt.target.select(); }
  });

  // Scanning: a photo (on a phone, `capture` opens the camera) or a screenshot of a QR
  // code, decoded here by jsQR; nothing leaves the browser.
  function loadJsQR(done) {
    if (window.jsQR) { done(); return; }
    var s = document.createElement("script");
    s.src = "/ui/static/vendor/jsQR-1.4.0.js";
    s.onload = done;
    document.head.appendChild(s);
  }

  document.addEventListener("change", function (evt) {
    var input = evt.target;
    if (!input.matches || !input.matches("input[data-scan-into]") || !input.files.length) { return; }
    var target = document.getElementById(input.dataset.scanInto);
    var url = URL.createObjectURL(input.files[0]);
    loadJsQR(function () {
      var img = new Image();
      img.onload = function () {
        var canvas = document.createElement("canvas");
        canvas.width = img.naturalWidth; canvas.height = img.naturalHeight;
        var ctx = canvas.getContext("2d");
        ctx.drawImage(img, 0, 0);
        var data = ctx.getImageData(0, 0, canvas.width, canvas.height);
        var code = window.jsQR(data.data, canvas.width, canvas.height);
        URL.revokeObjectURL(url);
        var flash = document.getElementById("flash");
        if (code && code.data) {
          target.value = code.data.trim();
          flash.textContent = "";
        } else {
          flash.textContent = "No QR code found in that picture.";
        }
      };
      img.src = url;
    });
  });

  document.addEventListener("DOMContentLoaded", function () {
    localTimes(document); tick(); scrollLogs(document);
    setInterval(tick, 1000);
  });
})();
