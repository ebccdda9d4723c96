// One operation: its context (polled every second until it ends), its
// attempts across failovers with their nodes and epochs, its result or
// error, a batch's children, and its events and logs followed live over
// SSE (resumed after a dropped connection from the last seq seen). An
// unfinished one can be cancelled, after a second click that confirms.

import { api, explain, get, segment } from './api.js';
import { badge, clock, compact, every, facts, fill, h, jsonBlock, link, table, time } from './dom.js';
import { follow } from './stream.js';

const POLL_MS = 1000;
/** Rows kept on the page per live list; the count says how many came. */
const KEEP_ROWS = 300;

const FINAL = new Set(['complete', 'failed', 'cancelled']);

function summary(op) {
  return facts([
    ['State', h('span', { id: 'op-state', dataset: { state: op.state } }, badge(op.state))],
    ['Module', h('span', null, link(`modules/${encodeURIComponent(op.module)}`, op.module), ` ${op.version}`)],
    ['Operation', `${op.operation} (${op.kind})`],
    ['Resource', op.resource ?? null],
    ['Zone', op.zone],
    ['Owner', op.owner ?? null],
    ['Epoch', String(op.epoch)],
    ['Parent batch', op.parent ? link(`operations/${encodeURIComponent(op.parent)}`, op.parent) : undefined],
    ['Submitted by', op.client ?? undefined],
    ['Timeout', op.kind === 'sync' ? `${op.timeout_ms} ms, ${op.retries} retr${op.retries === 1 ? 'y' : 'ies'}` : undefined],
    ['Created', time(op.created_at)],
    ['Updated', time(op.updated_at)],
  ]);
}

function attemptsTable(op) {
  const attempts = op.attempts || [];
  if (attempts.length === 0) {
    return h('p', { class: 'muted' }, 'No attempt yet: no node has started it.');
  }
  return table('Attempts, first to last', ['#', 'Node', 'Epoch', 'Outcome', 'Started'],
    attempts.map((a, i) => [String(i + 1), h('strong', null, a.node), String(a.epoch), badge(a.outcome), time(a.started_at)]),
    (index) => ({ dataset: { node: attempts[index].node, outcome: attempts[index].outcome } }));
}

function outcome(op) {
  const parts = [];
  if (op.error) {
    parts.push(h('div', { class: 'error-box', id: 'op-error', role: 'note' }, h('strong', null, 'Error: '), op.error));
  }
  if (op.result !== null && op.result !== undefined) {
    parts.push(h('h3', null, 'Result'), h('div', { id: 'op-result' }, jsonBlock(op.result, 'Result')));
  }
  if (parts.length === 0) {
    parts.push(h('p', { class: 'muted' }, FINAL.has(op.state) ? 'It ended without a result.' : 'No result yet.'));
  }
  return parts;
}

function batchPart(op) {
  if (!op.children) {
    return null;
  }
  const counts = op.counts
    ? h('p', null, Object.entries(op.counts).map(([state, n]) => `${state} ${n}`).join(' · '))
    : null;
  return h('section', { 'aria-labelledby': 'batch-heading' },
    h('h2', { id: 'batch-heading' }, 'Batch targets'),
    counts,
    table('Batch targets', ['#', 'Resource', 'Zone', 'State', 'Node', 'Error', 'Operation'],
      op.children.map((c) => [
        String(c.index), c.resource, c.zone,
        c.state ? badge(c.state) : h('span', { class: 'muted' }, 'not started'),
        c.node ?? '—', c.error ?? '',
        link(`operations/${encodeURIComponent(c.id)}`, h('code', null, String(c.id).slice(0, 8))),
      ])));
}

/** A live list: a status line, a count, and rows newest first. */
function liveList(id, title, columns, toCells) {
  const status = h('span', { class: 'stream-status', id: `${id}-status` }, 'connecting…');
  const count = h('span', { class: 'muted', id: `${id}-count` }, '0');
  const body = h('tbody');
  const empty = h('p', { class: 'muted' }, 'None yet.');
  const tableElement = h('div', { class: 'table-wrap', hidden: true },
    h('table', { class: 'cards live', id },
      h('caption', { class: 'visually-hidden' }, `${title}, newest first`),
      h('thead', null, h('tr', null, columns.map((c) => h('th', { scope: 'col' }, c)))),
      body));
  let seen = 0;
  let connections = 0;
  const section = h('section', { 'aria-labelledby': `${id}-heading` },
    h('h2', { id: `${id}-heading` }, title, ' ', h('span', { class: 'count' }, '(', count, ')'), ' ', status),
    empty, tableElement);
  return {
    section,
    add(item) {
      seen += 1;
      count.textContent = String(seen);
      empty.hidden = true;
      tableElement.hidden = false;
      const cells = toCells(item);
      body.prepend(h('tr', { dataset: { seq: String(item.seq ?? '') } },
        cells.map((cell, i) => h('td', { 'data-label': columns[i] }, cell))));
      while (body.rows.length > KEEP_ROWS) {
        body.lastElementChild.remove();
      }
    },
    status(state, detail) {
      status.className = `stream-status stream-${state}`;
      status.dataset.state = state;
      if (state === 'live') {
        connections += 1;
        status.dataset.connections = String(connections);
        status.textContent = '● live';
      } else if (state === 'reconnecting') {
        status.textContent = '○ reconnecting…';
        status.title = String(detail || '');
      } else {
        status.textContent = `stopped: ${explain(detail)}`;
      }
    },
  };
}

function eventCells(event) {
  return [String(event.seq), clock(event.at), event.node, String(event.epoch), event.key ?? '', h('code', null, compact(event.data))];
}

function logCells(line) {
  return [clock(line.at), badge(line.level, 'level'), line.node, h('span', { class: 'log-msg' }, line.msg)];
}

function cancelButton(op, problem) {
  const box = h('div', { class: 'actions' });
  const ask = h('button', { type: 'button', class: 'danger', id: 'cancel' }, 'Cancel operation');
  ask.addEventListener('click', () => {
    const confirm = h('button', { type: 'button', class: 'danger', id: 'confirm-cancel' }, 'Yes, cancel it');
    const keep = h('button', { type: 'button', class: 'quiet' }, 'Keep it running');
    keep.addEventListener('click', () => {
      fill(box, ask);
      ask.focus();
    });
    confirm.addEventListener('click', async () => {
      confirm.disabled = true;
      try {
        await api('DELETE', `/v1/operations/${segment(op.id)}`);
        fill(box, h('span', { class: 'muted', role: 'status' }, 'Cancel asked for.'));
      } catch (error) {
        problem.hidden = false;
        fill(problem, explain(error));
        fill(box, ask);
      }
    });
    fill(box, h('span', null, `Cancel ${op.module} ${op.operation}? `), confirm, ' ', keep);
    confirm.focus();
  });
  return fill(box, ask);
}

export function showOperation(view, ctx, id) {
  const heading = h('h1', null, 'Operation');
  const idLine = h('p', { class: 'muted' }, h('code', null, id));
  const problem = h('p', { class: 'error', role: 'alert', hidden: true });
  const actions = h('div');
  const factsBox = h('div', { id: 'op-facts' }, h('p', { class: 'muted' }, 'Loading…'));
  const result = h('div', { id: 'op-outcome' });
  const attempts = h('div', { id: 'op-attempts' });
  const params = h('div');
  const batch = h('div');
  const events = liveList('events', 'Events', ['Seq', 'At', 'Node', 'Epoch', 'Key', 'Data'], eventCells);
  const logs = liveList('logs', 'Logs', ['At', 'Level', 'Node', 'Message'], logCells);
  fill(view, h('div', { class: 'title-row' }, heading, actions), idLine, problem,
    h('div', { class: 'columns' },
      h('section', { 'aria-labelledby': 'facts-heading' }, h('h2', { id: 'facts-heading' }, 'Context'), factsBox),
      h('div', null,
        h('section', { 'aria-labelledby': 'outcome-heading' }, h('h2', { id: 'outcome-heading' }, 'Outcome'), result),
        h('section', { 'aria-labelledby': 'attempts-heading' }, h('h2', { id: 'attempts-heading' }, 'Attempts'), attempts))),
    batch, events.section, logs.section,
    h('section', { 'aria-labelledby': 'params-heading' }, h('h2', { id: 'params-heading' }, 'Params and checkpoint'), params));

  const base = `/v1/operations/${segment(id)}`;
  const stopEvents = follow(`${base}/events`, { onItem: events.add, onStatus: events.status });
  const stopLogs = follow(`${base}/logs`, { onItem: logs.add, onStatus: logs.status });
  let final = false;
  let shownState = null;
  const stopPolling = every(POLL_MS, async () => {
    if (final) {
      return;
    }
    let op;
    try {
      op = await get(base);
    } catch (error) {
      problem.hidden = false;
      fill(problem, explain(error, true));
      return;
    }
    problem.hidden = true;
    final = FINAL.has(op.state);
    fill(heading, `${op.module} ${op.operation}`);
    fill(factsBox, summary(op));
    fill(result, outcome(op));
    fill(attempts, attemptsTable(op));
    fill(batch, batchPart(op));
    fill(params, h('h3', null, 'Params'), jsonBlock(op.params, 'Params'),
      h('h3', null, 'Checkpoint'), op.checkpoint === null ? h('p', { class: 'muted' }, 'None.') : jsonBlock(op.checkpoint, 'Checkpoint'));
    if (shownState !== op.state) {
      shownState = op.state;
      // Only redrawn when the state changes: the confirm step must survive polls.
      fill(actions, final || op.state === 'cancelling' ? null : cancelButton(op, problem));
    }
  });
  return () => {
    stopPolling();
    stopEvents();
    stopLogs();
  };
}
