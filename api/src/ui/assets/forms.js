// Loans, renewals and returns as the desk, book and patron pages do them.
// Every rule is the API's: these functions send what was typed, and show
// what came back (the loan and its due date, or the refusal's message).

import { h, post, get, call, say, errorNodes, day, when, branchName } from './common.js';

const sleep = (ms) => new Promise((resolve) => { setTimeout(resolve, ms); });

/**
 * Lends a copy. `book` is {isbn} or {title}. The idempotency key is kept
 * while an attempt's outcome is unknown (timeout, broker or network down),
 * so pressing Lend again learns what happened instead of lending twice.
 */
export async function lend(form, out, book, patron, branch) {
  const request = { ...book, patron, branch };
  const fingerprint = JSON.stringify(request);
  if (form.dataset.fingerprint !== fingerprint || !form.dataset.key) {
    form.dataset.key = crypto.randomUUID();
    form.dataset.fingerprint = fingerprint;
  }
  say(out, 'pending', 'Lending…');
  const res = await post('/v1/loans', request, { 'Idempotency-Key': form.dataset.key });
  const uncertain = !res.ok && (res.status === 0 || res.status === 503 || res.status === 504);
  if (!uncertain) delete form.dataset.key;
  if (res.ok) {
    const loan = res.data.loan;
    say(out, 'ok',
      h('strong', {}, res.data.replayed ? 'Already lent: ' : 'Lent: '),
      h('a', { href: `/ui/books/${encodeURIComponent(loan.isbn)}` }, loan.title),
      ` (copy ${loan.copy}) to `,
      h('a', { href: `/ui/patrons/${encodeURIComponent(loan.patron)}` }, loan.patron),
      ` at ${branchName(loan.branch)}`, loan.fulfilled_hold ? ' (their hold)' : '', ', ',
      h('strong', { class: 'due' }, `due ${day(loan.due_at)}`), '.');
    return true;
  }
  if (res.error.code === 'ambiguous_title' && Array.isArray(res.error.candidates)) {
    say(out, 'warn', ...errorNodes(res.error), h('br'), 'Pick one: ',
      res.error.candidates.map((c) => h('button', {
        type: 'button', class: 'small secondary',
        onclick: () => lend(form, out, { isbn: c.isbn }, patron, branch),
      }, `${c.title} (${c.isbn})`)));
    return false;
  }
  if (uncertain) {
    say(out, 'warn', h('strong', {}, 'Not known yet: '), ...errorNodes(res.error),
      ' Press Lend again to find out: the same request is recognised, never lent twice.');
    return false;
  }
  say(out, 'err', h('strong', {}, res.status === 409 ? 'Refused: ' : 'Not lent: '), ...errorNodes(res.error));
  return false;
}

/** "9788437604947" or "84-376-0494-X" reads as an ISBN; anything else as title words. */
export function bookFrom(text) {
  const value = text.trim();
  const digits = value.replace(/[\s-]/g, '');
  if (/^[0-9]{9}[0-9Xx]([0-9]{3})?$/.test(digits)) return { isbn: value };
  return value ? { title: value } : {};
}

const KIND = {
  renewal: { path: '/v1/renewals', doing: 'Renewing', done: 'Renewed' },
  return: { path: '/v1/returns', doing: 'Returning', done: 'Returned' },
};

/**
 * A renewal or return: accepted at once (202), then applied or refused by a
 * worker; follows the operation until it settles and says which.
 */
export async function circulate(kind, request, out) {
  const k = KIND[kind];
  say(out, 'pending', `${k.doing}…`);
  const res = await post(k.path, request);
  if (!res.ok) {
    say(out, 'err', h('strong', {}, 'Not accepted: '), ...errorNodes(res.error));
    return false;
  }
  const id = res.data.operation_id;
  say(out, 'pending', `Accepted; waiting for it to be applied (operation ${id.slice(0, 8)})…`);
  const op = await settle(id);
  if (!op.ok) {
    say(out, 'warn', 'Accepted, but its outcome could not be read: ', ...errorNodes(op.error),
      ' It will still be applied; ', h('a', { href: `/v1/operations/${id}` }, 'check the operation'), '.');
    return false;
  }
  const { state, outcome, reason } = op.data;
  if (state === 'applied') {
    if (kind === 'renewal') {
      say(out, 'ok', h('strong', {}, `${k.done}: `), `copy ${outcome.copy} is now `,
        h('strong', { class: 'due' }, `due ${day(outcome.due_at)}`),
        ` (renewal ${outcome.renewals}).`);
    } else {
      say(out, 'ok', h('strong', {}, `${k.done}: `), `copy ${outcome.copy} is back`,
        outcome.overdue ? `, late: it was due ${day(outcome.was_due_at)}.` : ', on time.',
        outcome.hold ? [' It goes onto the hold shelf at ', h('strong', {}, branchName(outcome.hold.pickup_branch)),
          ` for ${outcome.hold.patron}, to pick up by ${when(outcome.hold.pickup_by)}.`] : '');
    }
    return true;
  }
  const message = (outcome && outcome.message) || reason;
  say(out, 'err', h('strong', {}, 'Refused: '), message, ' ', h('code', {}, `(${reason})`));
  return false;
}

/** Polls an operation until it is no longer pending (up to a minute). */
async function settle(id) {
  const deadline = Date.now() + 60000;
  let pause = 100;
  for (;;) {
    const res = await get(`/v1/operations/${id}`);
    if (!res.ok) return res;
    if (res.data.state !== 'pending') return res;
    if (Date.now() > deadline) {
      return { ok: false, error: { code: 'still_pending', message: 'it is still pending after a minute' } };
    }
    await sleep(pause);
    pause = Math.min(pause * 2, 1000);
  }
}

/** Places a hold for a patron on `book` ({isbn} or {title}), to pick up at `branch`. */
export async function placeHold(out, book, patron, branch) {
  say(out, 'pending', 'Placing the hold…');
  const res = await post('/v1/holds', { ...book, patron, pickup_branch: branch });
  if (res.ok) {
    const hold = res.data;
    say(out, 'ok', h('strong', {}, 'Hold placed: '), `${hold.title} for `,
      h('a', { href: `/ui/patrons/${encodeURIComponent(hold.patron)}` }, hold.patron),
      `, to pick up at ${branchName(hold.pickup_branch)}; number `, h('strong', {}, hold.position),
      ' in the queue.');
    return true;
  }
  say(out, 'err', h('strong', {}, res.status === 409 ? 'Refused: ' : 'Not placed: '), ...errorNodes(res.error));
  return false;
}

/** Cancels a hold; says where a copy on the shelf for it went. */
export async function cancelHold(out, id) {
  say(out, 'pending', 'Cancelling the hold…');
  const res = await call('DELETE', `/v1/holds/${encodeURIComponent(id)}`);
  if (!res.ok) {
    say(out, 'err', h('strong', {}, 'Not cancelled: '), ...errorNodes(res.error));
    return false;
  }
  const passed = res.data.passed_to;
  say(out, 'ok', h('strong', {}, 'Cancelled: '), `the hold on ${res.data.hold.title}.`,
    passed ? ` Copy ${passed.copy} now waits at ${branchName(passed.pickup_branch)} for ${passed.patron}.` : '');
  return true;
}
