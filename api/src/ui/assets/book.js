// A book: availability per branch, each copy with its status and due date,
// renew or return a copy on loan, lend another (a copy on the hold shelf
// goes to the patron it waits for), place a hold, see the queue.

import { $, h, get, start, say, errorNodes, day, when, badge, branchName } from './common.js';
import { lend, circulate, placeHold } from './forms.js';

start();

const isbn = decodeURIComponent(location.pathname.split('/').pop());

async function load() {
  const res = await get(`/v1/books/${encodeURIComponent(isbn)}`);
  if (!res.ok) {
    $('#book-title').textContent = res.status === 404 ? 'Book not found' : 'Book';
    say($('#book-out'), 'err', ...errorNodes(res.error));
    return;
  }
  const book = res.data;
  document.title = `${book.title} · bibliomq`;
  $('#book-title').textContent = book.title;
  $('#book-meta').replaceChildren(
    [(book.authors || []).join(', '), book.published_year, `ISBN ${book.isbn}`]
      .filter(Boolean).join(' · '),
  );
  $('#book-branches tbody').replaceChildren(...book.branches.map((b) => h('tr', {},
    h('td', {}, branchName(b.branch)),
    h('td', {}, h('strong', {}, b.available)),
    h('td', {}, b.total),
    h('td', {}, b.next_due_at ? day(b.next_due_at) : '—'))));
  $('#book-copies tbody').replaceChildren(...book.copies.map(copyRow));
  await loadHolds();
}

async function loadHolds() {
  const res = await get(`/v1/titles/${encodeURIComponent(isbn)}/holds`);
  if (!res.ok) return;
  const rows = res.data.holds.map((hold) => h('tr', { 'data-hold': hold.id },
    h('td', {}, hold.position ?? '—'),
    h('td', {}, h('a', { href: `/ui/patrons/${encodeURIComponent(hold.patron)}` }, hold.patron)),
    h('td', {}, branchName(hold.pickup_branch)),
    h('td', {}, badge(hold.state)),
    h('td', { class: 'mono' }, hold.copy || ''),
    h('td', {}, hold.pickup_by ? when(hold.pickup_by) : '')));
  $('#book-holds tbody').replaceChildren(...(rows.length ? rows
    : [h('tr', {}, h('td', { colspan: 6, class: 'muted' }, 'No holds.'))]));
}

function copyRow(copy) {
  const actions = h('td', { class: 'actions' });
  if (copy.loan_id) {
    for (const [kind, label] of [['renewal', 'Renew'], ['return', 'Return']]) {
      actions.append(h('button', {
        type: 'button', class: 'small secondary',
        'aria-label': `${label} copy ${copy.barcode}`,
        onclick: async (event) => {
          event.currentTarget.disabled = true;
          await circulate(kind, { loan_id: copy.loan_id, branch: $('#desk-branch').value }, $('#copy-out'));
          await load();
        },
      }, label));
    }
  }
  return h('tr', { 'data-copy': copy.barcode },
    h('td', { class: 'mono' }, copy.barcode),
    h('td', {}, branchName(copy.branch)),
    h('td', {}, badge(copy.status)),
    h('td', { class: 'due' }, copy.due_at ? day(copy.due_at) : ''),
    actions);
}

$('#loan-form').addEventListener('submit', async (event) => {
  event.preventDefault();
  const form = event.currentTarget;
  const button = form.querySelector('button[type=submit]');
  button.disabled = true;
  try {
    await lend(form, $('#loan-out'), { isbn }, $('#loan-patron').value.trim(), $('#loan-branch').value);
    await load();
  } finally {
    button.disabled = false;
  }
});

$('#hold-form').addEventListener('submit', async (event) => {
  event.preventDefault();
  const button = event.currentTarget.querySelector('button[type=submit]');
  button.disabled = true;
  try {
    await placeHold($('#hold-out'), { isbn }, $('#hold-patron').value.trim(), $('#hold-branch').value);
    await load();
  } finally {
    button.disabled = false;
  }
});

load();
