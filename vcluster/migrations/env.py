"""Alembic environment: runs vcluster's migrations without an ``alembic.ini``.

:func:`vcluster.db.upgrade_engine` passes an open connection in
``config.attributes["connection"]``; without one (e.g. ``alembic`` run by hand with
``-x url=...``) an engine is made from ``sqlalchemy.url``. Offline mode prints SQL.
"""

from __future__ import annotations

from alembic import context
from sqlalchemy import Connection

from vcluster.db import Base, create_db_engine

config = context.config
target_metadata = Base.metadata


def _configure(connection: Connection) -> None:
    context.configure(
        connection=connection,
        target_metadata=target_metadata,
        render_as_batch=connection.dialect.name == "sqlite",
    )
    with context.begin_transaction():
        context.run_migrations()


def run_offline() -> None:
    context.configure(
        url=config.get_main_option("sqlalchemy.url"),
        target_metadata=target_metadata,
        literal_binds=True,
    )
    with context.begin_transaction():
        context.run_migrations()


def run_online() -> None:
    connection = config.attributes.get("connection")
    if connection is not None:
        _configure(connection)
        return
    url = context.get_x_argument(as_dictionary=True).get("url") or config.get_main_option(
        "sqlalchemy.url"
    )
    engine = create_db_engine(str(url))
    try:
        with engine.begin() as conn:
            _configure(conn)
    finally:
        engine.dispose()


if context.is_offline_mode():
    run_offline()
else:
    run_online()
