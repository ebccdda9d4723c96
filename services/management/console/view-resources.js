// Resources: kind, zone, labels, the state their drivers last reported, and
// the names of their secrets (the API never answers with a secret's value).
// A label selector narrows the list as GET /v1/resources?selector= does.

import { explain, get, withQuery } from './api.js';
import { compact, every, fill, h, labels, table, time } from './dom.js';

const POLL_MS = 5000;

function secrets(names) {
  if (!names || names.length === 0) {
    return h('span', { class: 'muted' }, 'none');
  }
  return h('span', { class: 'chips' }, names.map((n) => h('span', { class: 'chip secret' }, n)));
}

function state(resource) {
  if (resource.state === null || resource.state === undefined) {
    return h('span', { class: 'muted' }, 'not reported');
  }
  return h('span', null, h('code', null, compact(resource.state)),
    h('span', { class: 'muted' }, ' by ', resource.reported_by ?? '?', ', ', time(resource.state_updated_at)));
}

function config(resource) {
  return h('details', null, h('summary', null, 'config'), h('pre', { class: 'json' }, JSON.stringify(resource.config, null, 2)));
}

export function showResources(view, ctx) {
  const selector = ctx.query.get('selector') || '';
  const input = h('input', {
    id: 'selector', name: 'selector', type: 'search', value: selector, autocomplete: 'off',
    'aria-describedby': 'selector-hint',
  });
  const form = h('form', { class: 'filters', role: 'search', 'aria-label': 'Filter resources' },
    h('div', { class: 'field' },
      h('label', { for: 'selector' }, 'Label selector'),
      input,
      h('p', { class: 'hint', id: 'selector-hint' }, 'e.g. role=web,env in (prod,stage),!canary; empty for all')),
    h('div', { class: 'field actions' }, h('button', { type: 'submit' }, 'Filter')));
  form.addEventListener('submit', (event) => {
    event.preventDefault();
    ctx.setQuery({ selector: input.value.trim() });
  });
  const problem = h('p', { class: 'error', role: 'alert', hidden: true });
  const list = h('div', { id: 'resources' }, h('p', { class: 'muted' }, 'Loading…'));
  fill(view, h('h1', null, 'Resources'), form, problem, list);
  const path = withQuery('/v1/resources', { selector });
  // Redrawn only when something changed, so that an open config stays open.
  let shown = null;
  return every(POLL_MS, async () => {
    let answer;
    try {
      answer = await get(path);
    } catch (error) {
      problem.hidden = false;
      fill(problem, explain(error, true));
      if (shown === null) {
        fill(list);
      }
      return;
    }
    problem.hidden = true;
    const resources = answer.resources || [];
    const text = JSON.stringify(resources);
    if (text === shown) {
      return;
    }
    shown = text;
    if (resources.length === 0) {
      fill(list, h('p', { class: 'muted' }, selector ? 'No resource matches the selector.' : 'No resource yet. Add one with zf resource put <file>.'));
      return;
    }
    fill(list, table('Resources', ['Resource', 'Kind', 'Zone', 'Labels', 'Secrets', 'State', 'Updated', 'Config'],
      resources.map((r) => [h('strong', null, r.id), r.kind, r.zone, labels(r.labels), secrets(r.secret_names), state(r), time(r.updated_at), config(r)]),
      (index) => ({ dataset: { resource: resources[index].id } })));
  });
}
