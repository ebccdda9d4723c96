// Form fields generated from an operation's params JSON Schema: a field per
// property (text, number, checkbox, a list of lines, a choice for an enum,
// JSON for anything else), labelled with the property's title or name and
// described by its description and bounds. The browser checks what the
// fields can say (required, min, max, lengths); management checks the
// whole schema and its violations are shown under the form. Without a
// schema of properties the params are one JSON object.

import { fill, h } from './dom.js';

/** The one type a property declares (`["string", "null"]` is a string). */
function typeOf(prop) {
  const type = Array.isArray(prop.type) ? prop.type.find((t) => t !== 'null') : prop.type;
  if (type) {
    return type;
  }
  if (Array.isArray(prop.enum)) {
    return 'enum';
  }
  return prop.properties ? 'object' : 'json';
}

/** Words for a property's bounds, e.g. "integer, at least 1". */
function bounds(prop, type) {
  const words = [Array.isArray(prop.enum) ? 'one of the choices' : type];
  if (prop.minimum !== undefined) words.push(`at least ${prop.minimum}`);
  if (prop.maximum !== undefined) words.push(`at most ${prop.maximum}`);
  if (prop.exclusiveMinimum !== undefined) words.push(`above ${prop.exclusiveMinimum}`);
  if (prop.exclusiveMaximum !== undefined) words.push(`below ${prop.exclusiveMaximum}`);
  if (prop.minLength !== undefined) words.push(`${prop.minLength} characters or more`);
  if (prop.maxLength !== undefined) words.push(`${prop.maxLength} characters or fewer`);
  if (prop.pattern !== undefined) words.push(`matching ${prop.pattern}`);
  if (prop.default !== undefined) words.push(`default ${JSON.stringify(prop.default)}`);
  return words.join(', ');
}

function simpleItems(prop) {
  const items = prop.items && typeOf(prop.items);
  return ['string', 'integer', 'number'].includes(items) ? items : null;
}

/** The input of one property and how to read it back: `read()` returns
 * [present, value] or throws an Error saying what is wrong. */
function input(id, name, prop, type, required) {
  const common = { id, name, 'aria-describedby': `${id}-hint ${id}-error`, required };
  if (Array.isArray(prop.enum)) {
    const element = h('select', common,
      required && prop.default === undefined ? h('option', { value: '' }, 'choose…') : null,
      !required ? h('option', { value: '' }, '(not set)') : null,
      prop.enum.map((v, i) => h('option', { value: String(i), selected: JSON.stringify(v) === JSON.stringify(prop.default) }, typeof v === 'string' ? v : JSON.stringify(v))));
    return [element, () => (element.value === '' ? [false] : [true, prop.enum[Number(element.value)]])];
  }
  if (type === 'boolean') {
    const element = h('input', { ...common, type: 'checkbox', required: false, checked: prop.default === true });
    return [element, () => [true, element.checked]];
  }
  if (type === 'integer' || type === 'number') {
    const element = h('input', {
      ...common, type: 'number', inputmode: type === 'integer' ? 'numeric' : 'decimal',
      step: type === 'integer' ? '1' : 'any', min: prop.minimum, max: prop.maximum,
      value: typeof prop.default === 'number' ? prop.default : undefined,
    });
    return [element, () => {
      if (element.value.trim() === '') return [false];
      const value = Number(element.value);
      if (!Number.isFinite(value) || (type === 'integer' && !Number.isInteger(value))) {
        throw new Error(`${name} must be ${type === 'integer' ? 'a whole number' : 'a number'}`);
      }
      return [true, value];
    }];
  }
  if (type === 'string') {
    const element = h('input', {
      ...common, type: 'text', minlength: prop.minLength, maxlength: prop.maxLength,
      value: typeof prop.default === 'string' ? prop.default : undefined, autocomplete: 'off',
    });
    return [element, () => (element.value === '' && !required ? [false] : [true, element.value])];
  }
  const items = type === 'array' ? simpleItems(prop) : null;
  if (items) {
    const element = h('textarea', { ...common, rows: 3 });
    if (Array.isArray(prop.default)) element.value = prop.default.join('\n');
    return [element, () => {
      const lines = element.value.split('\n').filter((line) => line !== '');
      if (lines.length === 0 && !required) return [false];
      return [true, lines.map((line) => {
        if (items === 'string') return line;
        const value = Number(line);
        if (!Number.isFinite(value)) throw new Error(`${name}: "${line}" is not a number`);
        return value;
      })];
    }];
  }
  return jsonInput(common, name, prop.default, required);
}

/** A textarea holding JSON. */
function jsonInput(common, name, initial, required) {
  const element = h('textarea', { ...common, rows: 4, class: 'code', spellcheck: 'false' });
  if (initial !== undefined) element.value = JSON.stringify(initial, null, 2);
  return [element, () => {
    if (element.value.trim() === '' && !required) return [false];
    try {
      return [true, JSON.parse(element.value)];
    } catch (error) {
      throw new Error(`${name} is not valid JSON: ${error.message}`);
    }
  }];
}

function hintOf(prop, type, extra) {
  const parts = [];
  if (prop.description) parts.push(prop.description);
  parts.push(`(${bounds(prop, type)}${extra ? `; ${extra}` : ''})`);
  return parts.join(' ');
}

/** One field: label, input, hint and a place for its error. */
function field(prefix, name, prop, required) {
  const id = `${prefix}-${name.replace(/[^A-Za-z0-9_-]/g, '_')}`;
  const type = typeOf(prop);
  const [element, read] = input(id, name, prop, type, required);
  const extra = element.tagName === 'TEXTAREA'
    ? (type === 'array' && simpleItems(prop) ? 'one item a line' : 'as JSON')
    : '';
  const error = h('p', { class: 'field-error', id: `${id}-error`, 'aria-live': 'polite' });
  const label = h('label', { for: id }, prop.title || name, required ? h('span', { class: 'required' }, ' (required)') : null);
  const box = type === 'boolean'
    ? h('div', { class: 'field check', dataset: { param: name } }, element, label, h('p', { class: 'hint', id: `${id}-hint` }, hintOf(prop, type)), error)
    : h('div', { class: 'field', dataset: { param: name } }, label, element, h('p', { class: 'hint', id: `${id}-hint` }, hintOf(prop, type, extra)), error);
  return { name, box, element, error, read };
}

/** Whether a schema describes its params as named properties. */
function hasProperties(schema) {
  return schema && typeof schema === 'object' && schema.properties && typeof schema.properties === 'object'
    && (schema.type === undefined || schema.type === 'object');
}

/**
 * The fields for `schema` (`null` when the operation has none). Returns
 * the element and `collect()`: the params object, or null after marking
 * what is wrong.
 */
export function paramsFields(schema, prefix) {
  const fields = [];
  let free = null;
  if (hasProperties(schema)) {
    const required = new Set(Array.isArray(schema.required) ? schema.required : []);
    // The required ones first, each group in the schema's order.
    const entries = Object.entries(schema.properties);
    const ordered = [...entries.filter(([n]) => required.has(n)), ...entries.filter(([n]) => !required.has(n))];
    for (const [name, prop] of ordered) {
      fields.push(field(prefix, name, prop && typeof prop === 'object' ? prop : {}, required.has(name)));
    }
    if (schema.additionalProperties !== false) {
      free = field(prefix, '(other params)', {
        description: 'Params the schema does not name, as a JSON object.', type: 'object',
      }, false);
    }
  } else {
    free = field(prefix, 'params', {
      title: 'Params',
      description: schema ? 'The schema names no properties: give the params as a JSON object.' : 'This operation has no params schema: give the params as a JSON object.',
      type: 'object',
      default: {},
    }, false);
  }
  const all = free ? [...fields, free] : fields;
  const element = h('div', { class: 'params' }, all.map((f) => f.box));

  function collect() {
    const params = {};
    let ok = true;
    for (const f of all) {
      fill(f.error);
      f.element.removeAttribute('aria-invalid');
      try {
        const [present, value] = f.read();
        if (!present) continue;
        if (f === free) {
          if (value === null || typeof value !== 'object' || Array.isArray(value)) {
            throw new Error(`${f.name} must be a JSON object`);
          }
          Object.assign(params, value);
        } else {
          params[f.name] = value;
        }
      } catch (error) {
        ok = false;
        f.element.setAttribute('aria-invalid', 'true');
        fill(f.error, error.message);
      }
    }
    return ok ? params : null;
  }
  return { element, collect, empty: all.length === 0 };
}
