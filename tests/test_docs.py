"""The README is part of the product: its table is generated, its quickstart runs."""

from __future__ import annotations

import re
import types
from pathlib import Path

from binder.docs import END, START, capability_table

README = Path(__file__).resolve().parents[1] / "README.md"


def _python_blocks() -> list[str]:
    return re.findall(r"```python\n(.*?)```", README.read_text(encoding="utf-8"), re.S)


def test_capability_table_matches_the_binders_declarations() -> None:
    text = README.read_text(encoding="utf-8")
    table = text.split(START, 1)[1].split(END, 1)[0].strip()
    assert table == capability_table(), "run: python -m binder.docs README.md"


def test_quickstart_and_its_test_run() -> None:
    quickstart, test_block = _python_blocks()[:2]
    module = types.ModuleType("shop")
    exec(compile(quickstart, "README-quickstart", "exec"), module.__dict__)
    exec(compile(test_block, "README-test", "exec"), module.__dict__)
    module.test_price()
