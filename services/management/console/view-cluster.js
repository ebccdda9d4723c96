// The cluster at a glance: every node with its role, zone, term, heartbeat
// age, running drivers, monitors and version, each zone's lead highlighted,
// a node that stopped beating in red, and which monitor runs where. Polled
// every second, so a dead node turns red within its lapse plus a second;
// changes of lead and of liveness are also announced to screen readers.

import { explain, get } from './api.js';
import { age, badge, every, fill, h, labels, link, shortId, table, time } from './dom.js';

const POLL_MS = 1000;
/** Running monitors asked for per poll: the newest this many. */
const MOST_MONITORS = 200;

/** Node id -> the zone it leads, from the zones' leads. */
function leadsByNode(overview) {
  const leads = new Map();
  for (const zone of overview.zones || []) {
    if (zone.lead) {
      leads.set(zone.lead.node, zone.zone);
    }
  }
  return leads;
}

function summary(overview, leads) {
  const nodes = overview.nodes || [];
  const up = nodes.filter((n) => n.status === 'up').length;
  const parts = [`${nodes.length} node${nodes.length === 1 ? '' : 's'}, ${up} up`];
  const lead = overview.lead;
  parts.push(lead ? `lead ${lead.node} (term ${lead.term})` : 'no lead in the default zone');
  if (leads.size > 1) {
    parts.push(`${leads.size} zones led`);
  }
  return parts.join(' · ');
}

/** Running monitors by the node that owns them. */
function monitorsByNode(monitors) {
  const byNode = new Map();
  for (const op of monitors) {
    if (op.owner) {
      byNode.set(op.owner, [...(byNode.get(op.owner) || []), op]);
    }
  }
  return byNode;
}

function monitorLink(op) {
  return link(`operations/${encodeURIComponent(op.id)}`, `${op.module} ${op.operation} `, h('code', null, shortId(op.id)));
}

function monitorList(ops) {
  if (!ops || ops.length === 0) {
    return h('span', { class: 'muted' }, 'none');
  }
  const shown = ops.slice(0, 3).map((op) => h('li', null, monitorLink(op)));
  if (ops.length > 3) {
    shown.push(h('li', { class: 'muted' }, `and ${ops.length - 3} more`));
  }
  return h('ul', { class: 'plain' }, shown);
}

function monitorsTable(monitors) {
  if (monitors.length === 0) {
    return h('p', { class: 'muted' }, 'No monitor is running.');
  }
  const more = monitors.length >= MOST_MONITORS
    ? h('p', { class: 'muted' }, `The newest ${MOST_MONITORS} are shown; `, link('operations?kind=async&state=running', 'list them all'), '.')
    : null;
  return [more, table('Running monitors', ['Monitor', 'Node', 'Zone', 'Epoch', 'Attempts', 'Since'], monitors.map((op) => {
    const attempts = op.attempts || [];
    const current = attempts[attempts.length - 1];
    return [monitorLink(op), op.owner ?? '—', op.zone, String(op.epoch), String(attempts.length), time(current && current.started_at)];
  }), (index) => ({ dataset: { op: monitors[index].id, node: monitors[index].owner || '' } }))];
}

/** How long a node that is up has been running, the start as a tooltip. */
function uptime(node) {
  const started = Date.parse(node.started_at);
  if (node.status !== 'up' || Number.isNaN(started)) {
    return h('span', { class: 'muted' }, '—');
  }
  return h('span', { title: node.started_at }, age(Math.max(0, Date.now() - started)));
}

function nodeRow(node, leads, monitors) {
  const leadOf = leads.get(node.id);
  const status = node.status === 'up'
    ? badge('up')
    : badge('down');
  let role = node.role;
  if (leadOf !== undefined && node.status === 'up') {
    role = h('span', { class: 'lead-mark' }, `★ lead of ${leadOf}`);
  } else if (node.status !== 'up') {
    // What its last heartbeat said: a dead lead leads no more.
    role = h('span', { class: 'muted' }, `was ${node.role}`);
  }
  return [
    h('strong', null, node.id),
    status,
    role,
    node.zone,
    String(node.term),
    `${age(node.heartbeat_age_ms)} ago`,
    String(node.running),
    monitorList(monitors.get(node.id)),
    node.version,
    node.sandbox,
    labels(node.labels),
    uptime(node),
  ];
}

function nodesTable(overview, leads, monitors) {
  const nodes = overview.nodes || [];
  if (nodes.length === 0) {
    return h('p', { class: 'muted' }, 'No node has sent a heartbeat in the last minute.');
  }
  const columns = ['Node', 'Status', 'Role', 'Zone', 'Term', 'Heartbeat', 'Drivers', 'Monitors', 'Version', 'Sandbox', 'Labels', 'Uptime'];
  return table('Agent nodes', columns, nodes.map((n) => nodeRow(n, leads, monitors)), (index) => {
    const node = nodes[index];
    const leading = leads.has(node.id) && node.status === 'up';
    return {
      class: `node ${node.status === 'up' ? 'up' : 'down'}${leading ? ' lead' : ''}`,
      dataset: { node: node.id, status: node.status, lead: String(leading) },
    };
  });
}

function zonesTable(overview) {
  const zones = overview.zones || [];
  if (zones.length === 0) {
    return h('p', { class: 'muted' }, 'No zone: no node is known.');
  }
  return table('Zones', ['Zone', 'Lead', 'Term', 'Nodes up'], zones.map((z) => [
    z.zone,
    z.lead ? h('strong', null, z.lead.node) : h('span', { class: 'badge badge-failed' }, 'none'),
    z.lead ? String(z.lead.term) : '—',
    `${z.up} of ${z.nodes.length}`,
  ]), (index) => ({ dataset: { zone: zones[index].zone } }));
}

function managementList(overview) {
  const instances = overview.management || [];
  if (instances.length === 0) {
    return h('p', { class: 'muted' }, 'None found yet.');
  }
  return h('ul', { class: 'plain' }, instances.map((m) => h('li', null, h('strong', null, m.id), ` version ${m.version}`)));
}

/** What changed between two polls, in words. */
function changes(before, after) {
  if (!before) {
    return [];
  }
  const said = [];
  const old = new Map((before.nodes || []).map((n) => [n.id, n]));
  for (const node of after.nodes || []) {
    const was = old.get(node.id);
    if (was && was.status !== node.status) {
      said.push(`${node.id} is ${node.status}.`);
    }
  }
  const oldLeads = new Map((before.zones || []).map((z) => [z.zone, z.lead && z.lead.node]));
  for (const zone of after.zones || []) {
    const lead = zone.lead && zone.lead.node;
    if (oldLeads.has(zone.zone) && oldLeads.get(zone.zone) !== lead) {
      said.push(lead ? `${lead} now leads zone ${zone.zone}.` : `Zone ${zone.zone} has no lead.`);
    }
  }
  return said;
}

export function showCluster(view, ctx) {
  const heading = h('h1', null, 'Cluster');
  const line = h('p', { class: 'summary', id: 'cluster-summary' }, 'Asking management…');
  const problem = h('p', { class: 'error', role: 'alert', hidden: true });
  const announcer = h('p', { class: 'visually-hidden', 'aria-live': 'polite' });
  const zones = h('div');
  const nodes = h('div', { id: 'nodes' });
  const management = h('div');
  const monitors = h('div', { id: 'monitors' });
  // Shown once there is something to show.
  const content = h('div', { hidden: true },
    h('section', { 'aria-labelledby': 'nodes-heading' }, h('h2', { id: 'nodes-heading' }, 'Nodes'), nodes),
    h('section', { 'aria-labelledby': 'monitors-heading' }, h('h2', { id: 'monitors-heading' }, 'Running monitors'), monitors),
    h('div', { class: 'columns' },
      h('section', { 'aria-labelledby': 'zones-heading' }, h('h2', { id: 'zones-heading' }, 'Zones'), zones),
      h('section', { 'aria-labelledby': 'mgmt-heading' }, h('h2', { id: 'mgmt-heading' }, 'Management instances'), management)));
  fill(view, heading, line, problem, announcer, content);
  let last = null;
  return every(POLL_MS, async () => {
    let overview;
    let running;
    try {
      [overview, running] = await Promise.all([
        get('/v1/cluster'),
        get(`/v1/operations?kind=async&state=running&limit=${MOST_MONITORS}`),
      ]);
    } catch (error) {
      problem.hidden = false;
      fill(problem, last ? `${explain(error, true)} What is shown is from before.` : explain(error, true));
      view.classList.toggle('stale', last !== null);
      if (!last) {
        fill(line, 'No answer about the cluster yet.');
      }
      return;
    }
    problem.hidden = true;
    view.classList.remove('stale');
    ctx.setCluster(overview.cluster);
    const leads = leadsByNode(overview);
    const said = changes(last, overview);
    if (said.length) {
      fill(announcer, said.join(' '));
    }
    last = overview;
    content.hidden = false;
    fill(line, summary(overview, leads));
    const monitorOps = running.operations || [];
    fill(nodes, nodesTable(overview, leads, monitorsByNode(monitorOps)));
    fill(monitors, monitorsTable(monitorOps));
    fill(zones, zonesTable(overview));
    fill(management, managementList(overview));
  });
}
