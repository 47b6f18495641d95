"""Expected failures give one line that names the problem and the fix, and never the password."""

from __future__ import annotations

import socket
import threading
from collections.abc import Iterator
from typing import Any

import pytest
from tars_1004_db import plugin

from tars_core import FixError, TargetError
from tars_core.processes import free_port
from tars_core.testing import unreachable_target_test

pytestmark = [pytest.mark.anyio, pytest.mark.timeout(180)]
SECRET = "s3cret-pw"


@pytest.fixture
def blackhole() -> Iterator[int]:
    """A real listener that accepts connections and never answers (a hung server or a dropping proxy)."""
    server = socket.socket()
    server.bind(("127.0.0.1", 0))
    server.listen(8)
    accepted: list[socket.socket] = []
    stop = threading.Event()

    def accept() -> None:
        server.settimeout(0.1)
        while not stop.is_set():
            try:
                accepted.append(server.accept()[0])
            except OSError:
                continue

    thread = threading.Thread(target=accept, daemon=True)
    thread.start()
    yield int(server.getsockname()[1])
    stop.set()
    thread.join()
    for conn in accepted:
        conn.close()
    server.close()


def one_line(exc: BaseException) -> str:
    text = str(exc)
    assert "\n" not in text and SECRET not in text
    return text


@pytest.mark.parametrize("hook", ["tars_apply", "tars_verify", "tars_rollback"])
@pytest.mark.parametrize(
    "credentials", [f"postgres:{SECRET}@{{where}}/tars", f"postgres@{{where}}/tars?password={SECRET}"]
)
async def test_unreachable_server(hook: str, credentials: str, make_ctx: Any) -> None:
    """A TargetError naming host:port; rollback too, since it cannot tell what an earlier apply built."""
    port = free_port()
    ctx = make_ctx("postgresql://" + credentials.format(where=f"127.0.0.1:{port}"))
    with pytest.raises(TargetError) as failure:
        await getattr(plugin, hook)(ctx)
    text = one_line(failure.value)
    assert f"cannot reach PostgreSQL at 127.0.0.1:{port} (connection refused" in text
    assert "start the server or fix host/port in targets.postgres" in text


async def test_server_that_never_answers_times_out(blackhole: int, make_ctx: Any) -> None:
    ctx = make_ctx(f"postgresql://postgres:{SECRET}@127.0.0.1:{blackhole}/tars", connect_timeout_s=0.5)
    with pytest.raises(TargetError) as failure:
        await plugin.tars_apply(ctx)
    assert f"cannot reach PostgreSQL at 127.0.0.1:{blackhole} (timed out after 0.5 s" in one_line(failure.value)


@pytest.mark.parametrize(
    ("dsn", "expected"),
    [
        (f"host=127.0.0.1 password={SECRET}", "targets.postgres is not a PostgreSQL URL"),
        (f"postgresql://postgres:{SECRET}@127.0.0.1:99999/tars", "targets.postgres has an invalid port"),
        (f"postgresql://postgres:{SECRET}@127.0.0.1:5o32/tars", "targets.postgres has an invalid port"),
        (f"mysql://root:{SECRET}@127.0.0.1/tars", "use postgresql://user[:password]@host:port/db"),
    ],
)
async def test_bad_dsn(dsn: str, expected: str, make_ctx: Any) -> None:
    with pytest.raises(TargetError) as failure:
        await plugin.tars_apply(make_ctx(dsn))
    assert expected in one_line(failure.value)


async def test_missing_database(make_ctx: Any, dsn_for: Any) -> None:
    with pytest.raises(TargetError) as failure:
        await plugin.tars_verify(make_ctx(dsn_for("tars1004_does_not_exist")))
    assert 'database "tars1004_does_not_exist" does not exist' in one_line(failure.value)


async def test_missing_target_key(make_ctx: Any) -> None:
    with pytest.raises(TargetError, match=r"targets\.postgres is not set"):
        await plugin.tars_apply(make_ctx(None))


async def test_database_without_the_evaluation_schema(empty_database: str, make_ctx: Any) -> None:
    with pytest.raises(FixError, match=r"table public.evaluations not found: TARS-1004 needs the v1.0.0"):
        await plugin.tars_apply(make_ctx(empty_database))


def test_wrong_config_field_names_its_path(make_ctx: Any) -> None:
    with pytest.raises(Exception, match=r"plugins\.tars-1004-db.*lock_timeout"):
        make_ctx("postgresql://x@127.0.0.1/y", lock_timeout=5)


test_cli_against_a_dead_port = unreachable_target_test(
    "tars-1004-db",
    "postgres",
    "postgresql://postgres:{password}@127.0.0.1:{port}/tars",
    expect="cannot reach PostgreSQL at 127.0.0.1:{port} (connection refused",
    config={"connect_timeout_s": 2},
    password=SECRET,
)
