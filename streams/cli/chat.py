"""`eventsink chat history`: a conversation as its tenant sees it."""

from __future__ import annotations

import sys
from uuid import UUID

import click
import orjson
import psycopg
from rich.table import Table

from streams.cli import names
from streams.cli.console import READ_DSN_HELP, dsn_to_read, err, out, settings
from streams.tools import source

# A conversation as its tenant sees it: another tenant's is not found.
HISTORY = """
SELECT m.occurred_at, m.role, m.model, m.content, m.prompt_tokens, m.completion_tokens
FROM eventsink.chat_messages m
JOIN eventsink.chat_sessions s ON s.tenant_id = m.tenant_id AND s.id = m.session_id  -- their key since 0008
WHERE m.session_id = %(conversation)s AND s.tenant_id = %(tenant)s
ORDER BY m.occurred_at DESC, m.id DESC
LIMIT %(last)s
"""
SESSION = """
SELECT id, tenant_id, user_id, created_at, last_message_at, message_count, prompt_tokens, completion_tokens
FROM eventsink.chat_sessions WHERE id = %(conversation)s AND tenant_id = %(tenant)s
"""


@click.group()
def chat() -> None:
    """Read chat data."""


@chat.command("history")
@click.argument("conversation_id", type=click.UUID)
@click.option(
    "--tenant", required=True, type=names.TENANT, help="The tenant asking: another's conversation is not found."
)
@click.option(
    "--last", type=click.IntRange(min=1, max=100_000), default=10, show_default=True, help="How many messages."
)
@click.option("--json", "as_json", is_flag=True, help="One JSON object per message.")
@click.option("--read-dsn", default=None, help=READ_DSN_HELP)
def history(conversation_id: UUID, tenant: str, last: int, as_json: bool, read_dsn: str | None) -> None:
    """Print the last messages of a conversation, oldest first, and which server was read (primary
    or standby: a standby may not have replayed the latest messages yet)."""
    s = settings()
    params = {"conversation": conversation_id, "tenant": tenant, "last": last}
    with psycopg.connect(dsn_to_read(read_dsn, s)) as conn:
        err.print(f"read PostgreSQL at {source.read_from(conn)}", highlight=False)
        session = conn.execute(SESSION, params).fetchone()
        rows = conn.execute(HISTORY, params).fetchall()[::-1] if session else []
    if session is None:
        # Same answer whether the conversation does not exist or belongs to someone else.
        err.print(f"conversation {conversation_id} not found")
        sys.exit(1)
    if as_json:
        for at, role, model, content, pt, ct in rows:
            click.echo(
                orjson.dumps(
                    {
                        "occurred_at": at,
                        "role": role,
                        "model": model,
                        "content": content,
                        "prompt_tokens": pt,
                        "completion_tokens": ct,
                    }
                ).decode()
            )
        return
    _, _, user_id, created, last_at, count, prompt, completion = session
    click.echo(
        f"conversation {conversation_id}: {count} messages, {prompt} prompt + {completion} completion tokens, "
        f"user {user_id or '-'}, {created:%Y-%m-%d %H:%M} to {last_at:%Y-%m-%d %H:%M}"
    )
    table = Table(show_lines=False)
    for column in ("occurred at", "role", "model", "content"):
        table.add_column(column, overflow="fold")
    for at, role, model, content, _, _ in rows:
        table.add_row(f"{at:%Y-%m-%d %H:%M:%S.%f}", role, model or "", content)
    out.print(table)
