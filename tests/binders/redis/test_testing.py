"""The Redis test harness on real servers: reachability, per-test keys, and RedisCluster."""

from __future__ import annotations

import re
import shutil
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import redis
from redis.cluster import RedisCluster as ClusterClient

from binders.redis.testing import (
    BUS_OFFSET,
    RedisCluster,
    ServerError,
    check_reachable,
    delete_prefixed,
)

pytest_plugins = ["pytester"]

PASSWORD = "s3cr:et"
"""The password of the guarded server: its colon must be percent-encoded in a URL."""


@pytest.fixture
def closed_port() -> Iterator[int]:
    """A loopback port held bound but not listening, so connections to it are refused."""
    with socket.socket() as held:
        held.bind(("127.0.0.1", 0))
        yield held.getsockname()[1]


@pytest.fixture(scope="module")
def guarded_port(tmp_path_factory: pytest.TempPathFactory) -> Iterator[int]:
    """The port of a ``redis-server`` of this module's own that wants ``PASSWORD``."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    command = ["redis-server", "--port", str(port), "--bind", "127.0.0.1", "--save", ""]
    command += ["--requirepass", PASSWORD, "--dir", str(tmp_path_factory.mktemp("guarded"))]
    server = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    assert server.stdout is not None
    for line in server.stdout:  # ends at the ready line, or when the server exits
        if b"Ready to accept connections" in line:
            break
    try:
        assert server.poll() is None, "the guarded redis-server did not start"
        yield port
    finally:
        server.terminate()
        server.wait(10)
        server.stdout.close()


# -- check_reachable --------------------------------------------------------------------------


def test_check_reachable_passes_on_the_local_server(redis_url: str) -> None:
    check_reachable(redis_url)


def test_check_reachable_names_the_url_of_a_closed_port_without_its_password(
    closed_port: int,
) -> None:
    with pytest.raises(ServerError) as failure:
        check_reachable(f"redis://:hunter2@127.0.0.1:{closed_port}/0", timeout=2)
    assert f"redis://:***@127.0.0.1:{closed_port}/0 is unreachable" in str(failure.value)
    assert "hunter2" not in str(failure.value)


def test_check_reachable_says_tls_urls_are_out_of_scope() -> None:
    with pytest.raises(ServerError, match=r"rediss://:\*\*\*@127\.0\.0\.1:6380.*out of scope"):
        check_reachable("rediss://:hunter2@127.0.0.1:6380/0")


def test_check_reachable_authenticates_with_the_password_of_the_url(guarded_port: int) -> None:
    check_reachable(f"redis://:s3cr%3Aet@127.0.0.1:{guarded_port}/0")
    check_reachable(f"redis://default:s3cr%3Aet@127.0.0.1:{guarded_port}/0")


def test_check_reachable_says_a_password_is_missing(guarded_port: int) -> None:
    with pytest.raises(ServerError, match="needs a password"):
        check_reachable(f"redis://127.0.0.1:{guarded_port}/0")


def test_check_reachable_reports_a_wrong_password_masked(guarded_port: int) -> None:
    with pytest.raises(ServerError, match=r"redis://:\*\*\*@.* AUTH .*WRONGPASS") as failure:
        check_reachable(f"redis://:wrong@127.0.0.1:{guarded_port}/0")
    assert "wrong@" not in str(failure.value)


# -- key_prefix and delete_prefixed -----------------------------------------------------------


def test_key_prefix_is_short_and_plain(key_prefix: str) -> None:
    assert re.fullmatch(r"sbt-key_prefix_is_short_and_-[0-9a-f]{8}:", key_prefix)


@pytest.mark.parametrize("case", ["a b", "x[1]*"])
def test_key_prefix_replaces_other_characters(key_prefix: str, case: str) -> None:
    assert re.fullmatch(r"sbt-key_prefix_replaces_othe-[0-9a-f]{8}:", key_prefix)


def test_delete_prefixed_deletes_every_key_with_the_prefix(redis_url: str, key_prefix: str) -> None:
    keys = [f"{key_prefix}k{n}" for n in range(1234)]  # more than one UNLINK chunk
    neighbour = key_prefix.removesuffix(":") + "-neighbour"
    with redis.Redis.from_url(redis_url) as client:
        client.mset(dict.fromkeys([*keys, neighbour], b"1"))
        assert delete_prefixed(redis_url, key_prefix) == len(keys)
        assert list(client.scan_iter(match=f"{key_prefix}*")) == []
        assert client.unlink(neighbour) == 1


def test_delete_prefixed_takes_glob_characters_literally(redis_url: str, key_prefix: str) -> None:
    literal = f"{key_prefix}g[ab]*?\\:"
    with redis.Redis.from_url(redis_url) as client:
        client.mset({f"{literal}1": b"1", f"{literal}2": b"1", f"{key_prefix}ga*?\\:3": b"1"})
        assert delete_prefixed(redis_url, literal) == 2
        assert client.exists(f"{key_prefix}ga*?\\:3") == 1  # key_prefix deletes it after


def test_key_prefix_deletes_the_keys_of_its_test_afterwards(
    pytester: pytest.Pytester,
    redis_url: str,
    monkeypatch: pytest.MonkeyPatch,
    request: pytest.FixtureRequest,
) -> None:
    monkeypatch.setenv("REDIS_URL", redis_url)
    pytester.makepyfile(
        """
        import redis

        def test_writes(key_prefix, redis_url):
            with redis.Redis.from_url(redis_url) as client:
                client.mset({key_prefix + "a": 1, key_prefix + "{tag}b": 2})
            open("prefix.txt", "w").write(key_prefix)
        """
    )
    pytester.runpytest(*_plugin_arguments(request)).assert_outcomes(passed=1)
    prefix = (pytester.path / "prefix.txt").read_text()
    with redis.Redis.from_url(redis_url) as client:
        assert list(client.scan_iter(match=f"{prefix}*")) == []


def _plugin_arguments(request: pytest.FixtureRequest) -> list[str]:
    """``-p binders.redis.testing`` unless the entry point ``binder-redis`` loads it."""
    loaded = request.config.pluginmanager.has_plugin("binder-redis")
    return [] if loaded else ["-p", "binders.redis.testing"]


# -- RedisCluster -----------------------------------------------------------------------------


def test_cluster_round_trips_a_key(redis_cluster_url: str, key_prefix: str) -> None:
    with ClusterClient.from_url(redis_cluster_url) as client:
        client.set(f"{key_prefix}greeting", b"hello")
        assert client.get(f"{key_prefix}greeting") == b"hello"
        assert delete_prefixed(redis_cluster_url, key_prefix) == 1


def test_cluster_spreads_hash_tags_over_three_masters(
    redis_cluster_url: str, key_prefix: str
) -> None:
    with ClusterClient.from_url(redis_cluster_url) as client:
        assert len(client.get_primaries()) == 3
        by_node = {client.get_node_from_key(f"{{{tag}}}k").port: tag for tag in "abcdefghij"}
        assert len(by_node) == 3
        for port, tag in by_node.items():
            client.set(f"{key_prefix}{{{tag}}}k", tag)
            with redis.Redis(
                host="127.0.0.1", port=port
            ) as node:  # stored on that node, not just routed
                assert node.get(f"{key_prefix}{{{tag}}}k") == tag.encode()
        assert delete_prefixed(redis_cluster_url, key_prefix) == 3


def test_cluster_stop_closes_its_ports_and_removes_its_directory() -> None:
    cluster = RedisCluster()
    with cluster as url:
        assert url == f"redis://127.0.0.1:{cluster.ports[0]}/0"
        assert cluster.directory is not None and cluster.directory.is_dir()
        check_reachable(url)
    for port in cluster.ports:
        for used in (port, port + BUS_OFFSET):
            with pytest.raises(ConnectionRefusedError):
                socket.create_connection(("127.0.0.1", used), 2).close()
    assert not cluster.directory.exists()
    cluster.stop()  # idempotent


def test_cluster_that_does_not_form_in_time_is_stopped() -> None:
    cluster = RedisCluster(start_timeout=0)
    with pytest.raises(ServerError, match=r"ports .* did not accept connections .* last output"):
        cluster.start()
    assert cluster.directory is not None and not cluster.directory.exists()
    assert _listening([str(port) for port in cluster.ports]) == []


def test_cluster_names_a_missing_redis_server(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    monkeypatch.setenv("PATH", str(tmp_path))
    with pytest.raises(ServerError, match="redis-server is not on PATH"):
        RedisCluster().start()


OWNER = """
import time
from binders.redis.testing import RedisCluster
cluster = RedisCluster()
cluster.start()
print(cluster.directory, *cluster.ports, flush=True)
time.sleep(60)
"""
"""A process that starts a cluster and would leave it running when killed."""


def test_cluster_nodes_die_with_the_process_that_started_them() -> None:
    owner = subprocess.Popen([sys.executable, "-c", OWNER], stdout=subprocess.PIPE, text=True)
    assert owner.stdout is not None
    directory, *ports = owner.stdout.readline().split()
    try:
        owner.send_signal(signal.SIGKILL)
        owner.wait()
        deadline = time.monotonic() + 10  # the kernel sends the nodes SIGTERM; they shut down
        while _listening(ports) and time.monotonic() < deadline:
            time.sleep(0.05)
        assert _listening(ports) == []
    finally:
        owner.stdout.close()
        shutil.rmtree(directory)  # stop() never ran


def _listening(ports: list[str]) -> list[str]:
    """The ports that still accept connections."""
    listening = []
    for port in ports:
        try:
            socket.create_connection(("127.0.0.1", int(port)), 1).close()
        except OSError:
            continue
        listening.append(port)
    return listening
