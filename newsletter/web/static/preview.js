// Live reload for the editors' preview: wait on the server's long poll (it answers as soon
// as the issue file or a template changes) and reload the page when the fingerprint
// differs. Where the long poll fails (an older server, a proxy that cuts long requests),
// poll the fingerprint instead.
(function () {
  var body = document.body;
  var versionUrl = body.dataset.versionUrl, changesUrl = body.dataset.changesUrl;
  var current = body.dataset.version;
  var every = parseInt(body.dataset.pollMs || "500", 10);
  var failures = 0;
  if (!versionUrl) return;
  function changed(data) {
    if (data && data.version && data.version !== current) { window.location.reload(); return true; }
    return false;
  }
  function poll() {
    fetch(versionUrl, {cache: "no-store", credentials: "same-origin"})
      .then(function (r) { return r.ok ? r.json() : null; })
      .then(function (data) { if (!changed(data)) setTimeout(poll, every); })
      .catch(function () { setTimeout(poll, every); });
  }
  function watch() {
    fetch(changesUrl + "?since=" + encodeURIComponent(current), {cache: "no-store", credentials: "same-origin"})
      .then(function (r) { if (!r.ok) throw new Error(String(r.status)); return r.json(); })
      .then(function (data) { failures = 0; if (!changed(data)) watch(); })
      .catch(function () {
        // A server restarting answers again soon; one that keeps failing gets polled.
        if (++failures < 3) setTimeout(watch, every); else setTimeout(poll, every);
      });
  }
  if (changesUrl && window.fetch) watch(); else setTimeout(poll, every);
})();
