"""``python -m tmail queue ...``: postqueue -p, postcat and postsuper for tmail's queue.

The API and this command call the same core functions (``tmail.queue.ops``).
"""

from __future__ import annotations

import argparse
import json
import sys

from tmail.queue import QueueStore, RecordFilter, Status
from tmail.queue.ops import BULK_ACTIONS, Outcome, QueueOps
from tmail.queue.summary import format_table, summarize


def _ops(args: argparse.Namespace) -> QueueOps:
    config = args.config
    return QueueOps(QueueStore(config.queue_dir, id_block=1, node=config.node), config.hostname)


def _add_filters(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--status", type=int, choices=[int(s) for s in Status])
    parser.add_argument("--host", help="recipient domain")
    parser.add_argument("--rcpt", help="recipient address")
    parser.add_argument("--from", dest="mail_from", help="sender address ('<>' for bounces)")
    parser.add_argument("--older-than", type=float, metavar="SECONDS")


def _filter(args: argparse.Namespace) -> RecordFilter:
    mail_from = getattr(args, "mail_from", None)
    return RecordFilter(
        status=Status(args.status) if args.status is not None else None,
        host=args.host,
        rcpt=args.rcpt,
        mail_from="" if mail_from == "<>" else mail_from,
        older_than=args.older_than,
    )


def register(subparsers: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    parser = subparsers.add_parser("queue", help="inspect and change the queue")
    commands = parser.add_subparsers(dest="queue_command", required=True)

    listing = commands.add_parser("list", help="list records (postqueue -p)")
    listing.add_argument("--json", action="store_true", help="one JSON record per line")
    _add_filters(listing)
    listing.set_defaults(handler=list_records)

    show = commands.add_parser("show", help="one record")
    show.add_argument("id", type=int)
    show.add_argument("--json", action="store_true")
    show.set_defaults(handler=show_record)

    cat = commands.add_parser("cat", help="the queued message of a record (postcat)")
    cat.add_argument("id", type=int)
    cat.set_defaults(handler=cat_record)

    for action in BULK_ACTIONS:
        command = commands.add_parser(action, help=f"{action} records by id or by filter")
        command.add_argument("ids", type=int, nargs="*", metavar="ID")
        command.add_argument("--all", action="store_true", help="with no filter: every record")
        _add_filters(command)
        command.set_defaults(handler=change_records, action=action)

    summary = commands.add_parser("summary", help="counts by domain and age (qshape)")
    summary.add_argument("--json", action="store_true")
    summary.add_argument("--top", type=int, default=None, help="only the N biggest domains")
    summary.set_defaults(handler=show_summary)

    quarantine = commands.add_parser("quarantine", help="records moved aside, and why")
    quarantine.add_argument("--json", action="store_true")
    quarantine.set_defaults(handler=list_quarantine)


def list_records(args: argparse.Namespace) -> int:
    count = 0
    for record in _ops(args).store.iter_records(_filter(args)):
        count += 1
        if args.json:
            print(json.dumps(record.to_json()))
            continue
        print(f"{record.id:<8} {record.uuid[:12]} {record.size:>8} "
              f"{record.added_at:%a %b %d %H:%M:%S}  {record.mail_from or '<>'}")
        state = {Status.HELD: " (held)", Status.DISCARD: " (to discard)",
                 Status.BOUNCE: " (to bounce)"}.get(record.status, "")
        if record.last_error:
            print(f"{'':8} ({record.last_error})")
        print(f"{'':8} {record.rcpt_to}{state}")
    if not args.json:
        print(f"-- {count} record(s)" if count else "Mail queue is empty")
    return 0


def show_record(args: argparse.Namespace) -> int:
    record = _ops(args).get(args.id)
    if record is None:
        print(f"tmail: no such message ID {args.id}", file=sys.stderr)
        return 1
    data = record.to_json()
    if args.json:
        print(json.dumps(data))
    else:
        for key, value in data.items():
            print(f"{key:>24}: {value}")
    return 0


def cat_record(args: argparse.Namespace) -> int:
    raw = _ops(args).store.read_raw(args.id)
    if raw is None:
        print(f"tmail: no such message ID {args.id}", file=sys.stderr)
        return 1
    sys.stdout.buffer.write(raw)
    return 0


def change_records(args: argparse.Namespace) -> int:
    ops = _ops(args)
    selection = _filter(args)
    if args.ids:
        failed = 0
        for record_id in args.ids:
            outcome: Outcome = getattr(ops, args.action)(record_id)
            print(f"{record_id}: {outcome.value}")
            failed += outcome in (Outcome.NOT_FOUND, Outcome.NOT_APPLICABLE)
        return 1 if failed else 0
    if selection.is_empty and not args.all:
        print("tmail: give ids, a filter, or --all", file=sys.stderr)
        return 2
    result = ops.bulk(args.action, selection)
    print(f"matched {result.matched}, done {result.done}, skipped {result.skipped}")
    return 0


def show_summary(args: argparse.Namespace) -> int:
    result = summarize(_ops(args).store)
    if args.json:
        print(json.dumps(result.to_json(args.top)))
    else:
        print(format_table(result, args.top))
        statuses = ", ".join(f"{Status(s).name.lower()} {n}" for s, n in
                             sorted(result.by_status.items()))
        print(f"by status: {statuses or 'none'}; oldest: {result.oldest_age / 60:.1f} min")
    return 0


def list_quarantine(args: argparse.Namespace) -> int:
    for item in _ops(args).store.quarantined():
        if args.json:
            print(json.dumps({"Id": item.id, "Path": str(item.path), "Reason": item.reason,
                              "QuarantinedAt": item.quarantined_at.isoformat()}))
        else:
            print(f"{item.id:<8} {item.quarantined_at:%Y-%m-%d %H:%M:%S}  {item.reason}")
    return 0
