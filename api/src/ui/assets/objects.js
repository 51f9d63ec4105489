// The object browser: the results bucket under a prefix, newest first or by
// key, a page at a time, each object downloadable through the API.

import { $, h, get, start, say, clear, errorNodes, when, bytes, downloadLink } from './common.js';

start();

const params = new URLSearchParams(location.search);
$('#obj-prefix').value = params.get('prefix') || '';
if (params.get('order')) $('#obj-order').value = params.get('order');

let cursor = null;

function crumbs(prefix) {
  // Each folder of the prefix, clickable, to widen the listing again.
  const parts = prefix.split('/').filter(Boolean);
  const links = [h('a', { href: '#', onclick: (e) => { e.preventDefault(); show(''); } }, 'all')];
  let path = '';
  for (const part of parts) {
    path += `${part}/`;
    const target = path;
    links.push(' / ', h('a', { href: '#', onclick: (e) => { e.preventDefault(); show(target); } }, part));
  }
  return links;
}

function row(o) {
  const slash = o.key.lastIndexOf('/');
  const folder = o.key.slice(0, slash + 1);
  const name = o.key.slice(slash + 1);
  return h('tr', { 'data-key': o.key },
    h('td', { class: 'mono' },
      folder ? h('a', { href: '#', class: 'muted', onclick: (e) => { e.preventDefault(); show(folder); } }, folder) : null,
      name, ' ', downloadLink(o.download, name || 'object', 'download')),
    h('td', { class: 'num' }, bytes(o.size)),
    h('td', {}, when(o.last_modified)));
}

async function list(more) {
  const prefix = $('#obj-prefix').value;
  const order = $('#obj-order').value;
  const query = new URLSearchParams({ prefix, order, limit: '50' });
  if (more && cursor) query.set('cursor', cursor);
  const out = $('#obj-out');
  say(out, 'pending', 'Listing…');
  const res = await get(`/v1/objects?${query}`);
  if (!res.ok) {
    say(out, 'err', ...errorNodes(res.error));
    return;
  }
  const data = res.data;
  const body = $('#objects tbody');
  const rows = data.objects.map(row);
  if (more) body.append(...rows);
  else body.replaceChildren(...rows);
  cursor = data.next_cursor;
  $('#obj-more').hidden = !cursor;
  $('#obj-crumbs').replaceChildren(...crumbs(prefix));
  if (!body.children.length) say(out, 'warn', prefix ? `No objects under “${prefix}”.` : 'The bucket has no objects yet.');
  else if (data.scan_complete === false) {
    say(out, 'warn', `Newest first among the first ${data.scanned} keys only; narrow the prefix (for example results/${new Date().getFullYear()}/) to see them all.`);
  } else clear(out);
  history.replaceState(null, '', `?${new URLSearchParams({ prefix, order })}`);
}

function show(prefix) {
  $('#obj-prefix').value = prefix;
  list(false);
}

$('#objects-form').addEventListener('submit', (e) => { e.preventDefault(); list(false); });
$('#obj-order').addEventListener('change', () => list(false));
$('#obj-more').addEventListener('click', () => list(true));
list(false);
