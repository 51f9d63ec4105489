// The front desk: find a book, lend, renew, return, look up a patron.

import { $, h, get, start, say, clear, errorNodes, branchName } from './common.js';
import { lend, bookFrom, circulate } from './forms.js';

start();

const results = $('#search-results');
const searchOut = $('#search-out');

function availability(book) {
  const perBranch = Object.entries(book.available_by_branch || {})
    .map(([code, n]) => `${branchName(code)} ${n}`)
    .join(' · ');
  return [
    h('strong', {}, `${book.available_copies} of ${book.total_copies}`),
    perBranch ? h('div', { class: 'muted' }, perBranch) : null,
  ];
}

function row(book) {
  return h('tr', {},
    h('td', {}, h('a', { href: `/ui/books/${encodeURIComponent(book.isbn)}` }, book.title),
      h('div', { class: 'muted mono' }, book.isbn)),
    h('td', {}, (book.authors || []).join(', ')),
    h('td', {}, book.published_year ?? ''),
    h('td', {}, availability(book)),
    h('td', { class: 'actions' }, h('button', {
      type: 'button', class: 'small secondary',
      'aria-label': `Lend ${book.title}`,
      onclick: () => {
        $('#loan-book').value = book.isbn;
        $('#loan-patron').focus();
      },
    }, 'Lend…')));
}

$('#search-form').addEventListener('submit', async (event) => {
  event.preventDefault();
  const query = $('#search-q').value.trim();
  const book = bookFrom(query);
  say(searchOut, 'pending', 'Searching…');
  if (book.isbn) {
    // An ISBN names one book: its page says everything about it.
    const res = await get(`/v1/books/${encodeURIComponent(book.isbn)}`);
    if (res.ok) {
      location.href = `/ui/books/${encodeURIComponent(res.data.isbn)}`;
      return;
    }
    results.hidden = true;
    say(searchOut, 'err', ...errorNodes(res.error));
    return;
  }
  const res = await get(`/v1/books?title=${encodeURIComponent(query)}`);
  if (!res.ok) {
    results.hidden = true;
    say(searchOut, 'err', ...errorNodes(res.error));
    return;
  }
  const books = res.data.books;
  results.tBodies[0].replaceChildren(...books.map(row));
  results.hidden = books.length === 0;
  if (books.length === 0) say(searchOut, 'warn', `No title contains every word of “${query}”.`);
  else clear(searchOut);
});

$('#loan-form').addEventListener('submit', async (event) => {
  event.preventDefault();
  const form = event.currentTarget;
  const button = form.querySelector('button[type=submit]');
  button.disabled = true;
  try {
    await lend(form, $('#loan-out'), bookFrom($('#loan-book').value),
      $('#loan-patron').value.trim(), $('#loan-branch').value);
  } finally {
    button.disabled = false;
  }
});

for (const id of ['#renew-form', '#return-form']) {
  $(id).addEventListener('submit', async (event) => {
    event.preventDefault();
    const form = event.currentTarget;
    const fields = new FormData(form);
    const request = { branch: fields.get('branch') };
    for (const name of ['isbn', 'patron']) {
      const value = String(fields.get(name) || '').trim();
      if (value) request[name] = value;
    }
    const button = form.querySelector('button[type=submit]');
    button.disabled = true;
    try {
      await circulate(form.dataset.kind, request, form.querySelector('.outcome'));
    } finally {
      button.disabled = false;
    }
  });
}

$('#patron-form').addEventListener('submit', (event) => {
  event.preventDefault();
  const id = $('#patron-id').value.trim();
  if (id) location.href = `/ui/patrons/${encodeURIComponent(id)}`;
});
