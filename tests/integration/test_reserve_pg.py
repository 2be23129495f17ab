"""Reservations on PostgreSQL: migration 0010 applies, and admission (under its advisory
lock) refuses the second of two wishes the cloud cannot hold together, even at once."""

from __future__ import annotations

import os
import threading
from typing import Any

import pytest

from tests.integration.pg_fixtures import private_pg
from tests.unit.test_reserve_db import FakeScontrol, reserve
from vcluster import db
from vcluster.config import DatabaseSettings

pytestmark = pytest.mark.integration


def test_two_reservations_at_once_are_admitted_one_after_the_other() -> None:
    if os.geteuid() != 0:
        pytest.skip("the private PostgreSQL needs root")
    from tests.integration.pg_fixtures import new_database

    with private_pg() as server:
        engine = db.make_engine(DatabaseSettings(url=new_database(server)))
        try:
            sessions = db.session_factory(engine)
            results: list[Any] = []

            def one() -> None:  # three nodes each: the class has four
                results.append(reserve(sessions, FakeScontrol(), 3))

            threads = [threading.Thread(target=one) for _ in range(2)]
            for t in threads:
                t.start()
            for t in threads:
                t.join(60)
            assert sorted(r.accepted for r in results) == [False, True], \
                [r.reason for r in results]
            refused = next(r for r in results if not r.accepted)
            assert refused.reason.startswith("refused: class small has 4 nodes, 3 of them "
                                             "reserved"), refused.reason
        finally:
            engine.dispose()
