// Rekey's own script for every page: script POSTs carry the page's CSRF token (the server refuses
// them otherwise). Pages work without it; only the WebAuthn ceremony and the console's live
// updates need JavaScript. Loaded from our origin (the CSP forbids inline script).
(function () {
  "use strict";
  var meta = document.querySelector('meta[name="csrf-token"]');
  var token = meta ? meta.getAttribute("content") : "";

  function csrfHeaders(headers) {
    var merged = Object.assign({}, headers || {});
    merged["X-CSRF-Token"] = token;
    return merged;
  }

  // htmx (the console's) adds the header to every request it makes.
  document.addEventListener("htmx:configRequest", function (event) {
    event.detail.headers["X-CSRF-Token"] = token;
  });

  // fetch() for scripts: same-origin, cookies included, the CSRF header added.
  window.rekey = {
    csrfHeaders: csrfHeaders,
    post: function (url, body, headers) {
      return fetch(url, {
        method: "POST",
        credentials: "same-origin",
        headers: csrfHeaders(headers),
        body: body,
      });
    },
  };
})();
