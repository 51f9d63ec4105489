// A book: availability per branch, each copy with its status and due date,
// renew or return a copy on loan, lend another.

import { $, h, get, start, say, errorNodes, day, badge, branchName } from './common.js';
import { lend, circulate } from './forms.js';

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

load();
