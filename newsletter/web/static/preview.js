// Live reload for the editors' preview: poll the issue's fingerprint (issue file and
// templates) and reload the page when it changes.
(function () {
  var body = document.body;
  var url = body.dataset.versionUrl, current = body.dataset.version;
  var every = parseInt(body.dataset.pollMs || "500", 10);
  if (!url) return;
  function poll() {
    fetch(url, {cache: "no-store", credentials: "same-origin"})
      .then(function (r) { return r.ok ? r.json() : null; })
      .then(function (data) {
        if (data && data.version && data.version !== current) { window.location.reload(); return; }
        setTimeout(poll, every);
      })
      .catch(function () { setTimeout(poll, every); });
  }
  setTimeout(poll, every);
})();
