// Wiremesh console: small progressive helpers. Every page works without
// them; they add a filter box, copy buttons, confirmations, live machine
// status and jumping to the line a policy error names.
"use strict";
(function () {
  // Filter box: hide machine rows that do not contain the text.
  var filter = document.getElementById("filter");
  var table = document.getElementById("machines");
  if (filter && table) {
    filter.addEventListener("input", function () {
      var q = filter.value.trim().toLowerCase();
      table.querySelectorAll("tbody tr").forEach(function (tr) {
        tr.classList.toggle("hidden", q !== "" && tr.textContent.toLowerCase().indexOf(q) < 0);
      });
    });
  }
  // Copy buttons.
  document.querySelectorAll("button.copy").forEach(function (b) {
    b.addEventListener("click", function () {
      var text = b.getAttribute("data-copy");
      if (navigator.clipboard) {
        navigator.clipboard.writeText(text).then(function () { b.textContent = "Copied"; });
      }
    });
  });
  // Confirmations on destructive forms.
  document.querySelectorAll("form[data-confirm]").forEach(function (f) {
    f.addEventListener("submit", function (e) {
      if (!window.confirm(f.getAttribute("data-confirm"))) { e.preventDefault(); }
    });
  });
  // Live status: refresh the machines' online state every 5 s.
  if (table) {
    var agoText = function (iso) {
      var s = Math.max(0, (Date.now() - Date.parse(iso)) / 1000);
      if (s < 60) { return Math.floor(s) + " s"; }
      if (s < 3600) { return Math.floor(s / 60) + " min"; }
      if (s < 172800) { return Math.floor(s / 3600) + " h"; }
      return Math.floor(s / 86400) + " days";
    };
    var refresh = function () {
      fetch("/api/machines", { credentials: "same-origin" }).then(function (r) {
        if (!r.ok) { throw new Error(r.status); }
        return r.json();
      }).then(function (list) {
        var online = 0;
        list.forEach(function (m) {
          if (m.online) { online++; }
          var tr = table.querySelector('tr[data-name="' + CSS.escape(m.name) + '"]');
          if (!tr) { return; }
          var st = tr.querySelector("td.status");
          var span = document.createElement("span");
          if (m.online) { span.className = "online"; span.textContent = "online"; }
          else if (!m.last_seen) { span.className = "offline"; span.textContent = "never seen"; }
          else { span.className = "offline"; span.textContent = "last seen " + agoText(m.last_seen) + " ago"; }
          st.replaceChildren(span);
          tr.querySelector("td.relay").textContent = m.home_relay || "";
        });
        var c = document.getElementById("online-count");
        if (c) { c.textContent = online + " of " + list.length + " online"; }
      }).catch(function () {});
    };
    refresh();
    setInterval(refresh, 5000);
  }
  // Policy editor: select the line an error names.
  var ta = document.getElementById("policy");
  if (ta) {
    var line = parseInt(ta.getAttribute("data-error-line"), 10);
    if (line > 0) {
      var lines = ta.value.split("\n");
      var start = 0;
      for (var i = 0; i < line - 1 && i < lines.length; i++) { start += lines[i].length + 1; }
      var end = start + (lines[line - 1] || "").length;
      ta.focus();
      ta.setSelectionRange(start, end);
      ta.scrollTop = Math.max(0, (line - 5) * 18);
    }
  }
})();
