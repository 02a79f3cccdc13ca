"""``binder docs asyncapi|topology``: the real entry point on the orders example, and
``binder.cli.main`` in-process on a small app written for the test."""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
import textwrap
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import jsonschema
import pytest
import yaml

from binder.asyncapi import schema
from binder.cli import main

ROOT = Path(__file__).resolve().parents[2]
ORDERS = "examples.orders.app:app"


def _env() -> dict[str, str]:
    """The environment without ``BINDER_*`` overrides, so the example's own file decides."""
    return {k: v for k, v in os.environ.items() if not k.startswith("BINDER_")}


def _docs(*args: str) -> subprocess.CompletedProcess[str]:
    """``python -m binder docs ARGS`` in the checkout."""
    command = [sys.executable, "-m", "binder", "docs", *args]
    return subprocess.run(
        command, cwd=ROOT, env=_env(), capture_output=True, text=True, timeout=120, check=False
    )


def _errors(document: Any) -> list[str]:
    """Every way ``document`` breaks the vendored AsyncAPI 3.0.0 schema."""
    validator = jsonschema.Draft7Validator(schema())
    return [f"{list(e.absolute_path)}: {e.message[:200]}" for e in validator.iter_errors(document)]


def _resolve(document: dict[str, Any], ref: str) -> Any:
    """The value a local ``$ref`` (``#/a/b``) points at."""
    assert ref.startswith("#/"), ref
    value: Any = document
    for token in ref[2:].split("/"):
        value = value[token.replace("~1", "/").replace("~0", "~")]
    return value


@pytest.fixture(scope="module")
def orders_document() -> dict[str, Any]:
    done = _docs("asyncapi", ORDERS)
    assert done.returncode == 0, done.stderr
    document: dict[str, Any] = json.loads(done.stdout)
    return document


def _readme_block() -> str:
    text = (ROOT / "examples" / "orders" / "README.md").read_text(encoding="utf-8")
    found = re.search(r"```mermaid\n(.*?)```", text, re.DOTALL)
    assert found, "examples/orders/README.md has no ```mermaid block"
    return found.group(1)


# -- asyncapi -------------------------------------------------------------------------------------


def test_the_orders_asyncapi_document_validates(orders_document: dict[str, Any]) -> None:
    assert orders_document["asyncapi"] == "3.0.0"
    assert orders_document["info"]["title"] == "examples.orders.app"
    assert _errors(orders_document) == []


def test_the_validate_input_carries_the_order_schema(orders_document: dict[str, Any]) -> None:
    from examples.orders.app import Order

    operation = orders_document["operations"]["validateenrich-in-0"]
    assert operation["action"] == "receive"
    assert _resolve(orders_document, operation["channel"]["$ref"])["address"] == "orders"
    message = _resolve(orders_document, operation["messages"][0]["$ref"])
    message = _resolve(orders_document, message["$ref"])  # the channel's entry → the component
    payload = _resolve(orders_document, message["payload"]["$ref"])
    expected = Order.model_json_schema(ref_template="#/components/schemas/{model}")
    definitions = expected.pop("$defs")
    assert payload == expected
    schemas = orders_document["components"]["schemas"]
    assert schemas["Item"] == definitions["Item"]


def test_the_outputs_are_send_operations_with_their_partitions(
    orders_document: dict[str, Any],
) -> None:
    operation = orders_document["operations"]["validateenrich-out-0"]
    assert operation["action"] == "send"
    channel = _resolve(orders_document, operation["channel"]["$ref"])
    assert channel["address"] == "orders.enriched"
    assert channel["x-partition-count"] == 4
    assert channel["x-groups"] == ["billing"]
    assert channel["x-binder"] == "local"
    assert orders_document["servers"]["local"]["protocol"] == "streambinder-log"


def test_the_channels_include_the_dead_letter_destination(orders_document: dict[str, Any]) -> None:
    channels = {c["address"]: c for c in orders_document["channels"].values()}
    dlq = channels["orders.pipeline.dlq"]
    assert "DeadLetter" in dlq["messages"]
    assert dlq["x-groups"] == ["support"]  # the example's support consumer reads it
    sent = orders_document["operations"]["validateenrich-in-0.dlq"]
    assert sent["action"] == "send"
    assert _resolve(orders_document, sent["channel"]["$ref"]) is dlq
    letter = orders_document["components"]["messages"]["DeadLetter"]
    assert "x-exception-type" in letter["headers"]["required"]


def test_output_to_a_yaml_file_loads_and_validates(
    tmp_path: Path, orders_document: dict[str, Any]
) -> None:
    target = tmp_path / "orders.asyncapi.yaml"
    done = _docs("asyncapi", ORDERS, "-o", str(target))
    assert done.returncode == 0, done.stderr
    assert done.stdout == ""
    text = target.read_text(encoding="utf-8")
    assert text.startswith("asyncapi: 3.0.0\n")  # YAML, not JSON
    loaded = yaml.safe_load(text)
    assert _errors(loaded) == []
    assert loaded == orders_document


def test_output_to_an_unwritable_file_exits_1(tmp_path: Path) -> None:
    done = _docs("asyncapi", ORDERS, "-o", str(tmp_path / "missing" / "out.json"))
    assert done.returncode == 1
    assert done.stderr.startswith("error: cannot write")


# -- topology -------------------------------------------------------------------------------------

_MERMAID_EDGE = re.compile(r'^\s*(\w+) (-->|-\.->)(?:\|"([^"]*)"\|)? (\w+)$')
_DOT_EDGE = re.compile(r"^\s*(\w+) -> (\w+)(?: \[(.*)\])?;$")
_DOT_NODE = re.compile(r"^\s*(\w+) \[label=\"[^\"]*\", shape=\w+\];$")

Edge = tuple[str, str, str, bool]


def _mermaid_edges(text: str) -> set[Edge]:
    edges = set()
    for line in text.splitlines():
        if found := _MERMAID_EDGE.match(line):
            source, arrow, label, target = found.groups()
            edges.add((source, target, label or "", arrow == "-.->"))
    return edges


def _dot_edges(text: str) -> set[Edge]:
    """The edges of a dot digraph, after checking its shape: one ``digraph`` with balanced
    braces, every statement ended, every edge between declared nodes."""
    lines = text.splitlines()
    assert lines[0] == "digraph topology {" and lines[-1] == "}"
    assert text.count("{") == text.count("}")
    nodes = {found.group(1) for line in lines if (found := _DOT_NODE.match(line))}
    edges = set()
    for line in lines[1:-1]:
        assert line.rstrip().endswith((";", "{", "}")), line
        if found := _DOT_EDGE.match(line):
            source, target, attributes = found.groups()
            label = re.search(r'label="([^"]*)"', attributes or "")
            dashed = "style=dashed" in (attributes or "")
            assert {source, target} <= nodes, line
            edges.add((source, target, label.group(1) if label else "", dashed))
    return edges


def test_the_orders_topology_is_the_readme_snapshot() -> None:
    done = _docs("topology", ORDERS)
    assert done.returncode == 0, done.stderr
    assert done.stdout == _readme_block()


def test_the_dot_format_is_a_digraph_of_the_same_edges() -> None:
    done = _docs("topology", ORDERS, "--format", "dot")
    assert done.returncode == 0, done.stderr
    edges = _dot_edges(done.stdout)
    assert edges == _mermaid_edges(_readme_block())
    assert ("d_orders", "f_validateenrich", "pipeline", False) in edges
    assert ("f_validateenrich", "d_orders_pipeline_dlq", "dead letters", True) in edges
    if shutil.which("dot"):  # Graphviz itself, where it is installed
        parsed = subprocess.run(
            ["dot", "-Tcanon"], input=done.stdout, capture_output=True, text=True, check=False
        )
        assert parsed.returncode == 0, parsed.stderr


def test_the_topology_is_the_same_twice() -> None:
    first, second = (
        _docs("topology", ORDERS, "--format", "dot"),
        _docs("topology", ORDERS, "--format", "dot"),
    )
    assert first.stdout == second.stdout


# -- usage ----------------------------------------------------------------------------------------


@pytest.mark.parametrize("command", ["asyncapi", "topology"])
def test_a_target_that_does_not_load_exits_2_naming_it(command: str) -> None:
    done = _docs(command, "nope:app")
    assert done.returncode == 2
    assert done.stdout == ""
    assert done.stderr.startswith("error: ")
    assert "'nope'" in done.stderr


@pytest.mark.parametrize(
    ("args", "says"),
    [
        ((), "asyncapi"),
        (("asyncapi",), "AsyncAPI 3.0.0 document"),
        (("topology",), "--format {mermaid,dot}"),
    ],
)
def test_help(args: tuple[str, ...], says: str) -> None:
    done = _docs(*args, "--help")
    assert done.returncode == 0, done.stderr
    assert done.stdout.startswith(f"usage: binder docs {' '.join(args)}".rstrip())
    assert says in done.stdout


def test_without_a_document_kind_is_bad_usage() -> None:
    done = _docs()
    assert done.returncode == 2
    assert "asyncapi" in done.stderr


# -- in process, a small app of every shape -------------------------------------------------------

SHOP = '''
from typing import Annotated, Literal

from pydantic import BaseModel, Field

from binder import App, Message

app = App()


class Card(BaseModel):
    kind: Literal["card"]
    number: str


class Cash(BaseModel):
    kind: Literal["cash"]


class Payment(BaseModel):
    id: int
    method: Annotated[Card | Cash, Field(discriminator="kind")]


@app.function
def pay(payment: Payment) -> Message[str]:
    """Take a payment; the receipt is its id."""
    return Message(str(payment.id))


@app.function
def wrap(message: Message[dict]) -> dict | None:
    return message.payload


@app.consumer
def count(n: int) -> None:
    pass


@app.consumer
def anything(value) -> None:
    pass


@app.supplier(interval=1.0)
def tick() -> int:
    return 1
'''

SHOP_CONFIG = """
binder:
  default-binder: kafka
  binders:
    kafka:
      type: kafka
      bootstrap-servers: "k1:9092,k2:9092"
      security-protocol: SASL_SSL
      sasl-plain-username: shop
      sasl-plain-password: hunter2
    rabbit: {type: rabbit, url: "amqp://guest:s3cret@rabbit.internal:5672/shop", prefix: "shop."}
  bindings:
    pay-in-0:
      destination: payments
      group: billing
      consumer: {retry-mode: delayed}
    pay-out-0:
      destination: receipts
      producer: {partition-count: 3, required-groups: [audit]}
    count-in-0: {destination: receipts, group: audit, binder: rabbit}
    anything-in-0: {destination: receipts}
    tick-out-0: {destination: ticks}
    alerts: {destination: alerts, binder: rabbit}
"""


@pytest.fixture
def shop(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[str]:
    """A module ``docs_shop`` in the working directory, and its configuration file."""
    (tmp_path / "docs_shop.py").write_text(SHOP, encoding="utf-8")
    (tmp_path / "shop.yml").write_text(textwrap.dedent(SHOP_CONFIG), encoding="utf-8")
    monkeypatch.chdir(tmp_path)
    for name in [n for n in os.environ if n.startswith("BINDER_")]:
        monkeypatch.delenv(name)
    try:
        yield "docs_shop:app"
    finally:
        sys.modules.pop("docs_shop", None)


def _shop_document(target: str, capsys: pytest.CaptureFixture[str]) -> tuple[dict[str, Any], str]:
    assert main(["docs", "asyncapi", target, "--config", "shop.yml"]) == 0
    out = capsys.readouterr().out
    return json.loads(out), out


def _payload(document: dict[str, Any], operation: str) -> Any:
    reference = document["operations"][operation]["messages"][0]["$ref"]
    message = _resolve(document, _resolve(document, reference)["$ref"])
    return message["payload"]


def test_every_shape_of_app_validates(shop: str, capsys: pytest.CaptureFixture[str]) -> None:
    document, _ = _shop_document(shop, capsys)
    assert _errors(document) == []
    assert document["info"]["title"] == "docs_shop"


def test_servers_have_addresses_and_no_passwords(
    shop: str, capsys: pytest.CaptureFixture[str]
) -> None:
    document, text = _shop_document(shop, capsys)
    kafka, rabbit = document["servers"]["kafka"], document["servers"]["rabbit"]
    assert (kafka["host"], kafka["protocol"]) == ("k1:9092", "kafka-secure")
    assert kafka["x-bootstrap-servers"] == ["k1:9092", "k2:9092"]
    assert (rabbit["host"], rabbit["protocol"], rabbit["pathname"]) == (
        "rabbit.internal:5672",
        "amqp",
        "/shop",
    )
    assert "hunter2" not in text and "s3cret" not in text and "guest" not in text


def test_payloads_follow_the_annotations(shop: str, capsys: pytest.CaptureFixture[str]) -> None:
    document, _ = _shop_document(shop, capsys)
    assert _payload(document, "pay-out-0") == {"type": "string"}  # Message[str]
    assert _payload(document, "wrap-in-0")["type"] == "object"  # Message[dict]
    assert _payload(document, "wrap-out-0")["type"] == "object"  # dict | None
    assert _payload(document, "count-in-0") == {"type": "integer"}
    assert _payload(document, "anything-in-0") == {}  # no annotation
    assert _payload(document, "tick-out-0") == {"type": "integer"}
    assert _payload(document, "alerts") == {}  # app.send: anything
    payment = _resolve(document, _payload(document, "pay-in-0")["$ref"])
    assert payment["properties"]["method"]["discriminator"] == "kind"  # AsyncAPI's form


def test_kafka_and_rabbit_channels_carry_their_bindings(
    shop: str, capsys: pytest.CaptureFixture[str]
) -> None:
    document, _ = _shop_document(shop, capsys)
    operations = document["operations"]
    receipts = _resolve(document, operations["pay-out-0"]["channel"]["$ref"])
    assert receipts["bindings"]["kafka"]["partitions"] == 3
    assert receipts["x-groups"] == ["audit"]  # required, though read on kafka anonymously
    on_rabbit = _resolve(document, operations["count-in-0"]["channel"]["$ref"])
    assert on_rabbit is not receipts and on_rabbit["address"] == "receipts"
    assert on_rabbit["bindings"]["amqp"]["exchange"]["name"] == "shop.receipts"  # prefixed
    assert operations["pay-in-0"]["bindings"]["kafka"]["groupId"]["enum"] == ["billing"]
    assert operations["alerts"]["action"] == "send"


def test_delayed_retries_go_out_and_back_in(shop: str, capsys: pytest.CaptureFixture[str]) -> None:
    document, _ = _shop_document(shop, capsys)
    out = document["operations"]["pay-in-0.retry.send"]
    back = document["operations"]["pay-in-0.retry.receive"]
    assert (out["action"], back["action"]) == ("send", "receive")
    assert out["channel"] == back["channel"]
    assert _resolve(document, out["channel"]["$ref"])["address"] == "payments.billing.retry"


def test_the_topology_of_every_shape(shop: str, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["docs", "topology", shop, "--config", "shop.yml"]) == 0
    mermaid = capsys.readouterr().out
    assert main(["docs", "topology", shop, "--config", "shop.yml", "--format", "dot"]) == 0
    assert _dot_edges(capsys.readouterr().out) == _mermaid_edges(mermaid)
    assert 'f_app_send["app.send"]' in mermaid
    assert "f_app_send --> d_alerts" in mermaid
    assert 'd_receipts -->|"anonymous"| f_anything' in mermaid
    assert 'd_receipts_2 -->|"audit"| f_count' in mermaid  # the same name on rabbit
    assert 'f_pay -.->|"retries"| d_payments_billing_retry' in mermaid
    assert 'd_payments_billing_retry -->|"billing"| f_pay' in mermaid
    assert 'subgraph b_rabbit["rabbit (rabbit)"]' in mermaid


def test_a_configuration_error_exits_2(
    shop: str, capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    (tmp_path / "bad.yml").write_text("binder:\n  function-definition: nosuch\n", encoding="utf-8")
    assert main(["docs", "asyncapi", shop, "--config", "bad.yml"]) == 2
    assert "nosuch" in capsys.readouterr().err
