// Calls to the management API on this origin. The token lives in
// sessionStorage (this tab only, gone when it closes) and goes out only as
// `Authorization: Bearer`; the page never shows it.

const TOKEN_KEY = 'zf-console-token';

/** The token of this session: '' when none was given (an instance without
 * tokens answers loopback without one). */
export function token() {
  return sessionStorage.getItem(TOKEN_KEY) ?? '';
}

/** Whether the user signed in during this session (with or without a token). */
export function signedIn() {
  return sessionStorage.getItem(TOKEN_KEY) !== null;
}

export function keepToken(value) {
  sessionStorage.setItem(TOKEN_KEY, value);
}

export function forgetToken() {
  sessionStorage.removeItem(TOKEN_KEY);
}

/** An answer other than 2xx, or no answer: `status` 0 when none came. */
export class ApiError extends Error {
  constructor(status, code, message, violations) {
    super(message);
    this.name = 'ApiError';
    this.status = status;
    this.code = code;
    this.violations = violations || [];
  }
}

/** Called on every 401, e.g. to ask for a token again. */
export const hooks = {
  unauthorized() {},
};

/** The headers every call sends: the token, when there is one. */
export function authHeaders(extra, withToken = token()) {
  const headers = { ...extra };
  if (withToken) {
    headers.Authorization = `Bearer ${withToken}`;
  }
  return headers;
}

/** An API error from a response that is not 2xx. */
export async function errorOf(response) {
  const text = await response.text().catch(() => '');
  let body = null;
  try {
    body = JSON.parse(text);
  } catch {
    // Not JSON (e.g. a proxy's page): the status says enough.
  }
  const error = body && body.error;
  return new ApiError(
    response.status,
    (error && error.code) || `http_${response.status}`,
    (error && error.message) || text.slice(0, 300) || response.statusText,
    error && Array.isArray(error.violations) ? error.violations : [],
  );
}

/** Calls the API and returns its JSON; throws an ApiError otherwise.
 * `options.token` overrides the session's (to try one at login). */
export async function api(method, path, body, options = {}) {
  const headers = authHeaders({ Accept: 'application/json' }, options.token ?? token());
  const init = { method, headers, cache: 'no-store' };
  if (body !== undefined) {
    headers['Content-Type'] = 'application/json';
    init.body = JSON.stringify(body);
  }
  let response;
  try {
    response = await fetch(path, init);
  } catch (error) {
    throw new ApiError(0, 'unreachable', `management did not answer (${error.message})`);
  }
  if (!response.ok) {
    const error = await errorOf(response);
    if (error.status === 401 && options.token === undefined) {
      hooks.unauthorized(error);
    }
    throw error;
  }
  const text = await response.text();
  return text ? JSON.parse(text) : null;
}

export const get = (path) => api('GET', path);

/** What an error means for the person reading the page; `retrying` when
 * the page asks again by itself (polls and streams). */
export function explain(error, retrying = false) {
  if (!(error instanceof ApiError)) {
    return `Something went wrong in the console: ${error && error.message ? error.message : error}`;
  }
  const again = retrying ? ' The console keeps trying.' : ' Try again in a moment.';
  switch (error.status) {
    case 0:
      return `Management does not answer: ${error.message}. It may be restarting.${again}`;
    case 401:
      return `Your token was refused (401 ${error.code}): ${error.message}`;
    case 403:
      if (error.code === 'host_not_allowed') {
        return `Management refuses this address (403 ${error.code}): ${error.message}`;
      }
      return `Your token's role may not do this (403 ${error.code}): ${error.message}`;
    case 503:
      return `The cluster is not available (503 ${error.code}): ${error.message}.${again}`;
    default:
      return `${error.status} ${error.code}: ${error.message}`;
  }
}

/** A path with a query string of the values that are set. */
export function withQuery(path, query) {
  const params = new URLSearchParams();
  for (const [key, value] of Object.entries(query)) {
    if (value !== undefined && value !== null && value !== '') {
      params.set(key, String(value));
    }
  }
  const text = params.toString();
  return text ? `${path}?${text}` : path;
}

/** A path segment, escaped. */
export function segment(value) {
  return encodeURIComponent(value);
}
