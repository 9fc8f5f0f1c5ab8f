// The WebAuthn ceremony for the sign-in and enrolment pages (our own file: the CSP allows no inline
// script and no other origin). A `.webauthn` block names its ceremony (`create` to register a key,
// `get` to sign in) and the URL of its options; the button asks for the options (a POST with the
// CSRF header, through rekey.post), hands them to the browser with
// PublicKeyCredential.parseCreationOptionsFromJSON / parseRequestOptionsFromJSON, and puts the
// answer's toJSON() in the form's `credential` field, which it then submits like any form.
// Without this script (or without WebAuthn in the browser) the block stays hidden and the page
// says so; every other form on the page works without JavaScript.
(function () {
  "use strict";

  function supported() {
    return typeof window.PublicKeyCredential === "function" &&
      typeof PublicKeyCredential.parseCreationOptionsFromJSON === "function" &&
      typeof PublicKeyCredential.parseRequestOptionsFromJSON === "function";
  }

  function say(block, text) {
    var status = block.querySelector(".webauthn-status");
    if (status) { status.textContent = text; }
  }

  function refusal(response) {
    return response.json().then(function (body) {
      return (body && body.error && body.error.message) || "The request was refused.";
    }, function () { return "The request was refused (" + response.status + ")."; });
  }

  function start(block, button) {
    var form = block.querySelector("form.webauthn-form");
    var field = form.querySelector('input[name="credential"]');
    var create = block.getAttribute("data-ceremony") === "create";
    button.disabled = true;
    say(block, create ? "Follow your browser's prompt to register the key…" : "Touch or unlock your security key…");
    window.rekey.post(block.getAttribute("data-options-url")).then(function (response) {
      if (!response.ok) { return refusal(response).then(function (message) { throw new Error(message); }); }
      return response.json();
    }).then(function (body) {
      if (create) {
        return navigator.credentials.create({publicKey: PublicKeyCredential.parseCreationOptionsFromJSON(body.options)});
      }
      return navigator.credentials.get({publicKey: PublicKeyCredential.parseRequestOptionsFromJSON(body.options)});
    }).then(function (credential) {
      field.value = JSON.stringify(credential.toJSON());
      say(block, "Checking…");
      form.submit();
    }).catch(function (error) {
      button.disabled = false;
      var text = error && error.name === "NotAllowedError"
        ? "The security key was not used (the prompt was cancelled or timed out). Try again."
        : (error && error.message) || "The security key could not be used.";
      say(block, text);
    });
  }

  document.addEventListener("DOMContentLoaded", function () {
    if (!supported()) { return; }
    var blocks = document.querySelectorAll(".webauthn");
    Array.prototype.forEach.call(blocks, function (block) {
      block.hidden = false;
      var unavailable = block.parentNode.querySelector(".webauthn-unavailable");
      if (unavailable) { unavailable.hidden = true; }
      var button = block.querySelector(".webauthn-start");
      button.addEventListener("click", function () { start(block, button); });
      // Enter in the label field submits the form: run the ceremony instead of posting no answer.
      block.querySelector("form.webauthn-form").addEventListener("submit", function (event) {
        if (!block.querySelector('input[name="credential"]').value) { event.preventDefault(); start(block, button); }
      });
    });
  });
})();
