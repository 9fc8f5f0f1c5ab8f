"""Reading and submitting Rekey's HTML pages with Flask's test client, as a browser would: the
client keeps cookies, a form is posted with the CSRF token its page carried."""

from __future__ import annotations

import html
import re
from typing import Any

_CSRF_FIELD = re.compile(r'<input type="hidden" name="csrf_token" value="([0-9a-f]{64})">')
_MAIN = re.compile(r"<main[^>]*>(.*)</main>", re.S)
_TAG = re.compile(r"<[^>]+>")


def form_token(page: Any) -> str:
    """The CSRF token in the page's (first) form."""
    found = _CSRF_FIELD.search(page.get_data(as_text=True))
    assert found, "the page has no form with a CSRF token"
    return found.group(1)


def submit(client: Any, path: str, **fields: str) -> Any:
    """Open the page at `path`, then post its form (with its CSRF token and `fields`) to `path`."""
    page = client.get(path)
    assert page.status_code == 200, (page.status_code, main_text(page))
    return client.post(path, data={"csrf_token": form_token(page), **fields})


def main_text(page: Any) -> str:
    """The visible text of the page's <main>, whitespace collapsed (what a reader sees)."""
    found = _MAIN.search(page.get_data(as_text=True))
    assert found, "not a Rekey page (no <main>)"
    return " ".join(html.unescape(_TAG.sub(" ", found.group(1))).split())


def assert_page(page: Any, status: int) -> str:
    """An HTML page with this status, never the JSON error body or a stack trace; its text."""
    body = page.get_data(as_text=True)
    assert page.status_code == status, (page.status_code, body[:300])
    assert page.mimetype == "text/html", page.mimetype
    assert '"error"' not in body and "Traceback" not in body and 'File "' not in body, body[:500]
    return main_text(page)


def set_cookie_header(response: Any, name: str) -> str:
    """The Set-Cookie header the response sent for cookie `name` (its attributes included)."""
    found = [h for h in response.headers.getlist("Set-Cookie") if h.split("=", 1)[0] == name]
    assert found, f"no Set-Cookie for {name}: {response.headers.getlist('Set-Cookie')}"
    return str(found[-1])


def database_state(flask_app: Any) -> dict[str, list[str]]:
    """Every row of every table, as text: equal before and after means nothing was written."""
    from sqlalchemy import select

    import app.accounts.models  # noqa: F401  (every model registers its table)
    import app.audit.models  # noqa: F401
    import app.intake.models  # noqa: F401
    import app.jobs.models  # noqa: F401
    import app.recovery.models  # noqa: F401
    from app.extensions import db

    with flask_app.app_context():
        state = {table.name: sorted(repr(tuple(row)) for row in db.session.execute(select(table)))
                 for table in db.metadata.sorted_tables}
        db.session.rollback()
    return state


def assert_same_database(before: dict[str, list[str]], after: dict[str, list[str]]) -> None:
    changed = sorted(name for name in before if before[name] != after.get(name))
    assert not changed, f"rows changed in {changed}"
