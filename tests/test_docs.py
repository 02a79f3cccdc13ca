"""The README is part of the product: its table is generated, its quickstart runs."""

from __future__ import annotations

import os
import re
import shlex
import sys
import types
from pathlib import Path

import pytest
import yaml

from binder import plugins
from binder.config import load_config
from binder.docs import END, START, capability_table

README = Path(__file__).resolve().parents[1] / "README.md"


def _python_blocks() -> list[str]:
    return re.findall(r"```python\n(.*?)```", README.read_text(encoding="utf-8"), re.S)


def test_capability_table_matches_the_binders_declarations() -> None:
    text = README.read_text(encoding="utf-8")
    table = text.split(START, 1)[1].split(END, 1)[0].strip()
    assert table == capability_table(), "run: python -m binder.docs README.md"


def test_quickstart_and_its_test_run(monkeypatch: pytest.MonkeyPatch) -> None:
    quickstart, test_block = _python_blocks()[:2]
    shop = types.ModuleType("shop")
    exec(compile(quickstart, "README-quickstart", "exec"), shop.__dict__)
    monkeypatch.setitem(sys.modules, "shop", shop)  # the test file imports it: `from shop ...`
    test_module = types.ModuleType("test_shop")
    exec(compile(test_block, "README-test", "exec"), test_module.__dict__)
    test_module.test_price()


def _yaml_blocks() -> list[str]:
    return re.findall(r"```yaml\n(.*?)```", README.read_text(encoding="utf-8"), re.S)


@pytest.mark.parametrize("block", _yaml_blocks(), ids=lambda b: b.split("\n", 1)[0][:40])
def test_every_yaml_block_is_a_valid_configuration(block: str) -> None:
    document = yaml.safe_load(block)
    assert isinstance(document, dict) and "binder" in document
    load_config(document, {}, plugins.option_models(), plugins.binding_option_models())


def test_the_quickstart_yaml_is_the_quickstart_configuration() -> None:
    quickstart = _python_blocks()[0]
    shop = types.ModuleType("shop")
    exec(compile(quickstart, "README-quickstart", "exec"), shop.__dict__)
    (block,) = [b for b in _yaml_blocks() if "price-in-0" in b and "pricetax" not in b]
    written = load_config(yaml.safe_load(block), {}, plugins.option_models())
    assert written == shop.app.config


def test_the_tracing_example_runs_and_makes_one_trace(capsys: pytest.CaptureFixture[str]) -> None:
    (block,) = [b for b in _python_blocks() if "TracerProvider" in b]
    namespace: dict[str, object] = {"__name__": "readme_tracing"}
    exec(compile(block, "README-tracing", "exec"), namespace)
    printed = capsys.readouterr().out.strip().splitlines()[-1]
    assert printed == "['words publish', 'words process', 'shouts publish']"
    spans = namespace["exporter"].get_finished_spans()  # type: ignore[attr-defined]
    assert len({span.context.trace_id for span in spans}) == 1


def test_the_testing_with_time_example_runs() -> None:
    (block,) = [b for b in _python_blocks() if "ManualClock" in b]
    exec(compile(block, "README-time", "exec"), {"__name__": "readme_time"})


def _operator_commands() -> list[str]:
    """The ``binder ...`` lines of the operator's section's sh blocks (none piped)."""
    text = README.read_text(encoding="utf-8")
    section = text.split("## The operator's command line", 1)[1].split("\n## ", 1)[0]
    lines = re.findall(r"```sh\n(.*?)```", section, re.S)
    found = (line.strip() for block in lines for line in block.splitlines())
    return [line for line in found if line and "|" not in line]


def test_the_operator_commands_run_as_written(tmp_path: Path) -> None:
    """Each on a copy of the orders example (its durable log is made in the copy)."""
    import shutil
    import subprocess

    shutil.copytree(README.parent / "examples", tmp_path / "examples")
    shutil.rmtree(tmp_path / "examples" / "orders" / "data", ignore_errors=True)
    env = {k: v for k, v in os.environ.items() if not k.startswith("BINDER_")}
    env["PYTHONPATH"] = str(tmp_path)
    commands = _operator_commands()
    assert len(commands) >= 7
    for line in commands:
        command = shlex.split(line)
        assert command[0] == "binder"
        done = subprocess.run(
            [sys.executable, "-m", "binder", *command[1:]],
            capture_output=True,
            text=True,
            cwd=tmp_path,
            env=env,
            timeout=120,
        )
        assert done.returncode == 0, (line, done.stderr)
