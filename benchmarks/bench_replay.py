"""``binder dlq replay``: letters a second, with the journal that makes it exactly once and
without it (the plain at-least-once loop: republish, then commit), in one run.

Each case fills a dead-letter destination of its own with ``n`` letters (``app.send``, the
headers a dead letter carries), then runs the command's own code in this process (``binder.cli
.main``) and times it, start-up included. Binders: the durable log (a temporary directory) and
Redis (``$REDIS_URL``, else 127.0.0.1:6379; its keys deleted after).

``python -m benchmarks.bench_replay [N]``.
"""

from __future__ import annotations

import asyncio
import contextlib
import io
import os
import sys
import tempfile
import time
import uuid
from pathlib import Path
from typing import Any

import yaml

from binder import App
from binder.cli import main as cli
from binder.commands import dlq
from binder.message import EXCEPTION_TYPE, ORIGINAL_DESTINATION


async def _fill(options: dict[str, Any], letters: str, destination: str, n: int) -> None:
    app = App({"binder": {"binders": {"b": options}}}, environ={})
    headers = {ORIGINAL_DESTINATION: destination, EXCEPTION_TYPE: "builtins.ValueError"}
    async with app:
        for start in range(0, n, 500):
            await asyncio.gather(
                *(
                    app.send(letters, {"n": i}, key=f"k{i}", headers=headers)
                    for i in range(start, min(n, start + 500))
                )
            )


def _replay(config: Path, destination: str, journal: bool) -> float:
    kept_by = dlq.Journal.kept_by
    if not journal:
        dlq.Journal.kept_by = staticmethod(lambda binder: False)  # type: ignore[method-assign]
    out = io.StringIO()
    try:
        started = time.perf_counter()
        with contextlib.redirect_stdout(out), contextlib.redirect_stderr(io.StringIO()):
            code = cli(["dlq", "replay", destination, "--group", "g", "--config", str(config)])
        elapsed = time.perf_counter() - started
    finally:
        dlq.Journal.kept_by = kept_by  # type: ignore[method-assign]
    if code != 0:
        raise SystemExit(f"replay failed ({code}): {out.getvalue()}")
    return elapsed


def _case(options: dict[str, Any], where: Path, n: int, journal: bool) -> float:
    destination = f"bench-{uuid.uuid4().hex[:8]}"
    config = where / f"{destination}.yml"
    config.write_text(yaml.safe_dump({"binder": {"binders": {"b": options}}}))
    asyncio.run(_fill(options, f"{destination}.g.dlq", destination, n))
    return n / _replay(config, destination, journal)


def _clean_redis(url: str, prefix: str) -> None:
    import redis

    client = redis.Redis.from_url(url)
    for key in client.scan_iter(f"{prefix}*"):
        client.delete(key)
    client.close()


def main(n: int = 2000) -> None:
    print(f"\nbinder dlq replay, {n:,} letters, start-up included (letters/s)")
    print(f"{'binder':12} {'journal':>10} {'no journal':>12} {'ratio':>8}")
    url = os.environ.get("REDIS_URL", "redis://127.0.0.1:6379/0")
    prefix = f"bench-replay-{uuid.uuid4().hex[:6]}:"
    with tempfile.TemporaryDirectory() as tmp:
        where = Path(tmp)
        cases = {
            "durable log": {"type": "log", "path": str(where / "log")},
            "redis": {"type": "redis", "url": url, "key-prefix": prefix},
        }
        try:
            for label, options in cases.items():
                plain = _case(options, where, n, journal=False)
                noted = _case(options, where, n, journal=True)
                print(f"{label:12} {noted:10,.0f} {plain:12,.0f} {noted / plain:8.2f}")
        finally:
            _clean_redis(url, prefix)


if __name__ == "__main__":
    main(int(sys.argv[1]) if len(sys.argv) > 1 else 2000)
