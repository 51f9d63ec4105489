"""Teaches schemathesis the formats our OpenAPI document names beyond JSON
Schema's own: `isbn`, an ISBN whose check digit is right (a pattern can say
the digits, not the check digit)."""

from datetime import datetime, timedelta, timezone

import schemathesis
from hypothesis import strategies as st


def _isbn13(prefix: str, body: str) -> str:
    digits = prefix + body
    total = sum(int(d) * (1 if i % 2 == 0 else 3) for i, d in enumerate(digits))
    return digits + str((10 - total % 10) % 10)


def _isbn10(body: str) -> str:
    total = sum(int(d) * (10 - i) for i, d in enumerate(body))
    check = (11 - total % 11) % 11
    return body + ("X" if check == 10 else str(check))


_digits = st.text(alphabet="0123456789", min_size=9, max_size=9)

schemathesis.openapi.format(
    "isbn",
    st.one_of(
        st.builds(_isbn13, st.sampled_from(["978", "979"]), _digits),
        st.builds(_isbn10, _digits),
    ),
)


_PLAIN = set("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789_")


def _column(name, fallback: str) -> str:
    return name if isinstance(name, str) and name and set(name) <= _PLAIN else fallback


def _schedule(body: dict) -> None:
    """A task's schedule: `run_at` and `delay_ms` exclude each other, and a
    `run_at` is good only from (about) now to the longest delay ahead, which
    depends on the clock; JSON Schema can say neither. Keep one of the two,
    and a `run_at` a minute ahead."""
    if "run_at" in body and "delay_ms" in body:
        del body["delay_ms"]
    if "run_at" in body:
        ahead = datetime.now(timezone.utc) + timedelta(minutes=1)
        body["run_at"] = ahead.isoformat()


@schemathesis.hook
def map_body(context, body):
    """A batch's items are mapped as single submissions are."""
    if isinstance(body, list):
        return [_map_submission(item) for item in body]
    return _map_submission(body)


def _map_submission(body):
    """A `report` payload ties its fields together (`group_by` and `sum` name
    columns of the CSV's header), which JSON Schema cannot say; give each
    generated one a CSV that has those columns, with numbers to sum. And a
    task's schedule is made one the server can take (see `_schedule`)."""
    if isinstance(body, dict) and "action" in body:
        _schedule(body)
    if not isinstance(body, dict) or body.get("action") != "report":
        return body
    payload = body.get("payload")
    if not isinstance(payload, dict):
        return body
    group = _column(payload.get("group_by"), "branch")
    if "sum" in payload:
        total = _column(payload.get("sum"), "amount")
        if total == group:
            total = group + "_sum"
        payload["sum"] = total
        payload["csv"] = f"{group},{total}\nnorte,1\ncentral,2.5\nnorte,3\n"
    else:
        payload["csv"] = f"{group}\nnorte\ncentral\n"
    payload["group_by"] = group
    return body
