// What every page shares: calling the JSON API, building DOM nodes without
// ever parsing data as HTML, showing outcomes, the health banner, the live
// event feed, and downloads. Plain ES modules: no build step.

const TOKEN_KEY = 'bibliomq.token';
const BRANCH_KEY = 'bibliomq.branch';

/** An element with attributes (`on*` become listeners) and children (text is text, never markup). */
export function h(tag, attrs = {}, ...children) {
  const el = document.createElement(tag);
  setAttrs(el, attrs);
  for (const child of children.flat(Infinity)) {
    if (child === null || child === undefined || child === false) continue;
    el.append(child instanceof Node ? child : String(child));
  }
  return el;
}

/** An SVG element (they need their namespace). */
export function svg(tag, attrs = {}, ...children) {
  const el = document.createElementNS('http://www.w3.org/2000/svg', tag);
  setAttrs(el, attrs);
  for (const child of children.flat(Infinity)) {
    if (child === null || child === undefined) continue;
    el.append(child instanceof Node ? child : String(child));
  }
  return el;
}

function setAttrs(el, attrs) {
  for (const [name, value] of Object.entries(attrs || {})) {
    if (value === null || value === undefined || value === false) continue;
    if (name.startsWith('on') && typeof value === 'function') {
      el.addEventListener(name.slice(2), value);
    } else if (name === 'class') {
      el.setAttribute('class', value);
    } else {
      el.setAttribute(name, value === true ? '' : String(value));
    }
  }
}

export const $ = (selector, root = document) => root.querySelector(selector);

// ---------------------------------------------------------------- the API

function authHeaders(headers) {
  // The API may be set up to ask for a bearer token on /v1; a person types
  // it once (see askForToken) and this browser sends it from then on.
  const token = localStorage.getItem(TOKEN_KEY);
  if (token) headers.Authorization = `Bearer ${token}`;
  return headers;
}

/**
 * Calls the API. Never throws: the answer is `{ok, status, data, headers}`,
 * and when not ok also `error: {code, message, ...}`, taken from the API's
 * JSON error body when there is one.
 *
 * A 401 is not an answer to show: the call waits for the person to give the
 * token (askForToken) and is sent again with it, so what they asked for
 * happens and nothing typed on the page is lost. Sending again is safe, a
 * POST too: the API checks the token before anything else, so a refused
 * request changed nothing.
 */
export async function call(method, path, body, extraHeaders = {}) {
  for (;;) {
    const sent = localStorage.getItem(TOKEN_KEY);
    const answer = await send(method, path, body, extraHeaders);
    if (answer.status !== 401) return answer;
    // A token given while this call was on its way is tried before asking.
    if (localStorage.getItem(TOKEN_KEY) === sent) await askForToken();
  }
}

async function send(method, path, body, extraHeaders) {
  const headers = authHeaders({ Accept: 'application/json', ...extraHeaders });
  const init = { method, headers };
  if (body !== undefined) {
    headers['Content-Type'] = 'application/json';
    init.body = JSON.stringify(body);
  }
  let response;
  try {
    response = await fetch(path, init);
  } catch {
    return {
      ok: false, status: 0, data: null, headers: new Headers(),
      error: { code: 'network', message: 'the API could not be reached; it may be down or restarting' },
    };
  }
  let data = null;
  const text = await response.text().catch(() => '');
  try { data = text ? JSON.parse(text) : null; } catch { data = text; }
  if (response.ok) return { ok: true, status: response.status, data, headers: response.headers };
  const error = (data && typeof data === 'object' && data.error) || {
    code: `http_${response.status}`,
    message: `the API answered ${response.status} ${response.statusText}`.trim(),
  };
  return { ok: false, status: response.status, data, headers: response.headers, error };
}

export const get = (path) => call('GET', path);
export const post = (path, body, headers) => call('POST', path, body, headers);

/** The API's message, with its code for whoever reports a problem. */
export function errorNodes(error) {
  return [error.message || 'something went wrong', ' ', h('code', {}, `(${error.code})`)];
}

/** Shows an outcome in a `.outcome` element: kind is ok, err, warn or pending. */
export function say(el, kind, ...content) {
  el.className = `outcome ${kind}`;
  el.replaceChildren(...content.flat());
}

export function clear(el) {
  el.className = 'outcome';
  el.replaceChildren();
}

// ---------------------------------------------------------------- formats

const dateTime = new Intl.DateTimeFormat(undefined, { dateStyle: 'medium', timeStyle: 'short' });
const dateOnly = new Intl.DateTimeFormat(undefined, { dateStyle: 'medium' });
const timeOnly = new Intl.DateTimeFormat(undefined, { hour: '2-digit', minute: '2-digit', second: '2-digit' });

export const when = (iso) => (iso ? dateTime.format(new Date(iso)) : '—');
export const day = (iso) => (iso ? dateOnly.format(new Date(iso)) : '—');
export const clock = (iso) => timeOnly.format(iso ? new Date(iso) : new Date());

export function bytes(n) {
  if (n === null || n === undefined) return '—';
  const units = ['B', 'KiB', 'MiB', 'GiB', 'TiB'];
  let value = n;
  let unit = 0;
  while (value >= 1024 && unit < units.length - 1) { value /= 1024; unit += 1; }
  return unit === 0 ? `${value} B` : `${value.toFixed(value < 10 ? 1 : 0)} ${units[unit]}`;
}

export const badge = (text, kind = text) => h('span', { class: `badge ${kind}` }, String(text).replace(/_/g, ' '));

export const short = (id) => String(id).slice(0, 8);

/** The display name of a branch code, from the list every page carries. */
export function branchName(code) {
  const option = document.querySelector(`#branch-names option[value="${CSS.escape(code)}"]`);
  return option ? option.textContent : code;
}

// ---------------------------------------------------------------- pages

/** Every page: the health banner, remembered branch choices, token prompt, the caller's role. */
export function start() {
  showCaller();
  for (const select of document.querySelectorAll('select[data-branch]')) {
    const saved = localStorage.getItem(BRANCH_KEY);
    if (saved && [...select.options].some((o) => o.value === saved)) select.value = saved;
    select.addEventListener('change', () => localStorage.setItem(BRANCH_KEY, select.value));
  }
  watchHealth();
}

const SERVICES = {
  rabbitmq: 'RabbitMQ (the message broker): loans, renewals, returns, task submissions and the live feed wait for it',
  postgres: 'PostgreSQL (the database): nothing can be looked up or recorded',
  s3: 'object storage: large task results cannot be stored or downloaded',
};

let healthTimer = null;

/** Polls `/readyz` and says plainly what is down, or that the API itself is. */
export async function watchHealth() {
  clearTimeout(healthTimer);
  const banner = $('#banner');
  const pill = $('#health');
  let pause = 5000;
  try {
    const response = await fetch('/readyz', { headers: { Accept: 'application/json' }, cache: 'no-store' });
    const body = await response.json().catch(() => null);
    if (response.ok) {
      pill.textContent = 'all services up';
      pill.className = 'health ok';
      banner.hidden = true;
      banner.replaceChildren();
    } else {
      const down = Object.entries((body && body.checks) || {})
        .filter(([, state]) => state !== 'ok')
        .map(([name]) => SERVICES[name] || name);
      pill.textContent = 'degraded';
      pill.className = 'health down';
      banner.className = 'banner';
      banner.replaceChildren(
        h('strong', {}, 'Not everything can be reached. '),
        down.length ? `Down: ${down.join('; ')}.` : `The API is not ready (${response.status}).`,
        ' This page keeps checking.',
      );
      banner.hidden = false;
      pause = 2000;
    }
  } catch {
    pill.textContent = 'API unreachable';
    pill.className = 'health down';
    banner.className = 'banner';
    banner.replaceChildren(
      h('strong', {}, 'The API cannot be reached. '),
      `Nothing answers at ${location.origin}; it may be stopped or restarting. This page keeps trying.`,
    );
    banner.hidden = false;
    pause = 2000;
  }
  healthTimer = setTimeout(watchHealth, pause);
}

let tokenGiven = null;

/** Whether the server asks for API keys (BIBLIOMQ_AUTH=on). */
const keysOn = () => document.body.dataset.auth === 'on';

/** What the caller is, once `/v1/me` has said; null before. */
export let caller = null;

/**
 * Asks the API who this browser is (its key's role, branch, patron) and
 * offers only what that role may do: elements with `data-roles` show for
 * those roles only, `data-own-patron` inputs hold a patron key's own patron.
 * With keys on and none kept yet, asks for one first; a refused `/v1/me`
 * otherwise waits for the next key given (askForToken calls this again).
 */
export async function showCaller() {
  if (keysOn() && !localStorage.getItem(TOKEN_KEY)) {
    askForToken();
    return;
  }
  const answer = await send('GET', '/v1/me', undefined, {});
  if (!answer.ok) {
    // A kept key that is refused (revoked, mistyped): ask for another.
    if (keysOn() && answer.status === 401) askForToken();
    return;
  }
  caller = answer.data;
  // The style sheet hides `data-roles` elements not for this role, those
  // made later included.
  document.body.dataset.role = caller.role;
  for (const el of document.querySelectorAll('[data-roles]')) {
    el.hidden = !el.dataset.roles.split(' ').includes(caller.role);
  }
  for (const input of document.querySelectorAll('input[data-own-patron]')) {
    if (caller.role === 'patron') {
      input.value = caller.patron;
      input.readOnly = true;
    }
  }
  const who = $('#who');
  if (!who) return;
  if (!caller.auth) {
    who.replaceChildren('open access (BIBLIOMQ_AUTH=off)');
    return;
  }
  const scope = caller.branch ? ` at ${caller.branch}` : caller.patron ? ` ${caller.patron}` : '';
  who.replaceChildren(
    h('span', {}, `${caller.role}${scope}`), ' ', h('code', {}, caller.key), ' ',
    h('button', {
      type: 'button', class: 'link',
      onclick: () => { localStorage.removeItem(TOKEN_KEY); location.reload(); },
    }, 'Forget key'),
  );
  document.dispatchEvent(new CustomEvent('bibliomq:caller', { detail: caller }));
}

/**
 * The API said 401: asks for its token and keeps it in this browser.
 * Resolves once the person has given one. However many calls were refused
 * meanwhile, there is one prompt and they all wait for it.
 */
export function askForToken() {
  if (tokenGiven) return tokenGiven;
  // A token already kept here was refused: it is stale, or mistyped.
  const refused = Boolean(localStorage.getItem(TOKEN_KEY));
  tokenGiven = new Promise((resolve) => {
    const input = h('input', {
      id: 'api-token', type: 'password', autocomplete: 'off', required: true,
    });
    const form = h('form', {
      id: 'api-token-form', class: 'banner warn', role: 'alert',
      onsubmit: (e) => {
        e.preventDefault();
        const token = input.value.trim();
        if (!token) return;
        localStorage.setItem(TOKEN_KEY, token);
        form.remove();
        tokenGiven = null;
        resolve(token);
        showCaller();
      },
    },
    keysOn()
      ? h('strong', {}, refused ? 'The API refused the key this browser had. ' : 'This desk needs an API key. ')
      : h('strong', {}, refused ? 'The API refused the token this browser had. ' : 'This API asks for a token. '),
    h('label', { for: 'api-token' }, keysOn() ? 'Key' : 'Token'), input, h('button', { type: 'submit' }, 'Use it'));
    $('#banner').after(form);
    input.focus();
  });
  return tokenGiven;
}

// ---------------------------------------------------------------- downloads

/**
 * A download link to the API. A plain link, unless a token is in use: a
 * link cannot send it, so the file is then fetched with it and saved.
 */
export function downloadLink(href, filename, label = 'Download') {
  return h('a', {
    class: 'button', href, download: filename,
    onclick: async (event) => {
      const token = localStorage.getItem(TOKEN_KEY);
      if (!token) return;
      event.preventDefault();
      const response = await fetch(href, { headers: { Authorization: `Bearer ${token}` } });
      if (!response.ok) return;
      const url = URL.createObjectURL(await response.blob());
      const a = h('a', { href: url, download: filename });
      document.body.append(a);
      a.click();
      a.remove();
      setTimeout(() => URL.revokeObjectURL(url), 10000);
    },
  }, label);
}

// ---------------------------------------------------------------- live events

const sleep = (ms) => new Promise((resolve) => { setTimeout(resolve, ms); });

/**
 * Follows `/v1/events/stream` (server-sent events) and calls `onEvent` with
 * `{routing_key, event}` for each; `onState` hears 'live' or 'down'.
 * Read with fetch rather than EventSource so that a token can be sent;
 * reconnects by itself with a growing pause.
 */
export async function followEvents(keys, onEvent, onState) {
  let pause = 500;
  for (;;) {
    try {
      const sent = localStorage.getItem(TOKEN_KEY);
      const response = await fetch(`/v1/events/stream?keys=${encodeURIComponent(keys)}`, {
        headers: authHeaders({ Accept: 'text/event-stream' }),
        cache: 'no-store',
      });
      if (response.status === 401) {
        onState('down', 'waiting for the API token');
        if (localStorage.getItem(TOKEN_KEY) === sent) await askForToken();
        continue;
      }
      if (!response.ok) {
        const body = await response.json().catch(() => null);
        throw new Error((body && body.error && body.error.message) || `the API answered ${response.status}`);
      }
      const reader = response.body.pipeThrough(new TextDecoderStream()).getReader();
      let buffer = '';
      for (;;) {
        const { value, done } = await reader.read();
        if (done) break;
        buffer += value;
        let end = buffer.indexOf('\n\n');
        while (end >= 0) {
          const block = buffer.slice(0, end);
          buffer = buffer.slice(end + 2);
          let name = 'message';
          const data = [];
          for (const line of block.split('\n')) {
            if (line.startsWith('event:')) name = line.slice(6).trim();
            else if (line.startsWith('data:')) data.push(line.slice(5).replace(/^ /, ''));
          }
          if (name === 'ready') {
            pause = 500;
            onState('live');
          } else if (name === 'error') {
            // The stream's last event: its key was revoked, say, and the
            // next attempt will ask for another.
            const body = (() => { try { return JSON.parse(data.join('\n')); } catch { return null; } })();
            onState('down', (body && body.error && body.error.message) || 'the feed was refused');
          } else if (name === 'message' && data.length) {
            try { onEvent(JSON.parse(data.join('\n'))); } catch { /* not ours: skip */ }
          }
          end = buffer.indexOf('\n\n');
        }
      }
      onState('down', 'the feed closed; reconnecting');
    } catch (e) {
      onState('down', e.message || 'the feed broke; reconnecting');
    }
    await sleep(pause);
    pause = Math.min(pause * 2, 10000);
  }
}

/** Calls `fn` now and every `ms`, skipping beats while the page is hidden. */
export function every(ms, fn) {
  const tick = async () => {
    if (!document.hidden) await fn();
    setTimeout(tick, ms);
  };
  tick();
}
