"""``python -m benchmarks``: run every benchmark and print a table of figures and ratios."""

from __future__ import annotations

import argparse

from benchmarks import bench_core


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("-n", type=int, default=200_000, help="messages per throughput run")
    args = parser.parse_args()
    bench_core.main(args.n)


if __name__ == "__main__":
    main()
