// Modules: every module with its newest version, and one module's versions
// with each operation's kind, description and params schema, and a form
// generated from that schema that runs the operation (without waiting: the
// operation's page then shows it live, its result or error included).

import { api, explain, get, segment, withQuery } from './api.js';
import { badge, fill, h, jsonBlock, link, table, time } from './dom.js';
import { paramsFields } from './schema-form.js';

function operationWords(record) {
  return Object.entries(record.operations || {}).map(([name, op]) => `${name} (${op.kind})`).join(', ');
}

export function showModules(view) {
  const list = h('div', { id: 'modules' }, h('p', { class: 'muted' }, 'Loading…'));
  fill(view, h('h1', null, 'Modules'),
    h('p', { class: 'muted' }, 'Pick a module to see its operations and run one.'), list);
  get('/v1/modules').then((answer) => {
    const modules = answer.modules || [];
    if (modules.length === 0) {
      fill(list, h('p', { class: 'muted' }, 'No module is published. Push one with zf module push <folder>.'));
      return;
    }
    fill(list, table('Modules', ['Module', 'Newest version', 'Description', 'Operations', 'Published'],
      modules.map((m) => [
        link(`modules/${encodeURIComponent(m.name)}`, m.name),
        m.version,
        m.description || '',
        operationWords(m),
        time(m.published_at),
      ]), (index) => ({ dataset: { module: modules[index].name } })));
  }).catch((error) => fill(list, h('p', { class: 'error', role: 'alert' }, explain(error))));
}

function resourceChoice(id, resources) {
  if (resources === null) {
    return h('input', { id, name: 'resource', type: 'text', autocomplete: 'off', 'aria-describedby': `${id}-hint` });
  }
  return h('select', { id, name: 'resource', 'aria-describedby': `${id}-hint` },
    h('option', { value: '' }, '(no resource)'),
    resources.map((r) => h('option', { value: r.id }, `${r.id} (${r.kind}, zone ${r.zone})`)));
}

/** The form that runs `operation` of `record`. */
function runForm(record, name, operation, resources) {
  const prefix = `run-${name.replace(/[^A-Za-z0-9_-]/g, '_')}`;
  const fields = paramsFields(operation.params ?? null, `${prefix}-param`);
  const resource = resourceChoice(`${prefix}-resource`, resources);
  const problem = h('div', { class: 'error', role: 'alert', id: `${prefix}-problem`, hidden: true });
  const button = h('button', { type: 'submit' }, `Run ${name}`);
  fields.element.prepend(h('div', { class: 'field' },
    h('label', { for: resource.id }, 'Resource'),
    resource,
    h('p', { class: 'hint', id: `${resource.id}-hint` }, 'The resource to run it against; its zone\'s nodes run it.')));
  const form = h('form', { class: 'run', dataset: { operation: name } },
    fields.element,
    h('div', { class: 'actions' }, button),
    problem);
  form.addEventListener('submit', async (event) => {
    event.preventDefault();
    problem.hidden = true;
    const params = fields.collect();
    if (params === null) {
      return;
    }
    const body = { module: record.name, version: record.version, operation: name, params };
    if (resource.value) {
      body.resource = resource.value;
    }
    button.disabled = true;
    try {
      const context = await api('POST', '/v1/operations?wait=false', body);
      window.location.hash = `#/operations/${encodeURIComponent(context.id)}`;
    } catch (error) {
      button.disabled = false;
      problem.hidden = false;
      fill(problem, h('p', null, explain(error)),
        error.violations && error.violations.length
          ? h('ul', null, error.violations.map((v) => h('li', null, v)))
          : null);
      problem.focus();
    }
  });
  problem.tabIndex = -1;
  return form;
}

function operationCard(record, name, operation, resources) {
  const facts = [badge(operation.kind)];
  if (operation.timeout_ms) {
    facts.push(` timeout ${operation.timeout_ms} ms`);
  }
  return h('section', { class: 'card', 'aria-labelledby': `op-${name}-heading`, dataset: { operation: name } },
    h('h2', { id: `op-${name}-heading` }, name, ' ', facts),
    operation.description ? h('p', null, operation.description) : null,
    operation.params
      ? h('details', null, h('summary', null, 'Params schema'), jsonBlock(operation.params, `Params schema of ${name}`))
      : h('p', { class: 'muted' }, 'No params schema: any JSON object is passed on.'),
    runForm(record, name, operation, resources));
}

export function showModule(view, ctx, name) {
  const heading = h('h1', null, `Module ${name}`);
  const body = h('div', null, h('p', { class: 'muted' }, 'Loading…'));
  fill(view, h('p', null, link('modules', '← All modules')), heading, body);
  Promise.all([
    get(`/v1/modules/${segment(name)}`),
    get('/v1/resources').then((a) => a.resources || []).catch(() => null),
  ]).then(([module, resources]) => {
    const versions = module.versions || [];
    if (versions.length === 0) {
      fill(body, h('p', { class: 'muted' }, 'This module has no version.'));
      return;
    }
    const wanted = ctx.query.get('version');
    const record = versions.find((v) => v.version === wanted) || versions[0];
    const chooser = h('select', { id: 'version', name: 'version' },
      versions.map((v) => h('option', { value: v.version, selected: v === record }, v.version)));
    chooser.addEventListener('change', () => ctx.setQuery({ version: chooser.value }));
    fill(body,
      h('div', { class: 'field inline' }, h('label', { for: 'version' }, 'Version'), chooser),
      h('p', null, record.description || ''),
      h('p', { class: 'muted' }, 'Published ', time(record.published_at), ` · ${record.size} bytes · `, h('code', null, record.digest)),
      Object.entries(record.operations || {}).map(([opName, op]) => operationCard(record, opName, op, resources)),
      h('p', null, link(withQuery('operations', { module: name }), `Operations of ${name}`)));
  }).catch((error) => fill(body, h('p', { class: 'error', role: 'alert' }, explain(error))));
}
