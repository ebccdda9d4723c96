// Signing in: a token is tried on GET /v1/cluster before it is kept, so a
// wrong one is refused here with the API's own words. The field is a
// password field and is emptied once the token is kept: the page never
// shows it.

import { ApiError, api, explain, keepToken } from './api.js';
import { fill, h } from './dom.js';

export function showLogin(view, reason, done) {
  const input = h('input', {
    id: 'token', name: 'token', type: 'password', autocomplete: 'off',
    spellcheck: 'false', 'aria-describedby': 'token-help',
  });
  const message = h('p', { id: 'login-message', class: reason ? 'notice' : '', role: 'alert' }, reason || '');
  const button = h('button', { type: 'submit' }, 'Sign in');
  const form = h('form', { class: 'login', novalidate: true },
    h('h1', null, 'Sign in'),
    h('p', { id: 'token-help', class: 'muted' },
      'Give an API token of role viewer, operator or admin (ZF_API_TOKENS or --tokens-file of management). ',
      'It is kept for this browser tab only. An instance without tokens answers without one on loopback: leave the field empty.'),
    h('label', { for: 'token' }, 'API token'),
    input,
    button,
    message);
  form.addEventListener('submit', async (event) => {
    event.preventDefault();
    const candidate = input.value.trim();
    button.disabled = true;
    message.className = 'muted';
    fill(message, 'Checking the token…');
    try {
      await api('GET', '/v1/cluster', undefined, { token: candidate });
    } catch (error) {
      // 503 comes after the token check: the token is good, the cluster not yet.
      if (!(error instanceof ApiError && error.status === 503)) {
        button.disabled = false;
        message.className = 'error';
        fill(message, candidate || error.status !== 401 ? explain(error)
          : `${explain(error)} This instance needs a token.`);
        input.focus();
        return;
      }
    }
    keepToken(candidate);
    input.value = '';
    done();
  });
  fill(view, form);
  input.focus();
}
