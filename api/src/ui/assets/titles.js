// Add a title with its copies: the title first (POST /v1/titles), then each
// copy (POST /v1/titles/{isbn}/copies). A refusal stops there and names the
// field; what was added stays added, so pressing the button again after a
// correction adds only what is missing, never a second copy.

import { $, h, post, start, say, clear, branchName } from './common.js';
import { refuse, unmark, busy } from './admin.js';

start();

const form = $('#title-form');
const out = $('#title-out');
const rows = $('#copy-rows tbody');
const titleFields = $('#title-fields');

function renumber() {
  [...rows.rows].forEach((row, i) => {
    const n = i + 1;
    row.querySelector('.n').textContent = n;
    row.querySelector('select').setAttribute('aria-label', `Branch of copy ${n}`);
    row.querySelector('input').setAttribute('aria-label', `Barcode of copy ${n}`);
  });
  for (const row of rows.rows) {
    row.querySelector('.remove').disabled = Boolean(row.dataset.added) || rows.rows.length < 2;
  }
}

function addRow() {
  const row = $('#copy-row-template').content.firstElementChild.cloneNode(true);
  const previous = rows.rows[rows.rows.length - 1];
  if (previous) row.querySelector('select').value = previous.querySelector('select').value;
  row.querySelector('.remove').addEventListener('click', () => {
    row.remove();
    renumber();
  });
  rows.append(row);
  renumber();
  return row;
}

function titleRequest() {
  const request = {
    isbn: $('#title-isbn').value.trim(),
    title: $('#title-title').value.trim(),
    authors: $('#title-authors').value.split(';').map((a) => a.trim()).filter(Boolean),
  };
  const year = $('#title-year').value.trim();
  // A number when it is one; anything else goes as typed, for the API to judge.
  if (year) request.year = /^-?[0-9]+$/.test(year) ? Number(year) : year;
  return request;
}

function lockTitle(locked) {
  for (const input of titleFields.querySelectorAll('input')) input.readOnly = locked;
}

const bookLink = (isbn, title) => h('a', { href: `/ui/books/${encodeURIComponent(isbn)}` }, title);

async function save() {
  unmark(form);
  if (!form.dataset.isbn) {
    const request = titleRequest();
    say(out, 'pending', 'Adding the title…');
    const res = await post('/v1/titles', request);
    if (!res.ok) {
      refuse(out, titleFields, res.error, 'Title not added: ');
      if (res.error.code === 'title_exists' && request.isbn) {
        out.append(' ', bookLink(request.isbn, 'See that title'), '.');
      }
      return;
    }
    form.dataset.isbn = res.data.isbn;
    form.dataset.title = res.data.title;
    // The title is in the catalogue now: its fields stay as they were sent.
    lockTitle(true);
  }
  const { isbn, title } = form.dataset;
  const list = [...rows.rows];
  for (const [i, row] of list.entries()) {
    if (row.dataset.added) continue;
    const request = { branch: row.querySelector('select').value };
    const barcode = row.querySelector('input').value.trim();
    if (barcode) request.barcode = barcode;
    say(out, 'pending', `Adding copy ${i + 1} of ${list.length}…`);
    const res = await post(`/v1/titles/${encodeURIComponent(isbn)}/copies`, request);
    if (!res.ok) {
      refuse(out, row, res.error, `The title is added, but not copy ${i + 1}: `);
      out.append(h('br'), 'Correct it and press the button again: the title and the copies already added stay, and are not added twice.');
      return;
    }
    row.dataset.added = res.data.barcode;
    row.querySelector('.added').textContent = res.data.barcode;
    row.querySelector('select').disabled = true;
    row.querySelector('input').readOnly = true;
    row.querySelector('input').value = res.data.barcode;
    renumber();
  }
  const copies = [...rows.rows].map((r) => `${r.dataset.added} (${branchName(r.querySelector('select').value)})`);
  say(out, 'ok', h('strong', {}, 'Added: '), bookLink(isbn, title),
    ` with ${copies.length} ${copies.length === 1 ? 'copy' : 'copies'}: `,
    h('span', { class: 'mono' }, copies.join(', ')), '.');
  $('#title-reset').hidden = false;
  $('#title-submit').hidden = true;
  $('#add-copy-row').hidden = true;
}

function reset() {
  delete form.dataset.isbn;
  delete form.dataset.title;
  lockTitle(false);
  for (const input of titleFields.querySelectorAll('input')) input.value = '';
  rows.replaceChildren();
  addRow();
  $('#title-reset').hidden = true;
  $('#title-submit').hidden = false;
  $('#add-copy-row').hidden = false;
  unmark(form);
  clear(out);
  $('#title-isbn').focus();
}

form.addEventListener('submit', (event) => {
  event.preventDefault();
  busy(form, save);
});
$('#add-copy-row').addEventListener('click', () => addRow().querySelector('select').focus());
$('#title-reset').addEventListener('click', reset);

addRow();
