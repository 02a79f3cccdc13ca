"""An order pipeline: validate, enrich, bill per customer in order; bad orders dead-lettered.

Run it with ``binder run examples.orders.app:app --config examples/orders/application.yml``
or through ``make demo``, which also feeds it orders and shows progress.
"""

from __future__ import annotations

import asyncio
import logging
from collections import Counter, defaultdict
from pathlib import Path

from pydantic import BaseModel, Field

from binder import App, Message

log = logging.getLogger("orders")

app = App.from_yaml(Path(__file__).with_name("application.yml"))

REGIONS = {"c-0": "EU", "c-1": "US", "c-2": "APAC"}


class Item(BaseModel):
    sku: str
    qty: int = Field(gt=0)
    price: float = Field(ge=0)


class Order(BaseModel):
    id: int
    customer_id: str
    items: list[Item]


class EnrichedOrder(Order):
    total: float
    region: str


class InvalidOrder(ValueError):
    """An order that breaks a business rule; dead-lettered without retries."""


class Ledger:
    """What billing has done, for the demo and the tests."""

    def __init__(self) -> None:
        self.invoices: dict[str, list[int]] = defaultdict(list)
        self.revenue = 0.0
        self.rejected: Counter[str] = Counter()

    @property
    def billed(self) -> int:
        return sum(len(ids) for ids in self.invoices.values())


ledger = Ledger()


@app.function
def validate(order: Order) -> Order:
    """Business rules; the payload's shape was already checked by pydantic (else dead letter)."""
    if not order.items:
        raise InvalidOrder(f"order {order.id} has no items")
    if sum(item.qty for item in order.items) > 100:
        raise InvalidOrder(f"order {order.id} exceeds 100 units")
    return order


@app.function
def enrich(order: Order) -> EnrichedOrder:
    """Add the total and the customer's region."""
    total = round(sum(item.qty * item.price for item in order.items), 2)
    region = REGIONS.get(order.customer_id[:3], "OTHER")
    return EnrichedOrder(**order.model_dump(), total=total, region=region)


@app.consumer
async def billing(message: Message[EnrichedOrder]) -> None:
    """Invoice each order; one customer's orders arrive in order (same partition, same lane)."""
    order = message.payload
    await asyncio.sleep(0)  # stands in for a call to the billing system
    ledger.invoices[order.customer_id].append(order.id)
    ledger.revenue += order.total


@app.consumer
def rejected(message: Message[bytes]) -> None:
    """Support's view of the dead letters: why each order was refused."""
    reason = message.headers.get("x-exception-type", "unknown").rsplit(".", 1)[-1]
    ledger.rejected[reason] += 1
    log.info("rejected order: %s: %s", reason, message.headers.get("x-exception-message"))
