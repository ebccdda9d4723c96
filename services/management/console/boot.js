// Loaded before the console's modules as a classic script: whatever goes
// wrong later (a module that fails to load, an uncaught error), the page
// says so instead of staying blank.
(function () {
  'use strict';

  function show(message) {
    var banner = document.getElementById('banner');
    if (!banner) {
      return;
    }
    banner.textContent = message;
    banner.hidden = false;
    var starting = document.getElementById('starting');
    if (starting) {
      starting.textContent = 'The console did not start. Reload the page to try again.';
    }
  }

  // Resource load errors do not bubble, but a capturing listener on the
  // window sees them (a script or stylesheet that could not load).
  window.addEventListener('error', function (event) {
    var target = event.target;
    if (target && target !== window && (target.src || target.href)) {
      show('The console could not load ' + (target.src || target.href) + '. Check that management is up, then reload.');
      return;
    }
    if (!window.zfConsoleStarted) {
      show('The console failed: ' + (event.message || 'an unknown error') + '. Reload the page to try again.');
    }
  }, true);

  window.addEventListener('unhandledrejection', function (event) {
    if (!window.zfConsoleStarted) {
      var reason = event.reason && event.reason.message ? event.reason.message : String(event.reason);
      show('The console failed: ' + reason + '. Reload the page to try again.');
    }
  });

  // Old browsers without ES modules never run app.js.
  window.setTimeout(function () {
    if (!window.zfConsoleStarted) {
      show('The console has not started after 10 seconds. It needs a current browser with JavaScript modules; reload to try again.');
    }
  }, 10000);
})();
