"""The test database itself: real server, real password authentication."""

import pytest

from safedrop.errors import ConnectionFailed
from safedrop.pg.database import connect, database_from_url


def test_guide_db_has_the_guide_shape(guide_db):
    assert guide_db.exists("public.credit_allocations")
    assert guide_db.count("credits") == 25
    assert guide_db.count("credit_allocations") == 0


def test_wrong_password_is_refused(guide_db):
    bad = database_from_url(guide_db.server.url(guide_db.name, password="not-the-password"))
    with pytest.raises(ConnectionFailed, match="password authentication failed") as exc:
        with connect(bad):
            pass
    assert "not-the-password" not in str(exc.value)
