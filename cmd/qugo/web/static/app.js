// qugo serve: refresh a page's content in place every few seconds.
// Everything works without this script: pages then reload themselves
// (a meta refresh) or have a Refresh link.
(function () {
  'use strict';
  var main = document.querySelector('main[data-refresh][data-fragment]');
  if (!main) {
    return;
  }
  var every = Math.max(1, Number(main.getAttribute('data-refresh')) || 5) * 1000;
  var url = main.getAttribute('data-fragment');
  var state = document.getElementById('refresh-state');

  function say(text) {
    if (state) {
      state.textContent = text;
    }
  }

  // busy reports whether swapping the content now would lose what the
  // reader is doing: typing in a form, a disclosure opened, a selection.
  function busy() {
    var active = document.activeElement;
    if (active && active !== document.body && main.contains(active) &&
        /^(INPUT|TEXTAREA|SELECT)$/.test(active.tagName)) {
      return true;
    }
    if (main.querySelector('details[open]')) {
      return true;
    }
    var inputs = main.querySelectorAll('input:not([type=hidden])');
    for (var i = 0; i < inputs.length; i++) {
      if (inputs[i].value !== '' || inputs[i].checked) {
        return true;
      }
    }
    var sel = window.getSelection && window.getSelection();
    return !!(sel && !sel.isCollapsed && main.contains(sel.anchorNode));
  }

  function tick() {
    if (document.hidden || busy()) {
      setTimeout(tick, every);
      return;
    }
    fetch(url, {credentials: 'same-origin', cache: 'no-store', headers: {'Accept': 'text/html'}})
      .then(function (r) {
        var html = (r.headers.get('Content-Type') || '').indexOf('text/html') === 0;
        if (!html || (r.status !== 200 && r.status !== 503)) {
          throw new Error('status ' + r.status);
        }
        return r.text();
      })
      .then(function (text) {
        if (!busy()) {
          main.innerHTML = text;
        }
        say('');
      })
      .catch(function () {
        say('(the dashboard did not answer the last refresh)');
      })
      .then(function () {
        setTimeout(tick, every);
      });
  }

  // Reading the page now, not in a whole interval: the meta refresh is
  // off (it is inside noscript), so the script takes over.
  setTimeout(tick, every);
}());
