"""``flyball prices update --from FILE --out FILE``: build a price catalog from LiteLLM's
``model_prices_and_context_window.json`` (or a flyball-format catalog; told apart by content)
plus flyball's verified corrections, each entry recording its source and the date its rates
were read. Run it with ``--out`` on the file ``FLYBALL_PRICES_FILE`` names (or on
``stream_processors/data/prices.json`` to refresh the built-in default), then reprice.
"""

from __future__ import annotations

import argparse
import json
import sys
from datetime import UTC, datetime
from importlib import resources
from pathlib import Path

from flyball.stream_processors.catalog import DEFAULT_PROVIDERS, build_catalog, catalog_entries, skipped_note
from flyball.stream_processors.pricing import CatalogError, entry_to_dict


def _corrections() -> bytes:
    return resources.files("flyball.stream_processors").joinpath("data/corrections.json").read_bytes()


def cmd_prices_update(args: argparse.Namespace) -> int:
    source_path: Path = args.source_file
    try:
        text = source_path.read_bytes()
    except OSError as exc:
        print(f"flyball prices update: --from {source_path}: {exc.strerror or exc}", file=sys.stderr)
        return 2
    as_of = args.as_of or datetime.fromtimestamp(source_path.stat().st_mtime, UTC).date().isoformat()
    skipped: list[str] = []
    try:
        corrections = None if args.no_corrections else (
            args.corrections.read_bytes() if args.corrections else _corrections())
        catalog = build_catalog(text, corrections, source=args.source or f"litellm {source_path.name}", as_of=as_of,
                                providers=None if args.all_providers else DEFAULT_PROVIDERS, skipped=skipped)
    except (CatalogError, OSError) as exc:
        print(f"flyball prices update: {exc}", file=sys.stderr)
        return 2
    before: dict[tuple[str, str], dict[str, object]] = {}
    if args.out.exists():
        try:
            for e in catalog_entries(args.out.read_bytes()):
                row = entry_to_dict(e)
                before[(e.provider, e.model)] = {k: v for k, v in row.items() if k not in ("version", "revision")}
        except CatalogError:
            before = {}
    after = {(r["provider"], r["model"]): r for r in catalog["prices"]}
    added = sorted(set(after) - set(before))
    removed = sorted(set(before) - set(after))
    args.out.write_text(json.dumps(catalog, indent=1, sort_keys=False) + "\n")
    print(f"wrote {len(after)} entries to {args.out} ({len(added)} new, {len(removed)} no longer listed; "
          f"source {catalog['prices'][0]['source'] if catalog['prices'] else '-'}, as of {as_of})")
    for provider, model in added[:20]:
        print(f"  + {provider}/{model}")
    for provider, model in removed[:20]:
        print(f"  - {provider}/{model}")
    if skipped:
        print(f"flyball prices update: {skipped_note(skipped, 20)}", file=sys.stderr)
    return 0


def add_commands(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    pr = sub.add_parser("prices", help="price catalog tools")
    pr_sub = pr.add_subparsers(dest="prices_command", required=True)
    up = pr_sub.add_parser("update", help="build a catalog from LiteLLM's price map (or a flyball catalog) "
                                          "plus flyball's verified corrections")
    up.add_argument("--from", dest="source_file", type=Path, required=True, metavar="FILE",
                    help="LiteLLM model_prices_and_context_window.json or a flyball-format catalog")
    up.add_argument("--out", type=Path, required=True, help="catalog file to write (flyball format)")
    up.add_argument("--source", help="provenance recorded in every entry (default: litellm <file name>)")
    up.add_argument("--as-of", help="date the rates were read, YYYY-MM-DD (default: the file's date)")
    up.add_argument("--corrections", type=Path, help="corrections catalog (default: flyball's own)")
    up.add_argument("--no-corrections", action="store_true", help="take the source as it is")
    up.add_argument("--all-providers", action="store_true",
                    help=f"keep every LiteLLM provider (default: {', '.join(DEFAULT_PROVIDERS)})")
    up.set_defaults(fn=cmd_prices_update)
