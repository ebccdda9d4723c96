// Operations, newest first: filters by state, module and kind (kept in the
// location, so a filtered list can be bookmarked), pages of 20, and a poll
// every 2 s that shows state changes as they happen (a changed state
// flashes). The API lists the newest N, so page p asks for p × 20 + 1 and
// shows the last 20 of them (the extra one says whether an older page is).

import { explain, get, withQuery } from './api.js';
import { badge, every, fill, h, link, shortId, table, time } from './dom.js';

const POLL_MS = 2000;
const PAGE_SIZE = 20;
const MOST = 1000;
const STATES = ['pending', 'running', 'cancelling', 'complete', 'failed', 'cancelled'];

function select(id, label, options, value) {
  const element = h('select', { id, name: id },
    h('option', { value: '' }, 'any'),
    options.map((o) => h('option', { value: o, selected: o === value }, o)));
  return [h('label', { for: id }, label), element];
}

/** The filters; `addModules(names)` adds the modules to choose from once known. */
function filtersForm(ctx) {
  const q = ctx.query;
  const [stateLabel, state] = select('filter-state', 'State', STATES, q.get('state'));
  const [moduleLabel, module] = select('filter-module', 'Module', [q.get('module')].filter(Boolean), q.get('module'));
  const [kindLabel, kind] = select('filter-kind', 'Kind', ['sync', 'async'], q.get('kind'));
  const apply = () => ctx.setQuery({ state: state.value, module: module.value, kind: kind.value });
  for (const element of [state, module, kind]) {
    element.addEventListener('change', apply);
  }
  const form = h('form', { class: 'filters', role: 'search', 'aria-label': 'Filter operations', onsubmit: (e) => { e.preventDefault(); apply(); } },
    h('div', { class: 'field' }, stateLabel, state),
    h('div', { class: 'field' }, moduleLabel, module),
    h('div', { class: 'field' }, kindLabel, kind));
  // Added in place, so that a choice under way keeps its focus.
  const addModules = (names) => {
    const known = new Set([...module.options].map((o) => o.value));
    for (const name of [...names].sort()) {
      if (!known.has(name)) {
        module.append(h('option', { value: name }, name));
      }
    }
  };
  return [form, addModules];
}

function row(op) {
  const attempts = op.attempts || [];
  return [
    link(`operations/${encodeURIComponent(op.id)}`, h('code', null, shortId(op.id))),
    `${op.module} ${op.version}`,
    op.operation,
    op.kind,
    badge(op.state, 'op-state'),
    op.resource ?? h('span', { class: 'muted' }, '—'),
    op.owner ?? h('span', { class: 'muted' }, '—'),
    String(attempts.length),
    time(op.created_at),
    time(op.updated_at),
  ];
}

function pager(ctx, page, hasOlder) {
  const go = (to) => {
    const values = Object.fromEntries(ctx.query.entries());
    values.page = to > 1 ? to : '';
    ctx.setQuery(values);
  };
  return h('nav', { class: 'pager', 'aria-label': 'Pages' },
    h('button', { type: 'button', disabled: page <= 1, onclick: () => go(page - 1) }, '← Newer'),
    h('span', { 'aria-live': 'polite' }, `Page ${page}`),
    h('button', { type: 'button', disabled: !hasOlder, onclick: () => go(page + 1) }, 'Older →'));
}

export function showOperations(view, ctx) {
  const q = ctx.query;
  const page = Math.max(1, Math.min(Number.parseInt(q.get('page') || '1', 10) || 1, Math.floor((MOST - 1) / PAGE_SIZE)));
  const filters = h('div');
  const problem = h('p', { class: 'error', role: 'alert', hidden: true });
  const list = h('div', { id: 'operations' }, h('p', { class: 'muted' }, 'Loading…'));
  const paging = h('div');
  fill(view,
    h('div', { class: 'title-row' }, h('h1', null, 'Operations'), link('modules', 'Run an operation…')),
    filters, problem, list, paging);
  const [form, addModules] = filtersForm(ctx);
  fill(filters, form);
  get('/v1/modules')
    .then((answer) => addModules((answer.modules || []).map((m) => m.name)))
    .catch(() => { /* The filter still works with the name in the location. */ });

  const states = new Map();
  const path = withQuery('/v1/operations', {
    state: q.get('state'), module: q.get('module'), kind: q.get('kind'), limit: page * PAGE_SIZE + 1,
  });
  return every(POLL_MS, async () => {
    let answer;
    try {
      answer = await get(path);
    } catch (error) {
      problem.hidden = false;
      fill(problem, explain(error, true));
      if (states.size === 0) {
        fill(list);
      }
      return;
    }
    problem.hidden = true;
    const all = answer.operations || [];
    const shown = all.slice((page - 1) * PAGE_SIZE, page * PAGE_SIZE);
    if (shown.length === 0) {
      fill(list, h('p', { class: 'muted' }, page > 1 ? 'No operation on this page.' : 'No operation matches.'));
    } else {
      fill(list, table('Operations, newest first', ['Id', 'Module', 'Operation', 'Kind', 'State', 'Resource', 'Node', 'Attempts', 'Created', 'Updated'],
        shown.map(row), (index) => {
          const op = shown[index];
          const changed = states.has(op.id) && states.get(op.id) !== op.state;
          return { class: changed ? 'changed' : '', dataset: { op: op.id, state: op.state } };
        }));
    }
    for (const op of all) {
      states.set(op.id, op.state);
    }
    fill(paging, pager(ctx, page, all.length > page * PAGE_SIZE));
  });
}
