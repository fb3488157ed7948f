// The pipeline page: job statuses follow the server (GET ./ID.json once a second while
// the pipeline is not final), and the operator's actions (approve, cancel, rerun) are sent
// with the operator token kept in this tab's sessionStorage (issued by
// `bosun coordinator operator new NAME`).
(function () {
  "use strict";
  var root = document.getElementById("pipeline");
  if (!root) return;
  var id = root.getAttribute("data-id");
  var FINAL = ["success", "failed", "canceled", "errored"];
  function token() { return sessionStorage.getItem("bosun-operator") || ""; }
  function say(text) { document.getElementById("action-result").textContent = text; }
  function refresh(p) {
    // Opened before the config was compiled: the graph exists now, so draw it (the server
    // renders it; once drawn, this never matches again).
    var missing = p.workflows.some(function (w) {
      return !document.querySelector('[data-workflow="' + CSS.escape(w.name) + '"]');
    });
    if (missing) { location.reload(); return false; }
    root.setAttribute("data-status", p.status);
    document.getElementById("pipeline-status").textContent = p.status;
    p.workflows.forEach(function (w) {
      var ws = document.querySelector('[data-workflow="' + CSS.escape(w.name) + '"] .wf-status');
      if (ws) ws.textContent = w.status;
      w.jobs.forEach(function (j) {
        var node = document.querySelector('[data-workflow="' + CSS.escape(w.name) + '"] [data-job="' + CSS.escape(j.name) + '"]');
        if (!node) return;
        node.setAttribute("data-status", j.status);
        node.setAttribute("class", "pjob s-" + j.status);
        var t = node.querySelector(".pjob-status");
        if (t) t.textContent = j.status;
        var title = node.querySelector("title");
        if (title) title.textContent = j.reason || "";
        var li = document.querySelector('[data-workflow="' + CSS.escape(w.name) + '"] [data-reason-for="' + CSS.escape(j.name) + '"]');
        if (li) {
          li.querySelector(".reason").textContent = j.reason || "";
          li.hidden = !j.reason;
        }
        var b = document.querySelector('button[data-approve="' + CSS.escape(j.name) + '"]');
        if (b) b.hidden = j.status !== "on_hold";
      });
    });
  }
  function poll() {
    fetch("/pipelines/" + id + ".json", { cache: "no-store" })
      .then(function (r) { return r.json(); })
      .then(function (p) {
        if (refresh(p) === false) return;
        // A final pipeline changes no more; a hidden tab asks less often.
        if (FINAL.indexOf(p.status) < 0) setTimeout(poll, document.hidden ? 5000 : 1000);
      })
      .catch(function () { setTimeout(poll, 3000); });
  }
  setTimeout(poll, 500);
  // A person logged in with Bitbucket acts with their session cookie and the page's CSRF
  // token; an operator token, when one was given in this tab, goes first.
  var csrf = root.getAttribute("data-csrf") || "";
  function act(path, body) {
    var headers = { "Content-Type": "application/json" };
    if (token()) headers["Authorization"] = "Bearer " + token();
    else if (csrf) headers["X-Bosun-CSRF"] = csrf;
    else { say("log in first (with Bitbucket, or an operator token)"); return; }
    fetch("/pipelines/" + id + "/" + path, {
      method: "POST",
      credentials: "same-origin",
      headers: headers,
      body: JSON.stringify(body || {})
    }).then(function (r) {
      return r.json().then(function (j) { say(r.ok ? (j.ok || "done") : ("refused: " + (j.error || r.status))); });
    }).catch(function (e) { say("failed: " + e); });
  }
  var login = document.getElementById("login");
  if (login) login.addEventListener("submit", function (e) {
    e.preventDefault();
    sessionStorage.setItem("bosun-operator", document.getElementById("token").value.trim());
    document.getElementById("token").value = "";
    say("token kept for this tab");
  });
  document.querySelectorAll("button[data-approve]").forEach(function (b) {
    b.addEventListener("click", function () { act("approve", { job: b.getAttribute("data-approve") }); });
  });
  var c = document.getElementById("cancel");
  if (c) c.addEventListener("click", function () { act("cancel"); });
  var r = document.getElementById("rerun");
  if (r) r.addEventListener("click", function () { act("rerun"); });
})();
