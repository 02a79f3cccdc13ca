"""The decorators keep a function's type: mypy checks calls to a registered function."""

from __future__ import annotations

import subprocess
import sys
import textwrap
from pathlib import Path

TYPED_APP = """
from typing import assert_type

from binder import App, Message

app = App()


@app.function
def uppercase(order: dict[str, str]) -> dict[str, str]:
    return {k: v.upper() for k, v in order.items()}


@app.consumer(name="audit")
async def audit(message: Message[dict[str, str]]) -> None:
    print(message.payload)


@app.supplier(interval=0.5)
def ticks() -> int:
    return 1


assert_type(uppercase({"a": "b"}), dict[str, str])
assert_type(ticks(), int)
"""


def _mypy(tmp_path: Path, source: str) -> subprocess.CompletedProcess[str]:
    module = tmp_path / "typed_app.py"
    module.write_text(textwrap.dedent(source))
    command = [sys.executable, "-m", "mypy", "--no-incremental", "--follow-imports=silent"]
    return subprocess.run(
        [*command, "--strict", str(module)], capture_output=True, text=True, timeout=120
    )


def test_registered_functions_keep_their_types(tmp_path: Path) -> None:
    done = _mypy(tmp_path, TYPED_APP)
    assert done.returncode == 0, done.stdout + done.stderr


def test_a_wrong_call_to_a_registered_function_is_a_type_error(tmp_path: Path) -> None:
    done = _mypy(tmp_path, TYPED_APP + "\nuppercase(3)\n")
    assert done.returncode == 1
    assert 'Argument 1 to "uppercase" has incompatible type "int"' in done.stdout
