// A patron: current loans (returned ones on request), renew or return each;
// their open holds, cancel each.

import { $, h, get, start, say, errorNodes, day, when, badge, branchName } from './common.js';
import { circulate, cancelHold } from './forms.js';

start();

const patron = decodeURIComponent(location.pathname.split('/').pop());

async function load() {
  const all = $('#show-returned').checked;
  const res = await get(`/v1/patrons/${encodeURIComponent(patron)}/loans${all ? '?all=true' : ''}`);
  if (!res.ok) {
    $('#patron-name').textContent = res.status === 404 ? 'Patron not found' : 'Patron';
    say($('#patron-out'), 'err', ...errorNodes(res.error));
    return;
  }
  const data = res.data;
  document.title = `${data.name} · bibliomq`;
  $('#patron-name').textContent = data.name;
  const open = data.loans.filter((l) => !l.returned_at).length;
  $('#patron-meta').textContent = `${data.patron} · ${open} of ${data.max_loans} loans in use`;
  const rows = data.loans.map(loanRow);
  $('#patron-loans tbody').replaceChildren(...(rows.length ? rows
    : [h('tr', {}, h('td', { colspan: 7, class: 'muted' }, 'No loans.'))]));
  await loadHolds();
}

async function loadHolds() {
  const res = await get(`/v1/patrons/${encodeURIComponent(patron)}/holds`);
  if (!res.ok) return;
  const rows = res.data.holds.map((hold) => h('tr', { 'data-hold': hold.id },
    h('td', {}, h('a', { href: `/ui/books/${encodeURIComponent(hold.isbn)}` }, hold.title)),
    h('td', {}, branchName(hold.pickup_branch)),
    h('td', {}, badge(hold.state)),
    h('td', {}, hold.position ?? '—'),
    h('td', { class: 'mono' }, hold.copy || ''),
    h('td', {}, hold.pickup_by ? when(hold.pickup_by) : ''),
    h('td', { class: 'actions' }, h('button', {
      type: 'button', class: 'small secondary',
      'aria-label': `Cancel the hold on ${hold.title}`,
      onclick: async (event) => {
        event.currentTarget.disabled = true;
        await cancelHold($('#hold-action-out'), hold.id);
        await load();
      },
    }, 'Cancel'))));
  $('#patron-holds tbody').replaceChildren(...(rows.length ? rows
    : [h('tr', {}, h('td', { colspan: 7, class: 'muted' }, 'No holds.'))]));
}

function loanRow(loan) {
  const actions = h('td', { class: 'actions' });
  if (!loan.returned_at) {
    for (const [kind, label] of [['renewal', 'Renew'], ['return', 'Return']]) {
      actions.append(h('button', {
        type: 'button', class: 'small secondary',
        // A patron's own key renews; returns are the desk's.
        'data-roles': kind === 'return' ? 'admin librarian' : null,
        'aria-label': `${label} ${loan.title}`,
        onclick: async (event) => {
          event.currentTarget.disabled = true;
          await circulate(kind, { loan_id: loan.id, branch: $('#desk-branch').value }, $('#loan-action-out'));
          await load();
        },
      }, label));
    }
  }
  let due = day(loan.due_at);
  if (loan.returned_at) due = ['returned ', day(loan.returned_at)];
  return h('tr', {},
    h('td', {}, h('a', { href: `/ui/books/${encodeURIComponent(loan.isbn)}` }, loan.title)),
    h('td', { class: 'mono' }, loan.copy),
    h('td', {}, branchName(loan.branch)),
    h('td', {}, day(loan.loaned_at)),
    h('td', { class: 'due' }, due, loan.overdue ? [' ', badge('overdue')] : null),
    h('td', {}, loan.renewals),
    actions);
}

$('#show-returned').addEventListener('change', load);
load();
