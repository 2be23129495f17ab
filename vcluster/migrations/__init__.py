"""Alembic migrations of vcluster's state database, run by :func:`vcluster.db.upgrade`."""
