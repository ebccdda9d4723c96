// Live server-sent events read with fetch(): EventSource cannot send the
// Authorization header. Frames are parsed here; a dropped connection is
// opened again with growing pauses, sending `Last-Event-ID` (the last seq
// seen) so that the stream resumes where it stopped, and a frame seen twice
// is dropped by its id.

import { ApiError, authHeaders, errorOf, hooks } from './api.js';

const FIRST_PAUSE_MS = 250;
const LONGEST_PAUSE_MS = 5000;

/** Parses one SSE frame: its id, event name and data lines joined. */
export function parseFrame(frame) {
  const parsed = { id: null, event: 'message', data: null };
  const data = [];
  for (const line of frame.split('\n')) {
    if (line === '' || line.startsWith(':')) {
      continue;
    }
    const colon = line.indexOf(':');
    const field = colon < 0 ? line : line.slice(0, colon);
    let value = colon < 0 ? '' : line.slice(colon + 1);
    if (value.startsWith(' ')) {
      value = value.slice(1);
    }
    if (field === 'id') {
      parsed.id = value;
    } else if (field === 'event') {
      parsed.event = value;
    } else if (field === 'data') {
      data.push(value);
    }
  }
  parsed.data = data.length ? data.join('\n') : null;
  return parsed;
}

/** Splits complete frames off the front of `buffer`: [frames, rest]. */
export function splitFrames(buffer) {
  const text = buffer.replace(/\r\n/g, '\n');
  const frames = text.split('\n\n');
  const rest = frames.pop();
  return [frames, rest];
}

/** Whether a failed connection is worth trying again. */
function retryable(error) {
  if (!(error instanceof ApiError)) {
    return true;
  }
  return error.status === 0 || error.status === 429 || error.status >= 500;
}

/**
 * Follows the SSE stream at `path`: `onItem(data, seq)` for each new frame's
 * JSON data, `onStatus(state, detail)` with `live`, `reconnecting` (detail:
 * why) or `failed` (detail: the ApiError). Returns `stop()`.
 */
export function follow(path, { onItem, onStatus }) {
  const controller = new AbortController();
  let last = 0;
  let pause = FIRST_PAUSE_MS;
  let stopped = false;

  function deliver(frame) {
    const { id, data } = parseFrame(frame);
    if (data === null) {
      return;
    }
    const seq = id === null ? null : Number(id);
    if (seq !== null && Number.isSafeInteger(seq)) {
      if (seq <= last) {
        return;
      }
      last = seq;
    }
    let item;
    try {
      item = JSON.parse(data);
    } catch {
      return;
    }
    onItem(item, seq);
  }

  async function connect() {
    const headers = authHeaders({ Accept: 'text/event-stream' });
    if (last > 0) {
      headers['Last-Event-ID'] = String(last);
    }
    let response;
    try {
      response = await fetch(path, { headers, signal: controller.signal, cache: 'no-store' });
    } catch (error) {
      if (error.name === 'AbortError') {
        throw error;
      }
      throw new ApiError(0, 'unreachable', `management did not answer (${error.message})`);
    }
    if (!response.ok) {
      throw await errorOf(response);
    }
    onStatus('live');
    pause = FIRST_PAUSE_MS;
    const reader = response.body.pipeThrough(new TextDecoderStream()).getReader();
    let buffer = '';
    for (;;) {
      const { value, done } = await reader.read();
      if (done) {
        return;
      }
      buffer += value;
      const [frames, rest] = splitFrames(buffer);
      buffer = rest;
      frames.forEach(deliver);
    }
  }

  async function run() {
    while (!stopped) {
      let why = 'the stream ended';
      try {
        await connect();
      } catch (error) {
        if (stopped || error.name === 'AbortError') {
          return;
        }
        if (!retryable(error)) {
          if (error.status === 401) {
            hooks.unauthorized(error);
          }
          onStatus('failed', error);
          return;
        }
        why = error.message;
      }
      if (stopped) {
        return;
      }
      onStatus('reconnecting', why);
      // A little jitter, so that many tabs do not come back at once.
      await new Promise((resolve) => setTimeout(resolve, pause + Math.random() * pause * 0.2));
      pause = Math.min(pause * 2, LONGEST_PAUSE_MS);
    }
  }

  run();
  return () => {
    stopped = true;
    controller.abort();
  };
}
