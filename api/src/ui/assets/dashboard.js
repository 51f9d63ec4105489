// The dashboard: queues (through the API from the RabbitMQ management API),
// tasks by state, circulation per minute and branch, and the live feed of
// outcome events.

import {
  $, h, svg, get, post, start, say, clear, errorNodes, clock, day, short, every, followEvents, branchName,
} from './common.js';

start();

const rate = (r) => (r ? r.toFixed(r < 10 ? 1 : 0) : '0');

async function queues() {
  const res = await get('/v1/dashboard/queues');
  const out = $('#queues-out');
  const table = $('#queues');
  if (!res.ok) {
    table.classList.add('stale');
    say(out, 'err', 'Queue figures unavailable: ', ...errorNodes(res.error));
    return;
  }
  clear(out);
  table.classList.remove('stale');
  const data = res.data;
  $('#vhost').textContent = `vhost ${data.vhost} · in ${rate(data.publish_rate)}/s · out ${rate(data.deliver_rate)}/s`;
  table.tBodies[0].replaceChildren(...data.queues.map((q) => h('tr', { 'data-queue': q.name },
    h('td', { class: 'mono' }, q.name),
    h('td', {}, q.type),
    h('td', {}, q.messages_ready),
    h('td', {}, q.messages_unacknowledged),
    h('td', {}, q.consumers),
    h('td', {}, rate(q.publish_rate)),
    h('td', {}, rate(q.deliver_rate)),
    h('td', {}, rate(q.ack_rate)))));
  $('#queues-note').textContent = data.temporary_queues
    ? `Plus ${data.temporary_queues} temporary queue(s): live feeds and reply queues of connected clients.`
    : '';
}

const STATES = ['scheduled', 'queued', 'running', 'succeeded', 'failed', 'dead', 'cancelled'];

async function tasks() {
  const res = await get('/v1/dashboard/tasks');
  if (!res.ok) {
    say($('#tasks-out'), 'err', 'Task counts unavailable: ', ...errorNodes(res.error));
    return;
  }
  clear($('#tasks-out'));
  $('#task-states').replaceChildren(...STATES.map((s) => h('li', { class: s },
    h('span', { class: 'count' }, res.data.by_state[s] ?? 0),
    h('span', { class: 'label' }, s))));
}

const DEAD_QUEUES = ['tasks', 'library'];

/** How many messages each dead-letter queue holds, with a button to replay them all. */
async function deadLetters() {
  const out = $('#dead-out');
  const counts = await Promise.all(DEAD_QUEUES.map((q) => get(`/v1/dead-letters?queue=${q}&limit=1`)));
  const failed = counts.find((res) => !res.ok);
  if (failed) {
    say(out, 'err', 'Dead-letter counts unavailable: ', ...errorNodes(failed.error));
    return;
  }
  $('#dead-letters').replaceChildren(...DEAD_QUEUES.map((queue, i) => {
    const total = counts[i].data.total;
    const button = h('button', { type: 'button', 'data-replay': queue }, 'Replay all');
    button.disabled = total === 0;
    button.addEventListener('click', async () => {
      button.disabled = true;
      const res = await post('/v1/dead-letters/replay', { queue, all: true });
      if (!res.ok) {
        say(out, 'err', ...errorNodes(res.error));
      } else {
        const left = res.data.left ? ` ${res.data.left} left: replay again for the rest.` : '';
        say(out, 'ok', `Replayed ${res.data.replayed.length} dead letter(s) from ${queue}.${left}`);
      }
      deadLetters();
    });
    return h('li', { class: total ? 'dead' : '', 'data-queue': queue },
      h('span', { class: 'count' }, total),
      h('span', { class: 'label' }, queue),
      button);
  }));
}

function bars(perMinute) {
  const max = Math.max(1, ...perMinute);
  const width = 300;
  const height = 34;
  const step = width / perMinute.length;
  return svg('svg', { viewBox: `0 0 ${width} ${height}`, preserveAspectRatio: 'none', role: 'img',
    'aria-label': `${perMinute.reduce((a, b) => a + b, 0)} operations; at most ${max} in a minute` },
  perMinute.map((n, i) => {
    const barHeight = n ? Math.max(2, (n / max) * (height - 2)) : 0;
    return svg('rect', { x: i * step + 0.5, y: height - barHeight, width: Math.max(1, step - 1), height: barHeight },
      svg('title', {}, `${perMinute.length - i - 1} min ago: ${n}`));
  }));
}

async function circulation() {
  const res = await get('/v1/dashboard/circulation?minutes=30');
  if (!res.ok) {
    say($('#circ-out'), 'err', 'Circulation figures unavailable: ', ...errorNodes(res.error));
    return;
  }
  clear($('#circ-out'));
  const rows = res.data.branches.map((b) => h('div', { class: 'series' },
    h('span', { class: 'name' }, b.name),
    bars(b.per_minute),
    h('span', { class: 'total' }, `${b.applied} done`, h('br'), `${b.rejected} refused`)));
  const kinds = res.data.by_kind.map((k) => `${k.kind} ${k.outcome}: ${k.count}`).join(' · ');
  $('#circulation').replaceChildren(...rows,
    h('p', { class: 'kinds' }, kinds || 'No loans, renewals or returns in the last 30 minutes.'));
}

/** One line about an outcome event, in words. */
function describe(key, e) {
  const at = branchName(e.branch || '');
  const who = e.patron ? ` for ${e.patron}` : '';
  if (key.startsWith('task.')) {
    return `${e.action} task ${short(e.task_id)} ${e.state}${e.attempts ? ` after ${e.attempts} attempt(s)` : ''}${e.error ? `: ${e.error}` : ''}`;
  }
  if (key.startsWith('loaned.')) {
    const loan = e.loan || {};
    return `“${loan.title || e.isbn}” (copy ${loan.copy}) lent${e.patron ? ` to ${e.patron}` : ''} at ${at}, due ${day(loan.due_at)}`;
  }
  if (key.startsWith('renewed.')) {
    return `${e.isbn} renewed${who} at ${at}, now due ${day(e.outcome && e.outcome.due_at)}`;
  }
  if (key.startsWith('returned.')) {
    const late = e.outcome && e.outcome.overdue ? ', late' : '';
    return `${e.isbn} returned${e.patron ? ` by ${e.patron}` : ''} at ${at}${late}`;
  }
  if (key.startsWith('hold.ready.')) {
    return `${e.isbn} (copy ${e.copy}) on the hold shelf at ${at} for ${e.patron}, pick up by ${day(e.pickup_by)}`;
  }
  if (key.startsWith('hold.expired.')) {
    return `hold of ${e.patron} on ${e.isbn} expired at ${at}: copy ${e.copy} not picked up`;
  }
  if (key.startsWith('rejected.')) {
    const message = e.message || (e.outcome && e.outcome.message) || '';
    return `${e.operation} of ${e.isbn}${who} refused at ${at}: ${e.reason}${message ? ` (${message})` : ''}`;
  }
  return JSON.stringify(e);
}

function feedItem({ routing_key: key, event }) {
  const bad = key.startsWith('rejected.') || key.startsWith('hold.expired.') || key === 'task.failed' || key === 'task.dead';
  const item = h('li', { class: 'fresh', 'data-key': key },
    h('time', { datetime: (event && event.at) || new Date().toISOString() }, clock(event && event.at)),
    h('span', { class: `key ${bad ? 'bad' : 'good'}` }, key),
    h('span', { class: 'text' }, typeof event === 'object' && event ? describe(key, event) : String(event)));
  const feed = $('#feed');
  feed.prepend(item);
  while (feed.children.length > 100) feed.lastElementChild.remove();
  $('#feed-empty').hidden = true;
}

function feedState(state, why) {
  const pill = $('#feed-state');
  pill.className = `pill ${state}`;
  pill.textContent = state === 'live' ? 'live' : 'reconnecting…';
  pill.title = why || '';
}

every(3000, queues);
every(3000, tasks);
every(10000, circulation);
every(5000, deadLetters);
followEvents('#', feedItem, feedState);
