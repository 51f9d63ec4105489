// Tasks: submit one, watch its state change, download its result; the
// recent tasks. Also the page of a single task (/ui/tasks/{id}).

import {
  $, h, get, post, start, say, clear, errorNodes, when, bytes, badge, short, every, downloadLink,
} from './common.js';

start();

const FINAL = ['succeeded', 'failed', 'dead', 'cancelled'];
const sleep = (ms) => new Promise((resolve) => { setTimeout(resolve, ms); });

// Example payloads, only to fill the box; the API decides what it accepts.
const EXAMPLES = {
  echo: '{"hello": "world"}',
  upper: '"hola mundo"',
  sum: '"1,2,3,4,5"',
  fib: '100',
  sleep: '1500',
  greet: '{"name": "Ana", "language": "es"}',
  primes: '2000000',
  wordcount: '"the quick brown fox jumps over the lazy dog and the cat"',
  report: JSON.stringify({
    csv: 'branch,title,days\ncentral,Quijote,14\nnorte,Quijote,7\ncentral,Crimen y castigo,21\n',
    group_by: 'branch',
    sum: 'days',
  }, null, 1),
};

let watching = 0;

/** Follows a task in `container` until it is final, redrawing on each change. */
async function watch(id, container, onFinal = () => {}) {
  watching += 1;
  const mine = watching;
  let pause = 150;
  let last = '';
  for (;;) {
    const res = await get(`/v1/tasks/${encodeURIComponent(id)}`);
    if (mine !== watching) return;
    if (!res.ok) {
      const out = h('p', { class: 'outcome' });
      say(out, 'err', ...errorNodes(res.error));
      container.replaceChildren(out);
      if (res.status === 404 || res.status === 400) return;
    } else {
      const stamp = `${res.data.state}|${res.data.attempts}|${res.data.updated_at}`;
      if (stamp !== last) container.replaceChildren(card(res.data));
      last = stamp;
      if (FINAL.includes(res.data.state)) {
        onFinal();
        return;
      }
    }
    await sleep(pause);
    pause = Math.min(pause * 1.5, 1000);
  }
}

function card(task) {
  const facts = h('dl', { class: 'facts' },
    h('dt', {}, 'Task'), h('dd', { class: 'mono' }, h('a', { href: `/ui/tasks/${task.id}` }, task.id)),
    h('dt', {}, 'Action'), h('dd', {}, task.action),
    h('dt', {}, 'State'), h('dd', { id: 'task-state', 'data-state': task.state }, badge(task.state)),
    h('dt', {}, 'Attempts'), h('dd', {}, task.attempts),
    h('dt', {}, 'Submitted'), h('dd', {}, when(task.created_at)),
    h('dt', {}, 'Started'), h('dd', {}, when(task.started_at)),
    h('dt', {}, 'Finished'), h('dd', {}, when(task.finished_at)),
    task.correlation_id ? [h('dt', {}, 'Correlation id'), h('dd', { class: 'mono' }, task.correlation_id)] : null,
    task.error ? [h('dt', {}, 'Error'), h('dd', { class: 'error' }, task.error)] : null);
  const parts = [facts];
  if (!FINAL.includes(task.state)) parts.push(cancelButton(task));
  if (task.state === 'succeeded') {
    const csv = (task.result_content_type || '').startsWith('text/csv');
    const filename = `${task.id}.${csv ? 'csv' : 'json'}`;
    if (task.result_object) {
      const o = task.result_object;
      parts.push(h('p', {}, `The result is ${bytes(o.size)}, kept in object storage as `,
        h('code', {}, o.key), '.'),
      h('p', { class: 'muted mono' }, `sha256 ${o.sha256}`));
    } else {
      let text = typeof task.result === 'string' && csv ? task.result : JSON.stringify(task.result, null, 2);
      if (text.length > 4000) text = `${text.slice(0, 4000)}\n… (${bytes(text.length)} in all: download it)`;
      parts.push(h('pre', { class: 'result', 'aria-label': 'Result' }, text));
    }
    parts.push(h('p', {}, downloadLink(`/v1/tasks/${task.id}/result`, filename, 'Download the result')));
  }
  return h('div', {}, parts);
}

/** Cancels the task; the watch loop shows the state it reaches. */
function cancelButton(task) {
  const out = h('p', { class: 'outcome' });
  const button = h('button', { type: 'button', id: 'task-cancel' },
    task.cancel_requested_at ? 'Stopping…' : 'Cancel this task');
  button.disabled = Boolean(task.cancel_requested_at);
  button.addEventListener('click', async () => {
    button.disabled = true;
    const res = await post(`/v1/tasks/${encodeURIComponent(task.id)}/cancel`, {});
    if (!res.ok) {
      say(out, 'err', ...errorNodes(res.error));
      button.disabled = false;
    } else if (res.data.stopping) {
      say(out, 'pending', 'Running: its worker is stopping it.');
    } else {
      say(out, 'ok', 'Cancelled: it will not run.');
    }
  });
  return h('div', {}, button, out);
}

async function recent() {
  const state = $('#recent-state').value;
  const res = await get(`/v1/tasks?limit=15${state ? `&state=${state}` : ''}`);
  const out = $('#recent-out');
  if (!res.ok) {
    say(out, 'err', ...errorNodes(res.error));
    return;
  }
  clear(out);
  const tasks = Array.isArray(res.data) ? res.data : res.data.tasks || [];
  $('#recent-tasks tbody').replaceChildren(...(tasks.length ? tasks.map((t) => h('tr', {},
    h('td', { class: 'mono' }, h('a', {
      href: `/ui/tasks/${t.id}`,
      onclick: (event) => {
        event.preventDefault();
        watch(t.id, $('#task-card'));
      },
    }, short(t.id))),
    h('td', {}, t.action),
    h('td', {}, badge(t.state)),
    h('td', {}, t.attempts),
    h('td', {}, when(t.created_at)),
    h('td', {}, when(t.finished_at)))) : [h('tr', {}, h('td', { colspan: 6, class: 'muted' }, 'No tasks yet.'))]));
}

function setUpSubmit() {
  const action = $('#task-action');
  const payload = $('#task-payload');
  const hint = $('#task-action-hint');
  const describe = () => {
    hint.textContent = action.selectedOptions[0]?.dataset.hint || '';
    const examples = Object.values(EXAMPLES);
    if (!payload.value.trim() || examples.includes(payload.value)) payload.value = EXAMPLES[action.value] || '';
  };
  action.addEventListener('change', describe);
  describe();

  $('#task-form').addEventListener('submit', async (event) => {
    event.preventDefault();
    const out = $('#task-out');
    let value;
    try {
      value = JSON.parse(payload.value);
    } catch {
      value = payload.value; // plain text travels as a JSON string
    }
    const button = event.currentTarget.querySelector('button[type=submit]');
    button.disabled = true;
    say(out, 'pending', 'Submitting…');
    const res = await post('/v1/tasks', { action: action.value, payload: value });
    button.disabled = false;
    if (!res.ok) {
      say(out, 'err', h('strong', {}, 'Not accepted: '), ...errorNodes(res.error));
      return;
    }
    say(out, 'ok', 'Accepted: task ', h('code', {}, short(res.data.id)), ' is queued.');
    watch(res.data.id, $('#task-card'), recent);
    recent();
  });
  $('#recent-state').addEventListener('change', recent);
  every(3000, recent);
}

const single = location.pathname.match(/^\/ui\/tasks\/([^/]+)$/);
if (single) {
  watch(decodeURIComponent(single[1]), $('#task-card'));
} else {
  setUpSubmit();
}
