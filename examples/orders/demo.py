"""``make demo``: feed the orders pipeline, show progress while it works, then a summary."""

from __future__ import annotations

import argparse
import asyncio
import logging
import random
import sys
import time

from examples.orders.app import app, ledger

CUSTOMERS = [f"c-{region}{n:03d}" for region in range(3) for n in range(40)]


def make_order(order_id: int, rng: random.Random) -> dict | bytes:
    """Mostly good orders; about 2% break a rule and 1% are not even JSON."""
    roll = rng.random()
    if roll < 0.01:
        return b"{not json"
    items = [
        {
            "sku": f"SKU-{rng.randrange(1000):04d}",
            "qty": rng.randint(1, 5),
            "price": round(rng.uniform(1, 200), 2),
        }
        for _ in range(rng.randint(1, 4))
    ]
    if roll < 0.02:
        items = []
    elif roll < 0.03:
        items[0]["qty"] = 500
    return {"id": order_id, "customer_id": rng.choice(CUSTOMERS), "items": items}


def progress(sent: int, total: int, started: float) -> str:
    elapsed = max(time.perf_counter() - started, 1e-9)
    done = ledger.billed + sum(ledger.rejected.values())
    bar = "#" * int(30 * done / total)
    return (
        f"\r[{bar:<30}] sent {sent:>6}/{total}  billed {ledger.billed:>6}  "
        f"dead-lettered {sum(ledger.rejected.values()):>4}  {done / elapsed:>8,.0f} msg/s"
    )


async def run(total: int, seed: int) -> None:
    rng = random.Random(seed)
    async with app:
        started = time.perf_counter()
        for start in range(0, total, 500):
            await asyncio.gather(
                *(
                    app.send("orders", make_order(i, rng), key=None)
                    for i in range(start, min(total, start + 500))
                )
            )
            sys.stdout.write(progress(min(total, start + 500), total, started))
            sys.stdout.flush()
        deadline = time.monotonic() + 120
        while ledger.billed + sum(ledger.rejected.values()) < total:
            if time.monotonic() > deadline:
                raise SystemExit("\nthe pipeline stopped making progress")
            await asyncio.sleep(0.1)
            sys.stdout.write(progress(total, total, started))
            sys.stdout.flush()
        elapsed = time.perf_counter() - started
    print(
        f"\n\nprocessed {total:,} orders in {elapsed:.2f} s "
        f"({total / elapsed:,.0f} msg/s end to end)"
    )
    print(
        f"billed      {ledger.billed:,} orders for {len(ledger.invoices)} customers, "
        f"revenue {ledger.revenue:,.2f}"
    )
    print(
        f"dead letters {sum(ledger.rejected.values())} on orders.pipeline.dlq: "
        + ", ".join(f"{n} {reason}" for reason, n in ledger.rejected.most_common())
    )
    in_order = all(ids == sorted(ids) for ids in ledger.invoices.values())
    print(f"per-customer order kept: {in_order}")


def main() -> None:
    logging.basicConfig(level=logging.ERROR)  # dead letters are counted below, not logged
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("-n", "--orders", type=int, default=20_000)
    parser.add_argument("--seed", type=int, default=7)
    args = parser.parse_args()
    asyncio.run(run(args.orders, args.seed))


if __name__ == "__main__":
    main()
