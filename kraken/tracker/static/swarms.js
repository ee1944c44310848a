// The live swarm page of a Kraken tracker: polls /swarms.json or /swarms/<key>.json every second.
// Every value goes into the page as text (textContent) or as an attribute value, never as markup.
"use strict";
(function () {
  var PERIOD_MS = 1000;

  function el(tag, value, cls) {
    var node = document.createElement(tag);
    if (value !== undefined && value !== null) node.textContent = String(value);
    if (cls) node.className = cls;
    return node;
  }

  function bytes(n) {
    if (typeof n !== "number") return "-";
    var units = ["B", "KiB", "MiB", "GiB", "TiB"], i = 0;
    while (n >= 1024 && i < units.length - 1) { n /= 1024; i++; }
    return (i === 0 ? n.toFixed(0) : n.toFixed(1)) + " " + units[i];
  }

  function rate(n) { return typeof n === "number" ? bytes(n) + "/s" : "-"; }
  function short(id) { return String(id).slice(0, 12); }

  function setStatus(message, error) {
    var node = document.getElementById("status");
    node.textContent = message;
    node.className = error ? "error" : "";
  }

  function replaceRows(table, rows) {
    var body = document.querySelector("#" + table + " tbody");
    while (body.firstChild) body.removeChild(body.firstChild);
    rows.forEach(function (row) { body.appendChild(row); });
  }

  function progressCell(pct) {
    var td = el("td", null, "progress");
    td.setAttribute("data-progress", pct === null ? "" : String(pct));
    if (pct === null) { td.textContent = "not reported"; return td; }
    var bar = document.createElement("progress");
    bar.max = 100;
    bar.value = pct;
    td.appendChild(bar);
    td.appendChild(el("span", " " + pct.toFixed(1) + " %"));
    return td;
  }

  function sourcesCell(sources) {
    var td = el("td", null, "sources");
    (sources || []).forEach(function (s) {
      td.appendChild(el("div", (s.origin ? "origin " : "agent ") + short(s.peer_id) + ": " + bytes(s.bytes)
        + " (" + rate(s.rate) + ")"));
    });
    return td;
  }

  function peerRow(p) {
    var tr = document.createElement("tr");
    tr.className = "peer " + (p.kind === "origin" ? "origin" : "agent") + (p.age > 10 ? " stale" : "");
    tr.setAttribute("data-peer-id", p.peer_id);
    tr.setAttribute("data-kind", p.kind);
    tr.appendChild(el("td", short(p.peer_id)));
    tr.appendChild(el("td", p.kind + (p.complete ? " (complete)" : "")));
    tr.appendChild(el("td", p.address));
    tr.appendChild(progressCell(p.progress));
    tr.appendChild(el("td", rate(p.rate_in), "num"));
    tr.appendChild(el("td", rate(p.rate_out), "num"));
    tr.appendChild(el("td", bytes(p.bytes_in), "num"));
    tr.appendChild(el("td", bytes(p.bytes_out), "num"));
    tr.appendChild(sourcesCell(p.sources));
    tr.appendChild(el("td", p.age.toFixed(1) + " s ago", "num"));
    return tr;
  }

  function originRow(o) {
    var tr = el("tr", null, "origin");
    tr.setAttribute("data-peer-id", o.peer_id);
    tr.appendChild(el("td", short(o.peer_id)));
    tr.appendChild(el("td", bytes(o.bytes_out), "num"));
    tr.appendChild(el("td", rate(o.rate_out), "num"));
    return tr;
  }

  function renderSwarm(doc) {
    document.getElementById("summary").textContent = doc.peer_count + " peers, " + doc.complete + " complete; in "
      + rate(doc.rate_in) + ", out " + rate(doc.rate_out) + (doc.digest ? "" : " (no peer reports progress)");
    replaceRows("peers", doc.peers.map(peerRow));
    replaceRows("origins", doc.origins.map(originRow));
  }

  function swarmRow(s) {
    var tr = el("tr", null, "swarm");
    var key = s.digest || s.info_hash;
    tr.setAttribute("data-key", key);
    var td = el("td"), link = el("a", s.digest || "(not reported)");
    link.setAttribute("href", "/swarms/" + encodeURIComponent(key));
    td.appendChild(link);
    tr.appendChild(td);
    tr.appendChild(el("td", short(s.info_hash)));
    tr.appendChild(el("td", s.peers, "num"));
    tr.appendChild(el("td", s.complete, "num"));
    tr.appendChild(el("td", s.progress === null ? "-" : s.progress.toFixed(1) + " %", "num"));
    return tr;
  }

  function renderIndex(doc) {
    document.getElementById("summary").textContent = doc.count + " swarms held" +
      (doc.shown < doc.count ? ", " + doc.shown + " active shown" : "");
    replaceRows("swarms", doc.swarms.map(swarmRow));
  }

  function poll(url, render) {
    fetch(url, { cache: "no-store", credentials: "same-origin" })
      .then(function (response) {
        return response.json().then(function (doc) {
          if (!response.ok) throw new Error(doc && doc.error ? doc.error : "HTTP " + response.status);
          render(doc);
          setStatus("updated " + new Date().toLocaleTimeString());
        });
      })
      .catch(function (error) { setStatus(String(error.message || error), true); })
      .then(function () { setTimeout(function () { poll(url, render); }, PERIOD_MS); });
  }

  if (document.body.getAttribute("data-page") === "swarm") {
    var key = decodeURIComponent(location.pathname.split("/").pop());
    document.getElementById("key").textContent = key;
    poll("/swarms/" + encodeURIComponent(key) + ".json", renderSwarm);
  } else {
    poll("/swarms.json", renderIndex);
  }
})();
