// The console's entry point: finds out whether a token is needed, keeps the
// header and the banner, and shows the view the location's hash names
// (#/cluster, #/operations, #/operations/<id>, #/modules, #/modules/<name>,
// #/resources). Each view returns a function that stops its polling and
// streams when the user goes elsewhere.

import { ApiError, explain, forgetToken, get, hooks, signedIn, token } from './api.js';
import { fill, h, unexpected } from './dom.js';
import { showLogin } from './view-login.js';
import { showCluster } from './view-cluster.js';
import { showOperations } from './view-operations.js';
import { showOperation } from './view-operation.js';
import { showModules, showModule } from './view-modules.js';
import { showResources } from './view-resources.js';

const main = document.getElementById('main');
const nav = document.getElementById('nav');
const banner = document.getElementById('banner');
const session = document.getElementById('session');
const signOut = document.getElementById('sign-out');
const clusterName = document.getElementById('cluster-name');

const routes = [
  [/^cluster$/, () => showCluster],
  [/^operations$/, () => showOperations],
  [/^operations\/([^/]+)$/, (m) => (view, ctx) => showOperation(view, ctx, decodeURIComponent(m[1]))],
  [/^modules$/, () => showModules],
  [/^modules\/([^/]+)$/, (m) => (view, ctx) => showModule(view, ctx, decodeURIComponent(m[1]))],
  [/^resources$/, () => showResources],
];

let stopView = () => {};
/** Whether the instance needs no token (it answered without one). */
let open = false;
/** Whether the login form is up (later 401s of calls still under way must
 * not draw it again over what the user is typing). */
let asking = false;

/** The route and query of the location's hash: `#/operations?state=failed`. */
function currentRoute() {
  const hash = window.location.hash.replace(/^#\/?/, '');
  const [route, query = ''] = hash.split('?');
  return { route: route || 'cluster', query: new URLSearchParams(query) };
}

/** What every view gets: its query, a way to change it, and the banner. */
function context(query) {
  return {
    query,
    setQuery(values) {
      const params = new URLSearchParams();
      for (const [key, value] of Object.entries(values)) {
        if (value !== undefined && value !== null && value !== '') {
          params.set(key, String(value));
        }
      }
      const text = params.toString();
      window.location.hash = `#/${currentRoute().route}${text ? `?${text}` : ''}`;
    },
    setCluster(name) {
      clusterName.textContent = name ? `cluster ${name}` : '';
    },
  };
}

function markNav(route) {
  for (const a of nav.querySelectorAll('a')) {
    const target = a.getAttribute('href').slice(2);
    if (route === target || route.startsWith(`${target}/`)) {
      a.setAttribute('aria-current', 'page');
    } else {
      a.removeAttribute('aria-current');
    }
  }
}

/** Shows the view of the current location. */
function render(focus) {
  stopView();
  stopView = () => {};
  hideBanner();
  const { route, query } = currentRoute();
  const found = routes.map(([pattern, make]) => [route.match(pattern), make]).find(([m]) => m);
  fill(main);
  markNav(route);
  if (!found) {
    fill(main, h('h1', null, 'Not found'),
      h('p', null, 'The console has no page here. ', h('a', { href: '#/cluster' }, 'Go to the cluster.')));
    return;
  }
  const [match, make] = found;
  const view = h('div', { class: 'view' });
  main.append(view);
  const stop = make(match)(view, context(query));
  stopView = typeof stop === 'function' ? stop : () => {};
  if (focus) {
    const heading = view.querySelector('h1');
    if (heading) {
      heading.tabIndex = -1;
      heading.focus({ preventScroll: true });
    }
  }
}

export function showBanner(message) {
  banner.textContent = message;
  banner.hidden = false;
}

function hideBanner() {
  banner.hidden = true;
  banner.textContent = '';
}

function showSession() {
  get('/v1/cluster')
    .then((overview) => { clusterName.textContent = `cluster ${overview.cluster}`; })
    .catch(() => { /* The views say what is wrong. */ });
  nav.hidden = false;
  session.textContent = open && !token() ? 'no token needed (loopback)' : 'signed in';
  signOut.hidden = open && !token();
}

/** Asks for a token, then shows what was asked for. */
function askForToken(reason) {
  if (asking) {
    return;
  }
  asking = true;
  stopView();
  stopView = () => {};
  nav.hidden = true;
  signOut.hidden = true;
  session.textContent = '';
  fill(main);
  const view = h('div', { class: 'view' });
  main.append(view);
  showLogin(view, reason, () => {
    asking = false;
    open = false;
    showSession();
    render(true);
  });
}

/** First contact: a kept token, no token needed, or a token to ask for. */
async function start() {
  if (signedIn()) {
    showSession();
    render(false);
    return;
  }
  try {
    await get('/v1/cluster');
    open = true;
  } catch (error) {
    if (error instanceof ApiError && error.status === 503) {
      // Past the token check: this instance lets us in without one.
      open = true;
    } else if (error instanceof ApiError && error.status === 401) {
      askForToken(null);
      return;
    } else {
      fill(main, h('h1', null, 'The console cannot start'),
        h('p', { class: 'error', role: 'alert' }, explain(error)),
        h('button', { type: 'button', onclick: () => window.location.reload() }, 'Try again'));
      return;
    }
  }
  showSession();
  render(false);
}

hooks.unauthorized = (error) => {
  forgetToken();
  askForToken(explain(error));
};

unexpected.report = (error) => {
  console.error(error);
  showBanner(explain(error));
};

window.addEventListener('error', (event) => {
  if (event.error) {
    showBanner(explain(event.error));
  }
});
window.addEventListener('unhandledrejection', (event) => showBanner(explain(event.reason)));
window.addEventListener('hashchange', () => {
  if (signedIn() || open) {
    render(true);
  }
});
signOut.addEventListener('click', () => {
  forgetToken();
  askForToken('You signed out.');
});

window.zfConsoleStarted = true;
start();
