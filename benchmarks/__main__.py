"""``python -m benchmarks``: run every benchmark and print a table of figures and ratios."""

from __future__ import annotations

import argparse

from benchmarks import bench_core


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("-n", type=int, default=200_000, help="messages per throughput run")
    parser.add_argument("--log", action="store_true", help="also the durable log (bench_log)")
    parser.add_argument(
        "--kafka-n",
        type=int,
        default=100_000,
        help="messages per Kafka run (bench_kafka, on a Tansu it starts; 0 skips it)",
    )
    parser.add_argument(
        "--redis-n",
        type=int,
        default=100_000,
        help="messages per Redis run (bench_redis, on $REDIS_URL else 127.0.0.1:6379; 0 skips it)",
    )
    parser.add_argument(
        "--rabbit-n",
        type=int,
        default=50_000,
        help="messages per RabbitMQ run (bench_rabbit, on $RABBITMQ_URL else 127.0.0.1:5672; "
        "0 skips it)",
    )
    parser.add_argument(
        "--delays-n",
        type=int,
        default=100_000,
        help="delayed messages per run (bench_delays: in-memory log, durable log, Redis; "
        "0 skips it)",
    )
    parser.add_argument(
        "--replay-n",
        type=int,
        default=2000,
        help="letters per binder dlq replay run (bench_replay: durable log, Redis; 0 skips it)",
    )
    args = parser.parse_args()
    bench_core.main(args.n)
    if args.log:
        from benchmarks import bench_log

        bench_log.main(args.n)
    if args.kafka_n:
        from benchmarks import bench_kafka

        bench_kafka.main(args.kafka_n)
    if args.redis_n:
        from benchmarks import bench_redis

        bench_redis.main(args.redis_n)
    if args.rabbit_n:
        from benchmarks import bench_rabbit

        bench_rabbit.main(args.rabbit_n)
    if args.delays_n:
        from benchmarks import bench_delays

        bench_delays.main(args.delays_n)
    if args.replay_n:
        from benchmarks import bench_replay

        bench_replay.main(args.replay_n)


if __name__ == "__main__":
    main()
