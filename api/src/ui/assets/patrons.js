// Patrons: find one by id or name, open them to change their name or
// e-mail, block them with a reason or unblock them, and add new ones.
// The open patron is in the address (`?id=`), so a reload keeps them.

import { $, h, get, post, call, start, say, clear, errorNodes, when, badge } from './common.js';
import { refuse, unmark, busy } from './admin.js';

start();

const results = $('#patron-results');
const searchOut = $('#patron-search-out');
const more = $('#patron-more');
const card = $('#patron-card');
let query = '';
let cursor = null;
let current = null;

const status = (p) => (p.blocked ? badge('blocked') : badge('active'));

function row(p) {
  return h('tr', { 'data-patron': p.id },
    h('td', { class: 'mono' }, p.id),
    h('td', {}, p.name),
    h('td', {}, p.email || ''),
    h('td', {}, status(p), p.blocked ? h('div', { class: 'muted' }, p.blocked.reason) : null),
    h('td', { class: 'actions' }, h('button', {
      type: 'button', class: 'small secondary', 'aria-label': `Open ${p.name}`,
      onclick: () => open(p.id),
    }, 'Open')));
}

async function search(append) {
  const params = new URLSearchParams({ limit: '20' });
  if (query) params.set('q', query);
  if (append && cursor) params.set('cursor', cursor);
  say(searchOut, 'pending', 'Searching…');
  const res = await get(`/v1/patrons?${params}`);
  if (!res.ok) {
    if (!append) results.hidden = true;
    refuse(searchOut, $('#patron-search'), res.error, 'Not searched: ');
    return;
  }
  unmark($('#patron-search'));
  const found = res.data.patrons.map(row);
  if (append) results.tBodies[0].append(...found);
  else results.tBodies[0].replaceChildren(...found);
  cursor = res.data.next_cursor;
  more.hidden = !cursor;
  const shown = results.tBodies[0].rows.length;
  results.hidden = shown === 0;
  if (shown === 0) say(searchOut, 'warn', query ? `No patron's id starts with, or name contains, “${query}”.` : 'No patrons yet.');
  else clear(searchOut);
}

function show(p) {
  current = p;
  card.hidden = false;
  $('#patron-heading').textContent = p.name;
  $('#patron-id').textContent = p.id;
  $('#patron-status').replaceChildren(status(p),
    ...(p.blocked ? [' since ', when(p.blocked.since), ': ', h('span', { class: 'reason' }, p.blocked.reason)] : []));
  $('#patron-loans-link').href = `/ui/patrons/${encodeURIComponent(p.id)}`;
  $('#edit-name').value = p.name;
  $('#edit-email').value = p.email || '';
  $('#block-form').hidden = Boolean(p.blocked);
  $('#unblock-form').hidden = !p.blocked;
  $('#block-reason').value = '';
  // The row in the search results says the same.
  const shown = results.querySelector(`tr[data-patron="${CSS.escape(p.id)}"]`);
  if (shown) shown.replaceWith(row(p));
}

async function open(id) {
  clear($('#edit-out'));
  clear($('#block-out'));
  const res = await get(`/v1/patrons/${encodeURIComponent(id)}`);
  if (!res.ok) {
    card.hidden = true;
    say(searchOut, 'err', h('strong', {}, `Patron “${id}”: `), ...errorNodes(res.error));
    return;
  }
  const url = new URL(location.href);
  url.searchParams.set('id', res.data.id);
  history.replaceState(null, '', url);
  show(res.data);
  card.scrollIntoView({ block: 'nearest' });
}

/** PATCH the open patron; shows the outcome in `out`, fields marked in `scope`. */
async function change(body, out, scope, done) {
  say(out, 'pending', 'Saving…');
  const res = await call('PATCH', `/v1/patrons/${encodeURIComponent(current.id)}`, body);
  if (!res.ok) {
    refuse(out, scope, res.error, 'Not changed: ');
    return;
  }
  unmark(scope);
  show(res.data);
  say(out, 'ok', h('strong', {}, done));
}

$('#patron-search').addEventListener('submit', (event) => {
  event.preventDefault();
  query = $('#patron-q').value.trim();
  busy(event.currentTarget, () => search(false));
});
more.addEventListener('click', () => search(true));

$('#patron-edit').addEventListener('submit', (event) => {
  event.preventDefault();
  const form = event.currentTarget;
  const body = { name: $('#edit-name').value };
  const email = $('#edit-email').value.trim();
  if (email) body.email = email;
  busy(form, () => change(body, $('#edit-out'), form, 'Saved.'));
});

$('#block-form').addEventListener('submit', (event) => {
  event.preventDefault();
  const form = event.currentTarget;
  busy(form, () => change({ blocked: { reason: $('#block-reason').value } }, $('#block-out'), form,
    'Blocked: loans, renewals and holds are refused until unblocked.'));
});

$('#unblock-form').addEventListener('submit', (event) => {
  event.preventDefault();
  const form = event.currentTarget;
  busy(form, () => change({ blocked: null }, $('#block-out'), form, 'Unblocked.'));
});

$('#patron-add').addEventListener('submit', (event) => {
  event.preventDefault();
  const form = event.currentTarget;
  const body = { id: $('#add-id').value.trim(), name: $('#add-name').value };
  const email = $('#add-email').value.trim();
  if (email) body.email = email;
  busy(form, async () => {
    const out = $('#add-out');
    say(out, 'pending', 'Adding…');
    const res = await post('/v1/patrons', body);
    if (!res.ok) {
      refuse(out, form, res.error, 'Not added: ');
      return;
    }
    unmark(form);
    form.reset();
    say(out, 'ok', h('strong', {}, 'Added: '), `${res.data.name} (${res.data.id}).`);
    await open(res.data.id);
  });
});

const asked = new URLSearchParams(location.search).get('id');
if (asked) open(asked);
