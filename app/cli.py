"""`rekey`: provisioning, migrations, audit export and verification, and the dev runner.

Every command prints JSON with `--json` (for scripts) or a short human summary otherwise.
"""

from __future__ import annotations

import json
import sys
import uuid
from collections.abc import Callable
from datetime import datetime
from functools import wraps
from typing import Any

import click

from app.config import Settings


def _app() -> Any:
    from app import create_app

    return create_app(Settings())


def _emit(payload: Any, as_json: bool, human: str) -> None:
    if as_json:
        click.echo(json.dumps(payload, default=str, sort_keys=True))
    else:
        click.echo(human)


def in_app(fn: Callable[..., Any]) -> Callable[..., Any]:
    """Run the command inside an app context and commit once at the end, as a request would."""

    @wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        from app.errors import RekeyError
        from app.extensions import db

        app = _app()
        with app.app_context():
            try:
                result = fn(*args, **kwargs)
                db.session.commit()
                return result
            except RekeyError as exc:
                db.session.rollback()
                click.echo(json.dumps(exc.to_body()), err=True)
                sys.exit(2)
            finally:
                db.session.remove()
                db.engine.dispose()  # a command is a whole process's life: close its connections

    return wrapper


def _parse_time(value: str | None) -> datetime | None:
    if value is None:
        return None
    moment = datetime.fromisoformat(value.replace("Z", "+00:00"))
    if moment.tzinfo is None:
        raise click.BadParameter(f"{value!r} needs a timezone (e.g. 2026-05-01T00:00:00Z)")
    return moment


@click.group()
def main() -> None:
    """Rekey: account recovery that enforces the support runbook."""
    from app.config import ConfigError

    try:
        Settings()  # an unusable setting is one line naming the variable, not a traceback
    except ConfigError as exc:
        click.echo(f"rekey: {exc}", err=True)
        sys.exit(2)


@main.group()
def db() -> None:
    """Database migrations."""


@db.command("upgrade")
@click.option("--revision", default="head")
@click.option("--no-create-role", is_flag=True,
              help="Do not create or grant the application role (a hosted database that forbids CREATE "
                   "ROLE): print the statements for the operator instead.")
def db_upgrade(revision: str, no_create_role: bool) -> None:
    """Apply Alembic migrations up to REVISION (default head), as the owner (DATABASE_MIGRATION_URL,
    else DATABASE_URL); then create and grant the application role DATABASE_URL logs in as."""
    from app.migrate import app_role_name, ensure_app_role, needs_app_role, upgrade

    settings = Settings()
    owner_url = settings.database_migration_url or settings.database_url
    upgrade(owner_url, revision)
    click.echo(f"database at {revision}: {_redact(owner_url)}")
    if not needs_app_role(settings.database_url, settings.database_migration_url):
        return
    try:
        role = app_role_name(settings.database_url, settings.database_app_role)
    except ValueError as exc:
        click.echo(str(exc), err=True)
        sys.exit(2)
    statements = ensure_app_role(settings.database_url, owner_url, role=role, create=not no_create_role)
    if no_create_role:
        click.echo(f"-- run as the database owner for the application role {role}:")
        for statement in statements:
            click.echo(f"{statement};")
    else:
        click.echo(f"application role {role}: INSERT and SELECT only on audit_events")


def _redact(url: str) -> str:
    from sqlalchemy.engine import make_url

    return make_url(url).render_as_string(hide_password=True)


@main.group()
def tenant() -> None:
    """Tenants."""


@tenant.command("create")
@click.argument("slug")
@click.option("--name", default=None)
@click.option("--setting", "settings", multiple=True,
              help="NAME=VALUE, the value as JSON or a plain string: reset_cooldown_hours=4, "
                   "time_zone=Europe/Paris")
@click.option("--json", "as_json", is_flag=True)
@in_app
def tenant_create(slug: str, name: str | None, settings: tuple[str, ...], as_json: bool) -> None:
    """Create a tenant."""
    from app.tenants.services import create_tenant

    parsed = {}
    for item in settings:
        key, sep, raw = item.partition("=")
        if not sep or not key:
            raise click.BadParameter(f"--setting {item!r} is not NAME=VALUE")
        try:
            parsed[key] = json.loads(raw)
        except ValueError:
            parsed[key] = raw  # a zone name needs no JSON quotes
    created = create_tenant(slug=slug, name=name, settings=parsed)
    _emit({"id": str(created.id), "slug": created.slug, "name": created.name}, as_json,
          f"tenant {created.slug} ({created.id})")


@main.group()
def agent() -> None:
    """Support agents and senior admins."""


@agent.command("create")
@click.option("--tenant", "tenant_slug", required=True)
@click.option("--email", required=True)
@click.option("--name", default=None)
@click.option("--role", type=click.Choice(["support_agent", "senior_admin"]), required=True)
@click.option("--external-id", default=None,
              help="The agent's employee id, when they also have a user account (the user's external id).")
@click.option("--federated", "federated", multiple=True,
              help="ISSUER:SUBJECT of the agent's own federated identity (repeatable).")
@click.option("--json", "as_json", is_flag=True)
@in_app
def agent_create(tenant_slug: str, email: str, name: str | None, role: str, external_id: str | None,
                 federated: tuple[str, ...], as_json: bool) -> None:
    """Create an agent; prints its API token once. The agent may never act on the recovery of a
    user with the same mailbox, external id or federated subject."""
    from app.actor import Actor
    from app.console.credentials import invite_agent
    from app.tenants.services import create_agent, get_tenant_by_slug

    created, token = create_agent(get_tenant_by_slug(tenant_slug), email=email, name=name or email, role=role,
                                  external_id=external_id, federated=[_issuer_subject(f) for f in federated])
    invitation = invite_agent(Actor.system(created.tenant_id), created)
    _emit({"id": str(created.id), "email": created.email, "role": created.role, "token": token,
           "invitation": invitation}, as_json,
          f"agent {created.email} ({created.role}) id={created.id}\n"
          f"token (shown once, store it now): {token}\n"
          f"{_console_how_to(invitation)}")


def _issuer_subject(item: str) -> tuple[str, str]:
    """--federated ISSUER:SUBJECT (the issuer is a URL, so the subject follows the last colon)."""
    issuer, sep, subject = item.rpartition(":")
    if not sep or not issuer or not subject:
        raise click.BadParameter(f"--federated {item!r} is not ISSUER:SUBJECT")
    return issuer, subject


@main.group()
def user() -> None:
    """End users."""


@user.command("create")
@click.option("--tenant", "tenant_slug", required=True)
@click.option("--email", required=True)
@click.option("--name", default="")
@click.option("--password", default=None, help="Initial password (or REKEY_USER_PASSWORD).",
              envvar="REKEY_USER_PASSWORD")
@click.option("--phone", "phones", multiple=True, help="Phone number, E.164 or international form.")
@click.option("--phone-added-at", "phone_added_at", multiple=True,
              help="When the matching --phone was added (ISO 8601 with zone).")
@click.option("--federated", "federated", multiple=True, help="ISSUER:SUBJECT of a linked identity.")
@click.option("--federated-linked-at", default=None, help="When the federated identities were linked.")
@click.option("--email-added-at", default=None)
@click.option("--privileged", is_flag=True)
@click.option("--external-id", default=None)
@click.option("--json", "as_json", is_flag=True)
@in_app
def user_create(tenant_slug: str, email: str, name: str, password: str | None, phones: tuple[str, ...],
                phone_added_at: tuple[str, ...], federated: tuple[str, ...], federated_linked_at: str | None,
                email_added_at: str | None, privileged: bool, external_id: str | None, as_json: bool) -> None:
    """Create a user with channels and identities."""
    from app.accounts.services import FederatedSpec, PhoneSpec, create_user
    from app.actor import Actor
    from app.tenants.services import get_tenant_by_slug

    if phone_added_at and len(phone_added_at) != len(phones):
        raise click.BadParameter("give one --phone-added-at per --phone, or none")
    phone_specs = [PhoneSpec(number, _parse_time(phone_added_at[i]) if phone_added_at else None)
                   for i, number in enumerate(phones)]
    links = [FederatedSpec(*_issuer_subject(item), _parse_time(federated_linked_at)) for item in federated]
    found = get_tenant_by_slug(tenant_slug)
    created = create_user(found, email=email, actor=Actor.system(found.id), password=password,
                          display_name=name, phones=phone_specs, federated=links, privileged=privileged,
                          external_id=external_id, email_added_at=_parse_time(email_added_at))
    channels = [{"id": str(c.id), "kind": c.kind, "added_at": c.added_at.isoformat()} for c in created.channels]
    _emit({"id": str(created.id), "email": created.email, "channels": channels}, as_json,
          f"user {created.email} id={created.id}")


@main.group()
def audit() -> None:
    """The audit trail."""


@audit.command("export")
@click.option("--tenant", "tenant_slug", required=True)
@click.option("--action", default=None)
@click.option("--actor", default=None)
@click.option("--user", "user_id", type=click.UUID, default=None)
@click.option("--case", "case_id", type=click.UUID, default=None)
@click.option("--since", default=None)
@click.option("--until", default=None)
@click.option("--format", "fmt", type=click.Choice(["jsonl", "csv"]), default="jsonl")
@in_app
def audit_export(tenant_slug: str, action: str | None, actor: str | None, user_id: uuid.UUID | None,
                 case_id: uuid.UUID | None, since: str | None, until: str | None, fmt: str) -> None:
    """Stream the tenant's audit events, filtered, to stdout."""
    from app.actor import Actor
    from app.audit.models import AuditAction
    from app.audit.services import AuditFilter, export_lines, record_event
    from app.extensions import db as database
    from app.tenants.services import get_tenant_by_slug

    found = get_tenant_by_slug(tenant_slug)
    flt = AuditFilter(tenant_id=found.id, action=action, actor=actor, user=user_id, case=case_id,
                      since=_parse_time(since), until=_parse_time(until))
    record_event(Actor(type="operator", id="cli", tenant_id=found.id), AuditAction.AUDIT_EXPORTED,
                 details={"format": fmt, "action": action, "actor": actor,
                          "user": str(user_id) if user_id else None,
                          "case": str(case_id) if case_id else None,
                          "since": since, "until": until, "via": "cli"})
    database.session.commit()
    for line in export_lines(flt, fmt):
        click.echo(line, nl=False)


@audit.command("verify")
@click.option("--tenant", "tenant_slug", default=None, help="One tenant (default: every tenant).")
@click.option("--checkpoints", "checkpoint_dir", default=None, type=click.Path(file_okay=False),
              help="Also check the rows against the signed checkpoints in DIR.")
@click.option("--export", "export_file", default=None, type=click.Path(dir_okay=False, exists=True),
              help="Verify an unfiltered JSON-lines export instead of the database (no database access; "
                   "needs --checkpoints and --public-key).")
@click.option("--public-key", "public_key", default=None,
              help="The checkpoints' Ed25519 public key (a PEM file or text); default: REKEY_AUDIT_PUBLIC_KEY, "
                   "else the signing key's.")
@click.option("--json", "as_json", is_flag=True)
def audit_verify(tenant_slug: str | None, checkpoint_dir: str | None, export_file: str | None,
                 public_key: str | None, as_json: bool) -> None:
    """Recompute the hash chains (and check the signed checkpoints); exit 1 naming the first broken
    seq or checkpoint."""
    if export_file:
        if not (checkpoint_dir and public_key):
            raise click.BadParameter("--export needs --checkpoints and --public-key")
        _verify_offline(export_file, checkpoint_dir, public_key, as_json)
        return
    from sqlalchemy import select

    from app.audit.services import verify_chain
    from app.extensions import db as database
    from app.tenants.models import Tenant

    app = _app()
    key = None
    if checkpoint_dir:
        key = _checkpoint_key(public_key, app.extensions["rekey.settings"])
    with app.app_context():
        stmt = select(Tenant).order_by(Tenant.slug)
        if tenant_slug:
            stmt = stmt.where(Tenant.slug == tenant_slug)
        tenants = database.session.scalars(stmt).all()
        if tenant_slug and not tenants:
            click.echo(f"no tenant {tenant_slug!r}", err=True)
            sys.exit(2)
        reports = []
        for t in tenants:
            if checkpoint_dir:
                reports.append((t.slug, _verify_with_checkpoints(t.id, checkpoint_dir, key)))
            else:
                reports.append((t.slug, verify_chain(t.id)))
        database.session.remove()
        database.engine.dispose()
    _print_reports(reports, as_json)


def _checkpoint_key(public_key: str | None, settings: Any) -> Any:
    from app.audit.checkpoints import CheckpointError, parse_public_key, verifying_key

    try:
        key = parse_public_key(public_key) if public_key else verifying_key(settings)
    except CheckpointError as exc:
        click.echo(str(exc), err=True)
        sys.exit(2)
    if key is None:
        click.echo("no public key: give --public-key, or set REKEY_AUDIT_PUBLIC_KEY", err=True)
        sys.exit(2)
    return key


def _verify_with_checkpoints(tenant_id: uuid.UUID, directory: str, key: Any) -> Any:
    from app.audit.checkpoints import CheckpointError, read_log
    from app.audit.services import ChainReport, verify_chain

    try:
        log = read_log(directory, key, tenant_id)
    except CheckpointError as exc:
        return ChainReport(tenant_id, 0, False, None, f"broken checkpoint: {exc}", 0)
    return verify_chain(tenant_id, checkpoints=log)


def _print_reports(reports: list[tuple[str, Any]], as_json: bool) -> None:
    broken = [r for _, r in reports if not r.ok]
    if as_json:
        click.echo(json.dumps([{"tenant": slug, **r.as_dict()} for slug, r in reports], sort_keys=True))
    else:
        for slug, r in reports:
            state = "ok" if r.ok else (f"BROKEN at seq {r.first_broken_seq}: {r.problem}"
                                       if r.first_broken_seq is not None else f"BROKEN: {r.problem}")
            signed = f", {r.checkpoints} signed checkpoints matched" if r.checkpoints is not None and r.ok else ""
            click.echo(f"{slug}: {r.events} events, {state}{signed}")
    sys.exit(1 if broken else 0)


def _verify_offline(export_file: str, checkpoint_dir: str, public_key: str, as_json: bool) -> None:
    """An auditor's check with only the export, the checkpoint files and the public key."""
    from app.audit.checkpoints import CheckpointError, parse_public_key, read_log
    from app.audit.services import ChainReport, verify_rows

    try:
        key = parse_public_key(public_key)
    except CheckpointError as exc:
        click.echo(str(exc), err=True)
        sys.exit(2)
    with open(export_file, encoding="utf-8") as handle:
        first = handle.readline()
        if not first.strip():
            click.echo(f"{export_file} is empty", err=True)
            sys.exit(2)
        try:
            tenant_id = uuid.UUID(json.loads(first)["tenant_id"])
        except (ValueError, KeyError, TypeError):
            click.echo(f"{export_file} is not a JSON-lines audit export", err=True)
            sys.exit(2)
        try:
            log = read_log(checkpoint_dir, key, tenant_id)
        except CheckpointError as exc:
            _print_reports([(str(tenant_id), ChainReport(tenant_id, 0, False, None, f"broken checkpoint: {exc}",
                                                         0))], as_json)
            return
        last = {"seq": 0}

        def rows() -> Any:
            for number, raw in enumerate([first, *handle], start=1):
                try:
                    row = json.loads(raw)
                except ValueError:
                    raise click.ClickException(f"line {number} of {export_file} is not JSON") from None
                if row.get("tenant_id") != str(tenant_id):
                    raise click.ClickException(f"line {number} of {export_file} is another tenant's: the "
                                               "export must be one tenant's, unfiltered")
                last["seq"] = row.get("seq", 0)
                yield row

        failure, count, _ = verify_rows(tenant_id, rows(), checkpoints=log)
    checked = len(log.up_to(count).points)
    report = failure or ChainReport(tenant_id, count, True, checkpoints=checked)
    _print_reports([(str(tenant_id), report)], as_json)


@audit.command("checkpoint")
@click.option("--json", "as_json", is_flag=True)
def audit_checkpoint(as_json: bool) -> None:
    """Sign a checkpoint now for every tenant whose chain moved (what beat does every 5 minutes)."""
    from app.audit.checkpoints import SigningKeyError, write_checkpoints
    from app.extensions import db as database

    app = _app()
    settings = app.extensions["rekey.settings"]
    with app.app_context():
        try:
            result = write_checkpoints(settings)
            database.session.commit()
        except SigningKeyError as exc:
            click.echo(str(exc), err=True)
            sys.exit(2)
        finally:
            database.session.remove()
            database.engine.dispose()
    written = [{"tenant_id": p.tenant_id, "number": p.number, "seq": p.seq, "digest": p.digest}
               for p in result.written]
    _emit({"written": written, "refused": result.refused, "directory": settings.audit_checkpoint_dir}, as_json,
          "\n".join([f"checkpoint #{p['number']} of tenant {p['tenant_id']} at seq {p['seq']}" for p in written]
                    + [f"REFUSED {problem}" for problem in result.refused]
                    + [f"{len(written)} checkpoints written to {settings.audit_checkpoint_dir}"]))
    sys.exit(1 if result.refused else 0)


@audit.command("public-key")
def audit_public_key() -> None:
    """Print the checkpoints' Ed25519 public key (PEM) for auditors."""
    from app.audit.checkpoints import CheckpointError, SigningKeyError, public_key_pem, verifying_key

    try:
        key = verifying_key(_app().extensions["rekey.settings"])
    except (CheckpointError, SigningKeyError) as exc:
        click.echo(str(exc), err=True)
        sys.exit(2)
    if key is None:
        click.echo("no key: set REKEY_AUDIT_PUBLIC_KEY or REKEY_AUDIT_SIGNING_KEY "
                   "(development: run `rekey audit checkpoint` once)", err=True)
        sys.exit(2)
    click.echo(public_key_pem(key), nl=False)


@main.group()
def integration() -> None:
    """Ticketing and HR systems that post signed webhooks."""


@integration.command("create")
@click.option("--tenant", "tenant_slug", required=True)
@click.option("--kind", type=click.Choice(["standard", "zendesk", "jira", "hr"]), required=True)
@click.option("--name", required=True)
@click.option("--callback-url", default=None, help="Where signed status callbacks go (standard kind).")
@click.option("--outbound-base-url", default=None,
              help="Zendesk/Jira site for status comments, e.g. https://acme.zendesk.com.")
@click.option("--outbound-email", default=None, help="The API user's email for status comments.")
@click.option("--secret-stdin", is_flag=True,
              help="Read the signing secret from stdin (vendors that issue their own, e.g. Zendesk).")
@click.option("--outbound-token-stdin", is_flag=True,
              help="Read the vendor API token for status comments from stdin (after the secret, if both).")
@click.option("--json", "as_json", is_flag=True)
@in_app
def integration_create(tenant_slug: str, kind: str, name: str, callback_url: str | None,
                       outbound_base_url: str | None, outbound_email: str | None, secret_stdin: bool,
                       outbound_token_stdin: bool, as_json: bool) -> None:
    """Register an integration; prints its webhook URL and signing secret once."""
    from app.intake.services import create_integration
    from app.tenants.services import get_tenant_by_slug

    # Secrets come on stdin, never as arguments: arguments land in shell history and `ps`.
    supplied = sys.stdin.readline().strip() if secret_stdin else None
    outbound = None
    if outbound_base_url or outbound_token_stdin:
        if not (outbound_base_url and outbound_email and outbound_token_stdin):
            raise click.BadParameter("status comments need --outbound-base-url, --outbound-email and "
                                     "--outbound-token-stdin together")
        outbound = {"base_url": outbound_base_url, "email": outbound_email,
                    "api_token": sys.stdin.readline().strip()}
    created, secret = create_integration(get_tenant_by_slug(tenant_slug), kind=kind, name=name,
                                         callback_url=callback_url, secret=supplied, outbound=outbound)
    url = f"{Settings().public_url.rstrip('/')}/v1/webhooks/{created.id}"
    _emit({"id": str(created.id), "kind": kind, "name": name, "webhook_url": url, "signing_secret": secret},
          as_json, f"integration {name} ({kind}) id={created.id}\nwebhook URL: {url}\n"
          f"signing secret (shown once, store it now): {secret}")


@integration.command("rotate-secret")
@click.argument("integration_id")
@click.option("--secret-stdin", is_flag=True, help="Read the new secret from stdin (vendor-issued).")
@click.option("--json", "as_json", is_flag=True)
@in_app
def integration_rotate(integration_id: str, secret_stdin: bool, as_json: bool) -> None:
    """Replace the signing secret; the previous one keeps working for 24 hours."""
    from app.actor import Actor
    from app.intake.services import get_integration, rotate_secret

    found = get_integration(integration_id)
    supplied = sys.stdin.readline().strip() if secret_stdin else None
    secret = rotate_secret(found, actor=Actor(type="operator", id="cli", tenant_id=found.tenant_id), secret=supplied)
    _emit({"id": str(found.id), "signing_secret": secret,
           "previous_valid_until": found.previous_secret_expires_at.isoformat()
           if found.previous_secret_expires_at else None}, as_json,
          f"new signing secret (shown once, store it now): {secret}\n"
          f"the previous secret keeps working until {found.previous_secret_expires_at}")


@main.command("messages")
@click.option("--to", default=None, help="Only messages to this address or number.")
@click.option("--limit", default=20, show_default=True)
@click.option("--json", "as_json", is_flag=True)
def messages(to: str | None, limit: int, as_json: bool) -> None:
    """What the development channel "sent" (read a verification code in development)."""
    from integrations.channels.dev import read_messages

    found = read_messages(Settings().dev_outbox, to=to, limit=limit)
    if as_json:
        click.echo(json.dumps(found, sort_keys=True, default=str))
        return
    for record in found:
        click.echo(f"{record['sent_at']}  {record['channel']:<5}  to {record['to']}: {record['body']}")


@main.command("run")
def run() -> None:
    """Web, a Celery worker and beat for development, in the foreground (Ctrl-C stops all)."""
    from app.devserver import run as run_development

    sys.exit(run_development(Settings()))


@main.group()
def dlq() -> None:
    """Tasks that failed for good (dead letters)."""


@dlq.command("list")
@click.option("--all", "show_all", is_flag=True, help="Include dead letters already retried.")
@click.option("--json", "as_json", is_flag=True)
@in_app
def dlq_list(show_all: bool, as_json: bool) -> None:
    """List dead-lettered tasks, newest first."""
    from sqlalchemy import select

    from app.extensions import db as database
    from app.jobs.models import DeadLetter

    stmt = select(DeadLetter).order_by(DeadLetter.created_at.desc())
    if not show_all:
        stmt = stmt.where(DeadLetter.retried_at.is_(None))
    rows = [{"id": str(r.id), "task": r.task, "kwargs": r.kwargs, "error_type": r.error_type, "error": r.error,
             "attempts": r.attempts, "created_at": r.created_at.isoformat(),
             "retried_at": r.retried_at.isoformat() if r.retried_at else None}
            for r in database.session.scalars(stmt).all()]
    if as_json:
        click.echo(json.dumps(rows, sort_keys=True))
        return
    for r in rows:
        click.echo(f"{r['id']}  {r['created_at']}  {r['task']}  {r['error_type']} after {r['attempts']} attempts")
    if not rows:
        click.echo("no dead letters")


@dlq.command("retry")
@click.argument("dead_letter_id")
@click.option("--json", "as_json", is_flag=True)
@in_app
def dlq_retry(dead_letter_id: str, as_json: bool) -> None:
    """Queue a dead-lettered task again."""
    import uuid

    from app.jobs.services import retry_dead_letter

    try:
        key = uuid.UUID(dead_letter_id)
    except ValueError as exc:
        raise click.BadParameter("not a dead letter id") from exc
    message = retry_dead_letter(key)
    _emit({"id": dead_letter_id, "outbox_id": str(message.id), "task": message.task}, as_json,
          f"queued {message.task} again (outbox {message.id})")


@main.command("demo")
@click.option("--url", default=None,
              help="The service `rekey run` started (default: REKEY_PUBLIC_URL, else "
                   "http://REKEY_HOST:REKEY_PORT, i.e. http://localhost:5000).")
@click.option("--timeout", default=30.0, show_default=True, type=click.FloatRange(min=1),
              help="Seconds to wait for each step the worker carries out.")
@click.option("--json", "as_json", is_flag=True, help="One machine-readable summary instead of the story.")
def demo(url: str | None, timeout: float, as_json: bool) -> None:
    """A full scripted recovery against the running service (start it with `make run` first)."""
    from app.demo import run_demo

    sys.exit(run_demo(Settings(), url=url, timeout=timeout, as_json=as_json))


if __name__ == "__main__":  # pragma: no cover
    main()


@main.group()
def idp() -> None:
    """A tenant's OpenID Connect identity providers (federated sign-in and federated evidence)."""


@idp.command("add")
@click.option("--tenant", "tenant_slug", required=True)
@click.option("--issuer", required=True, help="The issuer URL, exactly as the ID tokens' `iss`.")
@click.option("--client-id", required=True)
@click.option("--name", default=None, help='Shown as "Sign in with NAME" (default: the issuer\'s host).')
@click.option("--json", "as_json", is_flag=True)
@in_app
def idp_add(tenant_slug: str, issuer: str, client_id: str, name: str | None, as_json: bool) -> None:
    """Register an identity provider; the client secret is read from stdin and stored encrypted.
    Register the printed redirect URI at the provider."""
    from app.actor import Actor
    from app.federation.flow import callback_url
    from app.federation.providers import add_identity_provider
    from app.tenants.services import get_tenant_by_slug

    found = get_tenant_by_slug(tenant_slug)
    # Secrets come on stdin, never as arguments: arguments land in shell history and `ps`.
    secret = sys.stdin.readline().strip()
    provider = add_identity_provider(found, Actor(type="operator", id="cli", tenant_id=found.id), issuer=issuer,
                                     client_id=client_id, client_secret=secret, name=name)
    redirect_uri = callback_url(found)
    _emit({"id": str(provider.id), "tenant": found.slug, "name": provider.name, "issuer": provider.issuer,
           "client_id": provider.client_id, "redirect_uri": redirect_uri}, as_json,
          f"identity provider {provider.name} id={provider.id}\nissuer: {provider.issuer}\n"
          f"register this redirect URI at the provider: {redirect_uri}")


@idp.command("list")
@click.option("--tenant", "tenant_slug", required=True)
@click.option("--json", "as_json", is_flag=True)
@in_app
def idp_list(tenant_slug: str, as_json: bool) -> None:
    """The tenant's identity providers (never their secrets)."""
    from app.federation.providers import list_identity_providers
    from app.tenants.services import get_tenant_by_slug

    found = get_tenant_by_slug(tenant_slug)
    rows = [{"id": str(p.id), "name": p.name, "issuer": p.issuer, "client_id": p.client_id,
             "created_at": p.created_at.isoformat()} for p in list_identity_providers(found.id)]
    _emit(rows, as_json, "\n".join(f"{r['name']}  {r['issuer']}  client_id={r['client_id']}  id={r['id']}"
                                   for r in rows) or "no identity providers")
# --- the agent console (issue 10) ----------------------------------------------------------


def _console_how_to(invitation: str) -> str:
    return (f"console invitation (one-time, valid 24 hours; send it to the agent only): {invitation}\n"
            "The agent opens it, chooses a console password, then signs in at the console (tenant, email, "
            "password) and sets up a second factor, a security key or an authenticator app, at the first "
            "sign-in. The API token above stays for scripts and integrations.")


def _agent_of(tenant_slug: str, email: str) -> Any:
    from sqlalchemy import select

    from app.emails import normalize_email
    from app.errors import NotFound
    from app.extensions import db as database
    from app.tenants.models import Agent
    from app.tenants.services import get_tenant_by_slug

    tenant = get_tenant_by_slug(tenant_slug)
    found = database.session.scalars(select(Agent).where(Agent.tenant_id == tenant.id,
                                                         Agent.email == normalize_email(email))).first()
    if found is None:
        raise NotFound("No such agent in the tenant.")
    return found


@agent.command("invite")
@click.option("--tenant", "tenant_slug", required=True)
@click.option("--email", required=True)
@click.option("--json", "as_json", is_flag=True)
@in_app
def agent_invite(tenant_slug: str, email: str, as_json: bool) -> None:
    """Issue a new one-time console invitation (24 hours) to set the password; earlier ones stop working."""
    from app.actor import Actor
    from app.console.credentials import invite_agent

    found = _agent_of(tenant_slug, email)
    invitation = invite_agent(Actor.system(found.tenant_id), found)
    _emit({"id": str(found.id), "invitation": invitation}, as_json, _console_how_to(invitation))


@agent.command("revoke-sessions")
@click.option("--tenant", "tenant_slug", required=True)
@click.option("--email", required=True)
@click.option("--reason", required=True)
@click.option("--json", "as_json", is_flag=True)
@in_app
def agent_revoke_sessions(tenant_slug: str, email: str, reason: str, as_json: bool) -> None:
    """End every console session of the agent (audited)."""
    from app.actor import Actor
    from app.console.credentials import revoke_agent_sessions

    found = _agent_of(tenant_slug, email)
    count = revoke_agent_sessions(Actor.system(found.tenant_id), found, reason=reason)
    _emit({"id": str(found.id), "sessions_revoked": count}, as_json, f"{count} console session(s) ended")


@agent.command("reset-mfa")
@click.option("--tenant", "tenant_slug", required=True)
@click.option("--email", required=True)
@click.option("--reason", required=True)
@click.option("--json", "as_json", is_flag=True)
@in_app
def agent_reset_mfa(tenant_slug: str, email: str, reason: str, as_json: bool) -> None:
    """Remove the agent's console second factors and end their sessions (audited); they enrol a new
    one at their next sign-in."""
    from app.actor import Actor
    from app.console.credentials import reset_agent_mfa

    found = _agent_of(tenant_slug, email)
    removed = reset_agent_mfa(Actor.system(found.tenant_id), found, reason=reason)
    _emit({"id": str(found.id), "factors_removed": removed}, as_json,
          f"{removed} second factor(s) removed; the agent enrols a new one at the next console sign-in")
