// bosun coordinator pages: what needs a script on top of the server-rendered HTML (which reads
// fine without it). Job output only ever arrives as HTML the coordinator rendered and escaped
// (pages/ansi.rs): older parts, live lines (pages/live.rs) and the SSH row.
"use strict";

(function () {
  const body = document.body;
  const $ = (sel, root) => (root || document).querySelector(sel);
  const $$ = (sel, root) => [...(root || document).querySelectorAll(sel)];

  // ---- relative times: "3 min ago", kept current ----
  function relative(iso) {
    const s = Math.max(0, (Date.now() - Date.parse(iso)) / 1000);
    if (s < 45) return "just now";
    if (s < 5400) return Math.round(s / 60) + " min ago";
    if (s < 129600) return Math.round(s / 3600) + " h ago";
    return Math.round(s / 86400) + " d ago";
  }
  function refreshTimes(root) {
    for (const t of $$("time[datetime]", root)) t.textContent = relative(t.getAttribute("datetime"));
  }
  refreshTimes();
  setInterval(refreshTimes, 30000);

  // ---- the job list: live rows ----
  if (body.dataset.page === "jobs") {
    const table = $("#jobs");
    const every = Number(table && table.dataset.live) || 0;
    if (table && every > 0) {
      setInterval(async () => {
        if (document.hidden) return;
        try {
          const r = await fetch(location.href, { headers: { Accept: "text/html" } });
          if (!r.ok) return;
          const doc = new DOMParser().parseFromString(await r.text(), "text/html");
          const fresh = $("#jobs tbody", doc);
          const old = $("tbody", table);
          if (fresh && old && fresh.innerHTML !== old.innerHTML) {
            old.replaceWith(document.adoptNode(fresh));
            refreshTimes(table);
          }
        } catch (e) { /* the next round tries again */ }
      }, every * 1000);
    }
    return;
  }
  if (body.dataset.page !== "job") return;

  const logDiv = $("#log");
  const steps = () => $$("details.step", logDiv);

  // ---- expand / collapse ----
  for (const [id, open] of [["expand-all", true], ["collapse-all", false]]) {
    const b = document.getElementById(id);
    if (!b) continue;
    b.hidden = false;
    b.addEventListener("click", () => { for (const d of steps()) d.open = open; });
  }

  // ---- a linked line, else the first failure, in view ----
  function reveal(el) {
    const d = el.closest("details");
    if (d) d.open = true;
    el.scrollIntoView({ block: "center" });
  }
  const target = location.hash.length > 1 && document.getElementById(location.hash.slice(1));
  if (target) {
    reveal(target);
  } else {
    const bad = $("details.step[data-status=failed], details.step[data-status=timedout]", logDiv);
    if (bad) {
      bad.open = true;
      const lines = $$(".l", bad);
      (lines.length ? lines[lines.length - 1] : bad).scrollIntoView({ block: "center" });
      $("summary", bad).focus({ preventScroll: true });
      bad.classList.add("first-failure");
    }
  }
  window.addEventListener("hashchange", () => {
    const t = location.hash.length > 1 && document.getElementById(location.hash.slice(1));
    if (t) reveal(t);
  });

  // ---- older output on demand ----
  const job = body.dataset.job;
  let loadEarlier = async function (btn) {
    btn.disabled = true;
    const { start, end, line } = btn.dataset;
    try {
      const r = await fetch(`/jobs/${job}/log.html?start=${start}&end=${end}&line=${line}`);
      if (!r.ok) throw new Error(r.status);
      const doc = new DOMParser().parseFromString(await r.text(), "text/html");
      const part = $("div.part", doc);
      const pre = $("pre.log", btn.closest("details"));
      const frag = document.createDocumentFragment();
      for (const n of [...part.childNodes]) frag.append(document.adoptNode(n));
      pre.prepend(frag);
      const from = Number(part.dataset.start);
      if (from > Number(start)) {
        btn.dataset.end = String(from);
        btn.dataset.line = part.dataset.line;
        const kib = Math.ceil((from - Number(start)) / 1024);
        btn.closest(".earlier").firstChild.textContent = kib + " KiB of earlier output not shown: ";
        btn.disabled = false;
      } else {
        btn.closest(".earlier").remove();
      }
      search.rerun();
    } catch (e) {
      btn.disabled = false;
      btn.textContent = "Load earlier output (failed, retry)";
    }
  };
  for (const b of $$("button.load", logDiv)) {
    b.hidden = false;
    b.addEventListener("click", () => loadEarlier(b));
  }

  // ---- search over the shown log ----
  const search = (function () {
    const form = $("form.search");
    const q = $("#q");
    const status = $("#q-status");
    let hits = [], cur = -1, last = "", timer = 0;
    if (!form || !q) return { rerun() {} };
    form.hidden = false;
    function run() {
      for (const h of hits) h.classList.remove("hit", "cur");
      hits = []; cur = -1;
      const needle = q.value.toLowerCase();
      last = needle;
      if (needle) {
        for (const l of $$(".l", logDiv)) {
          if (l.textContent.toLowerCase().includes(needle)) { l.classList.add("hit"); hits.push(l); }
        }
      }
      status.textContent = needle ? (hits.length ? hits.length + " lines match" : "no match in the shown log") : "";
    }
    function go(step) {
      // Enter within the typing delay: this search replaces the pending one, which would
      // otherwise run after it and clear the line just shown.
      clearTimeout(timer);
      if (q.value.toLowerCase() !== last) run();
      if (!hits.length) return;
      if (cur >= 0) hits[cur].classList.remove("cur");
      cur = (cur + step + hits.length) % hits.length;
      hits[cur].classList.add("cur");
      reveal(hits[cur]);
      status.textContent = "line " + (cur + 1) + " of " + hits.length + " matching lines";
    }
    q.addEventListener("input", () => { clearTimeout(timer); timer = setTimeout(run, 150); });
    form.addEventListener("submit", (e) => { e.preventDefault(); go(1); });
    $("#q-prev").addEventListener("click", () => go(-1));
    document.addEventListener("keydown", (e) => {
      if (e.key === "/" && document.activeElement === body) { e.preventDefault(); q.focus(); }
    });
    return { rerun() { if (last) run(); } };
  })();

  // ---- timestamps per line, on demand ----
  // The coordinator stamps a line with its time (data-t) where the second changes; shown,
  // every line gets the time of the last stamped line before it.
  function fillTimes() {
    let last = "";
    for (const l of $$(".l", logDiv)) {
      if (l.dataset.t) last = l.dataset.t;
      else if (last) l.dataset.t = last;
    }
  }
  const tsToggle = document.getElementById("ts-toggle");
  const timesShown = () => logDiv.classList.contains("ts");
  if (tsToggle) {
    if (timesShown()) fillTimes();
    tsToggle.addEventListener("click", (e) => {
      e.preventDefault();
      const on = !timesShown();
      logDiv.classList.toggle("ts", on);
      if (on) fillTimes();
      tsToggle.setAttribute("aria-pressed", String(on));
      history.replaceState(null, "", location.pathname + (on ? "?timestamps=1" : "") + location.hash);
    });
    tsToggle.addEventListener("keydown", (e) => { if (e.key === " ") { e.preventDefault(); tsToggle.click(); } });
  }
  const loaded = loadEarlier;
  loadEarlier = async (btn) => { await loaded(btn); if (timesShown()) fillTimes(); };

  // ---- live: follow a running job ----
  // Text arrives as operations on lines, rendered by the coordinator's ANSI renderer
  // (pages/live.rs): colours show live as after a reload, also when an escape is cut across
  // two pieces.
  if (!body.dataset.live) return;
  let nextLine = Number(body.dataset.nextLine) || 1;
  let open = null; // the line still waiting for its "\n": {el, c: committed part, t: tail}
  const lastPre = () => { const p = $$("pre.log", logDiv); return p[p.length - 1]; };
  const tpl = document.createElement("template");
  function nodes(html) {
    // Escaped by the coordinator; a template's content is inert (no scripts, no loads).
    tpl.innerHTML = html;
    return document.importNode(tpl.content, true);
  }
  function part(cls) { const s = document.createElement("span"); s.className = cls; return s; }
  function lineParts(el) {
    const c = part("lc"), t = part("lt");
    el.append(c, t);
    return { el, c, t };
  }
  function newLine(time) {
    const n = nextLine++;
    const span = document.createElement("span");
    span.className = "l"; span.id = "L" + n;
    const a = document.createElement("a");
    a.href = "#L" + n; a.dataset.n = String(n); a.tabIndex = -1;
    span.append(a);
    if (time) span.dataset.t = time;
    else if (timesShown()) {
      const prev = $$(".l", logDiv).pop();
      if (prev && prev.dataset.t) span.dataset.t = prev.dataset.t;
    }
    lastPre().append(span);
    return lineParts(span);
  }
  if (body.dataset.open === "1") {
    // The page's unfinished last line: the stream sends it again, whole; until then it shows
    // as rendered.
    const el = $$(".l", lastPre()).pop();
    if (el) {
      const kept = [...el.childNodes].filter((n) => !(n.nodeName === "A" && n.dataset.n));
      open = lineParts(el);
      open.t.append(...kept);
      const last = open.t.lastChild;
      if (last && last.nodeType === 3) last.data = last.data.replace(/\n$/, "");
    }
  }
  function apply(ops) {
    for (const op of ops) {
      switch (op[0]) {
        case "n": open = newLine(op[1]); break;
        case "c": if (open) { open.c.append(nodes(op[1])); open.t.replaceChildren(); } break;
        case "t": if (open) open.t.replaceChildren(nodes(op[1])); break;
        case "x": if (open) { open.c.replaceChildren(); open.t.replaceChildren(); } break;
        case "e": if (open) { open.el.append("\n"); open = null; } break;
      }
    }
  }
  const icons = { success: "✓", failed: "✗", timedout: "⏱", canceled: "⊘",
    infrastructure_fail: "⚠", skipped: "↷", stopped: "■", running: "●", queued: "◌" };
  function setBadge(holder, word) {
    holder.textContent = "";
    const b = document.createElement("span");
    b.className = "badge st-" + word;
    const i = document.createElement("span");
    i.setAttribute("aria-hidden", "true");
    i.textContent = icons[word] || "?";
    b.append(i, " " + word);
    holder.append(b);
  }
  const d = body.dataset;
  const es = new EventSource(`/jobs/${job}/stream?offset=${d.offset}&seq=${d.seq}&style=${d.style || 0}&open=${d.open || 0}`);
  es.addEventListener("log", (e) => apply(JSON.parse(e.data).ops || []));
  es.addEventListener("step", (e) => {
    const v = JSON.parse(e.data);
    if (v.type === "step_started") {
      const d = document.createElement("details");
      d.className = "step"; d.id = "step-" + v.step; d.dataset.step = String(v.step);
      d.dataset.status = "running"; d.open = true;
      const s = document.createElement("summary");
      const sb = document.createElement("span"); sb.className = "sb";
      const name = document.createElement("span"); name.className = "name";
      name.textContent = String(v.name).split("\n")[0];
      const dur = document.createElement("span"); dur.className = "dur";
      s.append(sb, " ", name, " ", dur);
      setBadge(sb, "running");
      const pre = document.createElement("pre"); pre.className = "log";
      d.append(s, pre);
      for (const o of steps()) if (o.dataset.status !== "failed") o.open = false;
      logDiv.append(d);
      open = null;
    } else if (v.type === "step_finished") {
      const d = document.getElementById("step-" + v.step);
      if (!d) return;
      d.dataset.status = v.status;
      setBadge($(".sb", d), v.status);
      $(".dur", d).textContent = (v.duration_ms / 1000).toFixed(1) + " s";
    }
  });
  es.addEventListener("status", (e) => {
    const v = JSON.parse(e.data);
    const st = document.getElementById("status");
    st.dataset.status = v.status;
    setBadge(st, v.status);
    document.getElementById("error").textContent = v.error || "";
  });
  es.addEventListener("ssh", (e) => {
    // Rendered and escaped by the coordinator (pages/ssh.rs), like older log parts.
    const holder = document.getElementById("ssh");
    const html = JSON.parse(e.data).html;
    if (!holder || typeof html !== "string") return;
    const doc = new DOMParser().parseFromString("<div>" + html + "</div>", "text/html");
    holder.replaceChildren(...[...doc.body.firstChild.childNodes].map((n) => document.adoptNode(n)));
  });
  es.addEventListener("end", () => es.close());
})();
