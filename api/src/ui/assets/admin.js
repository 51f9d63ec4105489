// What the catalogue and patron pages share: an API refusal shown in place,
// naming the field it is about, with that field marked and focused, so the
// person sees at once what to correct. Every rule is the API's.

import { h, say, errorNodes } from './common.js';

/** Removes the marks a previous refusal left in `scope`. */
export function unmark(scope) {
  for (const el of scope.querySelectorAll('[aria-invalid]')) el.removeAttribute('aria-invalid');
}

/**
 * Refusals about a value already taken name no field in the API's answer
 * (they are conflicts, not invalid input); which input they are about is
 * plain, so the page marks it too.
 */
const CONFLICT_FIELDS = {
  title_exists: 'isbn',
  barcode_taken: 'barcode',
  patron_exists: 'id',
};

/**
 * Shows `error` in `out`. When the API names a field and `scope` has an
 * input for it (`data-field`, a space-separated list of the names the API
 * may use), the message starts with that field's label and the input is
 * marked invalid and focused.
 */
export function refuse(out, scope, error, prefix) {
  unmark(scope);
  const field = error.field || CONFLICT_FIELDS[error.code];
  const input = field
    ? [...scope.querySelectorAll('[data-field]')]
      .find((el) => el.dataset.field.split(' ').includes(field))
    : null;
  let name = field;
  if (input) {
    name = (input.labels && input.labels[0] && input.labels[0].textContent.trim())
      || input.getAttribute('aria-label') || field;
    input.setAttribute('aria-invalid', 'true');
    input.focus();
  }
  say(out, 'err', h('strong', {}, prefix),
    field ? h('span', { class: 'field', 'data-field-name': field }, `${name}: `) : null,
    ...errorNodes(error));
}

/** Disables `form`'s submit button while `work` runs. */
export async function busy(form, work) {
  const button = form.querySelector('button[type=submit]');
  if (button) button.disabled = true;
  try {
    return await work();
  } finally {
    if (button) button.disabled = false;
  }
}
