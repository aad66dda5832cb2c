"""The `flyball` command: parses arguments, builds settings, calls the packages."""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import signal
import sys
from pathlib import Path
from typing import Any

from .settings import Settings


def _settings(args: argparse.Namespace) -> Settings:
    overrides = {}
    for name in ("data_dir", "api_port", "api_host", "prices_file"):
        value = getattr(args, name, None)
        if value is not None:
            overrides[name] = value
    return Settings(**overrides)


async def _serve(settings: Settings, *, worker: bool, api: bool) -> int:
    from .runtime import System, configure_logging

    configure_logging(settings.log_level)
    system = System(settings, worker=worker, api=api)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    code = 0
    try:
        await system.start()
        print(f"flyball is up\n  Kafka bootstrap: {system.bootstrap}", flush=True)
        if api:
            print(f"  API:             {system.api_url}  (OpenAPI at {system.api_url}/docs)", flush=True)
            print(f"  console:         {system.api_url}/ui  (log in with an API key)", flush=True)
            if not settings.admin_api_key:
                print(f"  admin API key:   {system.admin_key}  (set FLYBALL_ADMIN_API_KEY to choose one)", flush=True)
        print("Press Ctrl-C to stop.", flush=True)
        died = asyncio.ensure_future(system.supervisor.failed.wait())
        asked = asyncio.ensure_future(stop.wait())
        await asyncio.wait({died, asked}, return_when=asyncio.FIRST_COMPLETED)
        died.cancel()
        asked.cancel()
        if system.supervisor.deaths:  # a dead part: exit non-zero so that the process is restarted
            death = system.supervisor.deaths[0]
            print(f"flyball: {death.task} died ({death.error}); exiting", file=sys.stderr, flush=True)
            code = 1
    except RuntimeError as exc:  # did not start (a part died, or not ready in time)
        print(f"flyball: {exc}", file=sys.stderr, flush=True)
        code = 1
    finally:
        print("stopping ...", flush=True)
        await system.stop()
        print("stopped", flush=True)
    return code


def cmd_up(args: argparse.Namespace) -> int:
    return asyncio.run(_serve(_settings(args), worker=True, api=True))


def cmd_worker(args: argparse.Namespace) -> int:
    return asyncio.run(_serve(_settings(args), worker=True, api=False))


def cmd_api(args: argparse.Namespace) -> int:
    return asyncio.run(_serve(_settings(args), worker=False, api=True))


def cmd_demo(args: argparse.Namespace) -> int:
    from .demo import run_demo
    from .runtime import configure_logging

    settings = _settings(args)
    configure_logging("warning")
    return asyncio.run(run_demo(settings))


def cmd_schemas_export(args: argparse.Namespace) -> int:
    from flyball.schemas.jsonschema import export

    for path in export(args.dir):
        print(path)
    return 0


def cmd_topics_ensure(args: argparse.Namespace) -> int:
    from flyball.stream_processors.topics import ensure_topics

    from .runtime import configure_logging

    overrides = {k: v for k, v in (("kafka_bootstrap", args.bootstrap), ("topic_partitions", args.partitions),
                                   ("topic_replication_factor", args.replication_factor)) if v is not None}
    settings = Settings(**overrides)
    if not settings.kafka_bootstrap:
        print("flyball topics ensure: set FLYBALL_KAFKA_BOOTSTRAP or --bootstrap", file=sys.stderr)
        return 2
    configure_logging("warning")
    try:
        report = asyncio.run(ensure_topics(settings.kafka_bootstrap, settings.topic_specs(), attempts=args.attempts))
    except RuntimeError as exc:
        print(f"flyball topics ensure: {exc}", file=sys.stderr)
        return 1
    for line in report:
        print(line)
    return 0


def cmd_replay(args: argparse.Namespace) -> int:
    from .replay import load_policies, replay
    from flyball.stream_processors.catalog import skipped_note

    from .runtime import load_prices, load_sensitivity
    from .slo import load_slos

    skipped: list[str] = []
    try:
        book = load_prices(args.prices, skipped)
        policies = load_policies(args.policies.read_text()) if args.policies else None
        slos = load_slos(args.slos.read_text()) if args.slos else None
        sensitivity = load_sensitivity(args.detection or Settings().detection_file)
    except (OSError, ValueError) as exc:
        print(f"flyball replay: {exc}", file=sys.stderr)
        return 2
    if skipped:
        print(f"flyball replay: --prices {args.prices}: {skipped_note(skipped)}", file=sys.stderr)
    kwargs: dict[str, Any] = {"policies": policies} if policies is not None else {}
    if slos is not None:
        kwargs["slos"] = slos
    if not args.events.is_file():
        print(f"flyball replay: --events {args.events}: "
              f"{'is a directory' if args.events.is_dir() else 'no such file'}", file=sys.stderr)
        return 2
    if args.out.exists() and not args.out.is_dir():
        print(f"flyball replay: --out {args.out}: is a file, not a directory", file=sys.stderr)
        return 2
    try:
        summary = replay(args.events, args.out, book=book, sensitivity=sensitivity, **kwargs)
    except OSError as exc:  # unreadable events, an --out that is a file or not writable, a full disk
        print(f"flyball replay: {exc.filename or args.out}: {exc.strerror or exc}", file=sys.stderr)
        return 2
    print(f"replayed {summary.events} events: {summary.stored} stored, {summary.duplicates} duplicates, "
          f"{summary.dead_lettered} dead-lettered, {summary.alerts} alerts, {summary.actions} actions -> {args.out}")
    return 0


def cmd_simulate(args: argparse.Namespace) -> int:
    from flyball.stream_processors.simulate import simulate, write

    try:
        sim = simulate(args.scenario, args.seed)
    except ValueError as exc:
        print(f"flyball simulate: {exc}", file=sys.stderr)
        return 2
    labels = write(sim, args.out)
    print(f"simulated {len(sim.events)} events ({args.scenario}, seed {args.seed}, "
          f"{len(sim.incidents)} incidents) -> {args.out}, labels -> {labels}")
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="flyball", description="Telemetry and control plane for LLM calls.")
    sub = parser.add_subparsers(dest="command", required=True)

    def server(name: str, help_: str) -> argparse.ArgumentParser:
        p = sub.add_parser(name, help=help_)
        p.add_argument("--data-dir", type=Path, help="where chDB and logs live (FLYBALL_DATA_DIR)")
        p.add_argument("--api-host", help="FLYBALL_API_HOST")
        p.add_argument("--api-port", type=int, help="FLYBALL_API_PORT (0 = a free port)")
        p.add_argument("--prices-file", type=Path, help="price catalog (flyball or LiteLLM format)")
        return p

    server("up", "run everything on this machine (embedded broker + chDB unless configured)").set_defaults(fn=cmd_up)
    server("demo", "up + synthetic traffic with an injected cost spike").set_defaults(fn=cmd_demo)
    server("worker", "the stream processors only").set_defaults(fn=cmd_worker)
    server("api", "the control plane and HTTP API only").set_defaults(fn=cmd_api)
    rp = sub.add_parser("replay", help="run validation, pricing, detectors and policies over recorded events")
    rp.add_argument("--events", type=Path, required=True)
    rp.add_argument("--out", type=Path, required=True)
    rp.add_argument("--prices", type=Path)
    rp.add_argument("--policies", type=Path)
    rp.add_argument("--slos", type=Path, help="SLO file (default: the shipped SLOs) for slo_burn alerts")
    rp.add_argument("--detection", type=Path,
                    help="detector sensitivity per kind and tenant, YAML/JSON (FLYBALL_DETECTION_FILE; docs/DETECTION.md)")
    rp.set_defaults(fn=cmd_replay)
    sp = sub.add_parser("simulate", help="synthetic multi-tenant traffic with labelled incidents (JSONL)")
    sp.add_argument("--out", type=Path, required=True, help="events file; labels go to FILE.labels.json beside it")
    sp.add_argument("--scenario", default="incidents",
                    help="clean | incidents | one incident kind (cost_spike, token_spike, runaway_loop, error_rate, "
                         "latency, tool_failure, safety_burst, retrieval_failure)")
    sp.add_argument("--seed", type=int, default=0)
    sp.set_defaults(fn=cmd_simulate)
    sc = sub.add_parser("schemas", help="event contract tools")
    sc_sub = sc.add_subparsers(dest="schemas_command", required=True)
    se = sc_sub.add_parser("export", help="write the JSON Schema of every event kind into DIR")
    se.add_argument("dir", type=Path, metavar="DIR")
    se.set_defaults(fn=cmd_schemas_export)
    tp = sub.add_parser("topics", help="Kafka topics")
    tp_sub = tp.add_subparsers(dest="topics_command", required=True)
    te = tp_sub.add_parser("ensure", help="create or update flyball's topics: partitions, replication factor, "
                                          "retention, compaction (idempotent; FLYBALL_TOPIC_*, FLYBALL_*_RETENTION_DAYS)")
    te.add_argument("--bootstrap", help="FLYBALL_KAFKA_BOOTSTRAP")
    te.add_argument("--partitions", type=int, help="of the events topic (FLYBALL_TOPIC_PARTITIONS)")
    te.add_argument("--replication-factor", type=int, help="FLYBALL_TOPIC_REPLICATION_FACTOR")
    te.add_argument("--attempts", type=int, default=20, help="connection attempts, 0.5 s apart")
    te.set_defaults(fn=cmd_topics_ensure)
    from .finance_cli import add_commands as add_finance_commands

    add_finance_commands(sub)  # spend, reprice, reconcile (through the HTTP API)
    from .prices_cli import add_commands as add_prices_commands

    add_prices_commands(sub)  # prices update
    from .sre_cli import add_commands as add_sre_commands

    add_sre_commands(sub)  # alerts, directives, actions, revert, pin, extend, approve, reject, ack, silence, policies, versions
    from .kpi_cli import add_commands as add_kpi_commands

    add_kpi_commands(sub)  # kpis, report, slos (through the HTTP API)
    args = parser.parse_args(argv)
    with contextlib.suppress(KeyboardInterrupt):
        return int(args.fn(args))
    return 130


if __name__ == "__main__":
    sys.exit(main())
