/* relaybox admin: auto-refreshing fragments, copy buttons, confirmations, snippet tabs.
   No framework: the server renders HTML; this only swaps fragments and wires buttons. */
(function () {
  "use strict";
  var csrf = (document.querySelector('meta[name="csrf-token"]') || {}).content || "";

  function refresh(el) {
    var url = el.getAttribute("data-refresh");
    return fetch(url, {headers: {"X-Requested-With": "fetch"}, credentials: "same-origin", cache: "no-store"})
      .then(function (r) {
        if (r.status === 401) { window.location.reload(); return null; }
        return r.ok ? r.text() : null;
      })
      .then(function (html) {
        if (html !== null && html !== el.getAttribute("data-last")) {
          el.innerHTML = html;
          el.setAttribute("data-last", html);
          el.dispatchEvent(new CustomEvent("relaybox:refreshed", {bubbles: true}));
        }
      })
      .catch(function () { /* offline for a moment: the next tick tries again */ });
  }

  function startRefreshers() {
    document.querySelectorAll("[data-refresh]").forEach(function (el) {
      var every = parseInt(el.getAttribute("data-every") || "3000", 10);
      el.setAttribute("data-last", el.innerHTML);
      setInterval(function () { if (!document.hidden) { refresh(el); } }, every);
    });
  }

  function copyText(text, button) {
    var done = function () {
      var old = button.textContent;
      button.textContent = button.getAttribute("data-copied") || "✓";
      setTimeout(function () { button.textContent = old; }, 1500);
    };
    if (navigator.clipboard && window.isSecureContext) {
      navigator.clipboard.writeText(text).then(done, function () { fallbackCopy(text); done(); });
    } else { fallbackCopy(text); done(); }
  }
  function fallbackCopy(text) {
    var ta = document.createElement("textarea");
    ta.value = text; ta.setAttribute("readonly", ""); ta.style.position = "fixed"; ta.style.opacity = "0";
    document.body.appendChild(ta); ta.select();
    try { document.execCommand("copy"); } catch (e) { /* nothing else to try */ }
    document.body.removeChild(ta);
  }

  document.addEventListener("click", function (ev) {
    var btn = ev.target.closest("[data-copy]");
    if (btn) {
      var target = document.getElementById(btn.getAttribute("data-copy"));
      copyText(target ? (target.value || target.textContent) : btn.getAttribute("data-copy"), btn);
      ev.preventDefault();
      return;
    }
    var tab = ev.target.closest("[data-tab]");
    if (tab) {
      var group = tab.closest("[data-tabs]");
      var name = tab.getAttribute("data-tab");
      group.querySelectorAll("[data-tab]").forEach(function (b) {
        b.setAttribute("aria-selected", b === tab ? "true" : "false");
      });
      group.querySelectorAll("[data-pane]").forEach(function (p) {
        p.hidden = p.getAttribute("data-pane") !== name;
      });
      try { localStorage.setItem("relaybox-snippet-lang", name); } catch (e) { /* private mode */ }
    }
  });

  document.addEventListener("submit", function (ev) {
    var msg = ev.target.getAttribute("data-confirm");
    if (msg && !window.confirm(msg)) { ev.preventDefault(); }
  });

  document.addEventListener("change", function (ev) {
    if (ev.target.matches("[data-autosubmit]")) { ev.target.form.submit(); }
  });

  function restoreTab() {
    var name = null;
    try { name = localStorage.getItem("relaybox-snippet-lang"); } catch (e) { return; }
    if (!name) { return; }
    document.querySelectorAll('[data-tabs] [data-tab="' + name + '"]').forEach(function (b) { b.click(); });
  }

  window.relaybox = {csrf: csrf, refresh: refresh};
  document.addEventListener("DOMContentLoaded", function () { startRefreshers(); restoreTab(); });
})();
