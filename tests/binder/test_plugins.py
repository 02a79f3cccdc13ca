"""Plugins: built-in binders come through the entry points, extras through the same hooks."""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from importlib.metadata import entry_points
from typing import Any

import pytest

from binder import App, plugins
from binder.spi import hookimpl


def test_the_log_binder_is_registered_through_the_binder_entry_point_group() -> None:
    names = {ep.name: ep.value for ep in entry_points(group="binder")}
    assert names.get("log") == "binders.log"
    assert "log" in plugins.binder_types()


def test_importing_binder_loads_no_backend_client() -> None:
    import subprocess
    import sys

    code = (
        "import sys, binder; "
        "print(sorted(m for m in ('aiokafka', 'redis', 'aio_pika') if m in sys.modules))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"


def test_loading_every_binder_plugin_loads_no_client() -> None:
    """The plugins are loaded without their extras: ``binders.kafka`` (its ``binder`` module,
    capabilities and type included) imports aiokafka only when a kafka binder is made."""
    import subprocess
    import sys

    code = (
        "import sys, binder, binders.kafka, binders.kafka.binder, binders.log; "
        "from binder import plugins; plugins.binder_types(); "
        "print(sorted(m for m in sys.modules if m.split('.')[0] in "
        "('aiokafka', 'kafka', 'redis', 'aio_pika')))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"


def test_the_core_and_its_test_harness_import_no_backend() -> None:
    """``binder`` (harness and pytest plugin included) reaches the in-memory binder through
    the ``binder_make_test_binder`` hook: loading it imports nothing of ``binders``."""
    import subprocess
    import sys

    code = (
        "import sys, binder, binder.testing, binder.testing.plugin, binder.testing.harness; "
        "print(sorted(m for m in sys.modules if m.split('.')[0] == 'binders'))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"


def test_no_module_of_the_core_imports_a_backend() -> None:
    import ast
    from pathlib import Path

    import binder

    offenders = []
    for path in Path(binder.__file__).parent.rglob("*.py"):
        for node in ast.walk(ast.parse(path.read_text())):
            names = (
                [a.name for a in node.names]
                if isinstance(node, ast.Import)
                else [node.module or ""]
                if isinstance(node, ast.ImportFrom)
                else []
            )
            offenders += [f"{path.name}: {n}" for n in names if n.split(".")[0] == "binders"]
    assert offenders == []


class CsvConverter:
    content_type = "text/csv"

    def encode(self, value: Any) -> bytes:
        return ",".join(str(v) for v in value).encode()

    def decode(self, data: bytes) -> Any:
        return data.decode().split(",")


class CsvPlugin:
    @hookimpl
    def binder_add_converters(self) -> Sequence[Any]:
        return [CsvConverter()]


@pytest.fixture
def csv_plugin() -> Iterator[None]:
    plugin = CsvPlugin()
    plugins.plugin_manager().register(plugin)
    yield
    plugins.plugin_manager().unregister(plugin)


def test_a_converter_plugin_adds_a_content_type(csv_plugin: None) -> None:
    app = App(
        config={
            "binder": {
                "bindings": {
                    "rev-in-0": {"destination": "rows", "content-type": "text/csv"},
                    "rev-out-0": {"destination": "reversed", "content-type": "text/csv"},
                }
            }
        },
        environ={},
    )

    @app.function
    def rev(row: list[str]) -> list[str]:
        return row[::-1]

    with app.test() as t:
        t.send("rev-in-0", ["a", "b", "c"])
        out = t.receive("rev-out-0", timeout=2)
    assert out is not None
    assert out.payload == ["c", "b", "a"]
    assert out.headers["contentType"] == "text/csv"


def test_an_unknown_content_type_fails_at_start_naming_the_key() -> None:
    from binder.errors import ConfigError

    app = App(config={"binder": {"bindings": {"f-in-0": {"content-type": "text/csv"}}}}, environ={})
    app.function(lambda value: value, name="f")
    with pytest.raises(ConfigError, match=r"binder\.bindings\.f-in-0\.content-type"), app.test():
        pass
