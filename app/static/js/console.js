// The agent console's script (our origin only; the CSP forbids inline script): security-key
// ceremonies for sign-in, enrolment and step-up. A button names the ceremony and its two URLs:
//   data-key-ceremony="authenticate|register|stepup" data-options=URL data-verify=URL
//   data-next (sign-in), data-submit (step-up: the form to send once the key answered),
//   data-error (the element that shows a refusal).
(function () {
  "use strict";

  function b64urlToBuf(text) {
    var pad = "=".repeat((4 - (text.length % 4)) % 4);
    var raw = atob((text + pad).replace(/-/g, "+").replace(/_/g, "/"));
    var out = new Uint8Array(raw.length);
    for (var i = 0; i < raw.length; i++) out[i] = raw.charCodeAt(i);
    return out.buffer;
  }

  function bufToB64url(buffer) {
    var bytes = new Uint8Array(buffer), text = "";
    for (var i = 0; i < bytes.length; i++) text += String.fromCharCode(bytes[i]);
    return btoa(text).replace(/\+/g, "-").replace(/\//g, "_").replace(/=+$/, "");
  }

  function creationOptions(o) {
    o.challenge = b64urlToBuf(o.challenge);
    o.user.id = b64urlToBuf(o.user.id);
    (o.excludeCredentials || []).forEach(function (c) { c.id = b64urlToBuf(c.id); });
    return { publicKey: o };
  }

  function requestOptions(o) {
    o.challenge = b64urlToBuf(o.challenge);
    (o.allowCredentials || []).forEach(function (c) { c.id = b64urlToBuf(c.id); });
    return { publicKey: o };
  }

  function credentialJson(cred) {
    var r = cred.response, response = { clientDataJSON: bufToB64url(r.clientDataJSON) };
    if (r.attestationObject) {
      response.attestationObject = bufToB64url(r.attestationObject);
      response.transports = r.getTransports ? r.getTransports() : [];
    } else {
      response.authenticatorData = bufToB64url(r.authenticatorData);
      response.signature = bufToB64url(r.signature);
      if (r.userHandle) response.userHandle = bufToB64url(r.userHandle);
    }
    return { id: cred.id, rawId: bufToB64url(cred.rawId), type: cred.type, response: response,
             clientExtensionResults: cred.getClientExtensionResults ? cred.getClientExtensionResults() : {} };
  }

  function show(button, message) {
    var box = document.getElementById(button.getAttribute("data-error") || "");
    if (box) { box.textContent = message; box.hidden = false; }
  }

  function answer(response) {
    return response.json().then(function (body) {
      if (!response.ok) throw new Error((body.error && body.error.message) || "Refused.");
      return body;
    });
  }

  function run(button) {
    var ceremony = button.getAttribute("data-key-ceremony");
    var json = { "Content-Type": "application/json" };
    button.disabled = true;
    window.rekey.post(button.getAttribute("data-options"), "{}", json).then(answer).then(function (options) {
      return ceremony === "register" ? navigator.credentials.create(creationOptions(options))
                                     : navigator.credentials.get(requestOptions(options));
    }).then(function (cred) {
      var body = { credential: credentialJson(cred), next: button.getAttribute("data-next") || null };
      return window.rekey.post(button.getAttribute("data-verify"), JSON.stringify(body), json).then(answer);
    }).then(function (body) {
      var form = document.getElementById(button.getAttribute("data-submit") || "");
      if (form) { form.submit(); return; }
      window.location.assign(body.redirect || "/console/queue");
    }).catch(function (err) {
      button.disabled = false;
      show(button, err && err.message ? err.message : "The security key did not answer.");
    });
  }

  document.addEventListener("click", function (event) {
    var button = event.target.closest ? event.target.closest("[data-key-ceremony]") : null;
    if (button) { event.preventDefault(); run(button); }
  });
})();
