// Small helpers to build the page. Text always goes in as text nodes
// (never parsed as HTML), so nothing the API returns can become markup.

/** Builds an element: attributes (`class`, `on<event>` handlers, `dataset`,
 * booleans, strings) and children (nodes, or anything else as text). */
export function h(tag, attrs, ...children) {
  const element = document.createElement(tag);
  for (const [name, value] of Object.entries(attrs || {})) {
    setAttribute(element, name, value);
  }
  append(element, children);
  return element;
}

function setAttribute(element, name, value) {
  if (value === undefined || value === null || value === false) {
    return;
  }
  if (name === 'class') {
    element.className = value;
  } else if (name === 'dataset') {
    Object.assign(element.dataset, value);
  } else if (name.startsWith('on') && typeof value === 'function') {
    element.addEventListener(name.slice(2), value);
  } else if (value === true) {
    element.setAttribute(name, '');
  } else {
    element.setAttribute(name, String(value));
  }
}

/** Appends children: nodes as they are, other values as text, null skipped. */
export function append(element, children) {
  for (const child of [children].flat(Infinity)) {
    if (child === undefined || child === null || child === false) {
      continue;
    }
    element.append(child instanceof Node ? child : document.createTextNode(String(child)));
  }
  return element;
}

/** Replaces an element's children. */
export function fill(element, ...children) {
  element.replaceChildren();
  return append(element, children);
}

/** A link inside the console. */
export function link(route, ...children) {
  return h('a', { href: `#/${route}` }, ...children);
}

/** A state or outcome as a coloured word. */
export function badge(word, extra) {
  return h('span', { class: `badge badge-${word}${extra ? ` ${extra}` : ''}` }, word);
}

/** A value as indented JSON in a block. */
export function jsonBlock(value, label) {
  return h('pre', { class: 'json', tabindex: 0, 'aria-label': label }, JSON.stringify(value, null, 2));
}

/** A value as one line of JSON. */
export function compact(value) {
  return JSON.stringify(value);
}

/** How long ago `ms` milliseconds is, for people. */
export function age(ms) {
  if (ms < 1000) {
    return `${ms} ms`;
  }
  const seconds = ms / 1000;
  if (seconds < 60) {
    return `${seconds.toFixed(seconds < 10 ? 1 : 0)} s`;
  }
  const minutes = Math.floor(seconds / 60);
  if (minutes < 60) {
    return `${minutes} min ${Math.floor(seconds % 60)} s`;
  }
  return `${Math.floor(minutes / 60)} h ${minutes % 60} min`;
}

/** An RFC 3339 time as local date and time, with the full value as a tooltip. */
export function time(iso) {
  if (!iso) {
    return h('span', { class: 'muted' }, '—');
  }
  const date = new Date(iso);
  if (Number.isNaN(date.getTime())) {
    return document.createTextNode(iso);
  }
  const shown = date.toLocaleString(undefined, {
    year: 'numeric', month: 'short', day: 'numeric',
    hour: '2-digit', minute: '2-digit', second: '2-digit',
  });
  return h('time', { datetime: iso, title: iso }, shown);
}

/** An RFC 3339 time as the local time of day to the millisecond (for
 * events and log lines, which come many a second), the full value as a
 * tooltip. */
export function clock(iso) {
  const date = new Date(iso);
  if (!iso || Number.isNaN(date.getTime())) {
    return document.createTextNode(iso || '—');
  }
  const pad = (n, width = 2) => String(n).padStart(width, '0');
  const shown = `${pad(date.getHours())}:${pad(date.getMinutes())}:${pad(date.getSeconds())}.${pad(date.getMilliseconds(), 3)}`;
  return h('time', { datetime: iso, title: iso }, shown);
}

/** A table whose cells carry their column's name, so that narrow screens can
 * show each row as a card. `rows` are arrays of cells; `rowAttrs` gives each
 * row's attributes. */
export function table(caption, columns, rows, rowAttrs) {
  const head = h('thead', null, h('tr', null, columns.map((c) => h('th', { scope: 'col' }, c))));
  const body = h('tbody', null, rows.map((cells, index) => h('tr', rowAttrs ? rowAttrs(index) : null,
    cells.map((cell, column) => h('td', { 'data-label': columns[column] }, cell)))));
  return h('div', { class: 'table-wrap' },
    h('table', { class: 'cards' }, h('caption', { class: 'visually-hidden' }, caption), head, body));
}

/** Labels as `key=value` chips. */
export function labels(map) {
  const entries = Object.entries(map || {});
  if (entries.length === 0) {
    return h('span', { class: 'muted' }, 'none');
  }
  return h('span', { class: 'chips' }, entries.map(([k, v]) => h('span', { class: 'chip' }, `${k}=${v}`)));
}

/** A definition list of [term, value] pairs, skipping undefined values. */
export function facts(pairs) {
  return h('dl', { class: 'facts' }, pairs
    .filter(([, value]) => value !== undefined)
    .map(([term, value]) => [h('dt', null, term), h('dd', null, value ?? h('span', { class: 'muted' }, '—'))]));
}

/** Where an error nobody expected goes: the app shows it in its banner. */
export const unexpected = {
  report(error) {
    console.error(error);
  },
};

/** Runs `task` now and again `ms` after each run ends, until stopped. */
export function every(ms, task) {
  let timer = null;
  let stopped = false;
  const run = async () => {
    timer = null;
    try {
      await task();
    } catch (error) {
      unexpected.report(error);
    } finally {
      if (!stopped) {
        timer = setTimeout(run, ms);
      }
    }
  };
  run();
  return () => {
    stopped = true;
    if (timer !== null) {
      clearTimeout(timer);
    }
  };
}

/** The first 8 characters of an id, for tables (links carry the whole id). */
export function shortId(id) {
  return String(id).slice(0, 8);
}
