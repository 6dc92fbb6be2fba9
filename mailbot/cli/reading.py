"""The listings: requests, services, the outbox and received mail, as text or ``--json``.

They read through the service's read side (``Mailbot.reports``); the JSON shapes
are those of ``mailbot.views``, pinned by DESIGN.md.
"""

from __future__ import annotations

import argparse
import json
from typing import Any

from mailbot.cli.bot import open_bot
from mailbot.cli.exits import EX_OK, CommandFailed
from mailbot.config import Settings
from mailbot.domain import InboundStatus, RequestStatus, Role
from mailbot.views import inbound_json, outbox_json, report_json, request_json, service_json


def print_json(data: Any) -> None:
    print(json.dumps(data, indent=2, ensure_ascii=False))


def cmd_requests_list(args: argparse.Namespace, settings: Settings) -> int:
    status = RequestStatus(args.status) if args.status else None
    with open_bot(settings) as bot:
        found = bot.reports.requests(status=status, service=args.service, contact=args.contact)
    items = [request_json(request) for request in found]
    if args.json:
        print_json(items)
        return EX_OK
    for item in items:
        changes = ", ".join(f"{c['role']}: {c['from']} -> {c['to']}" for c in item["changes"])
        print(f"{item['id']}  {item['status']:<9}  {item['service']}  {changes}")
    if not items:
        print("no requests")
    return EX_OK


def cmd_requests_show(args: argparse.Namespace, settings: Settings) -> int:
    with open_bot(settings) as bot:
        report = bot.reports.request(args.id)
    if report is None:
        raise CommandFailed(f"no request {args.id}")
    item = report_json(report)
    if args.json:
        print_json(item)
        return EX_OK
    print(f"{item['id']}  {item['service']}  {item['status']}  (requested by {item['requester']})")
    closed = f", closed {item['closed_at']}" if item["closed_at"] else ""
    print(f"  created {item['created_at']}, expires {item['expires_at']}{closed}")
    for change in item["changes"]:
        print(f"  {change['role']}: {change['from']} -> {change['to']}")
    for v in item["validations"]:
        print(
            f"  validation {v['side']:<7} {v['email']}: {v['status']}"
            f" ({v['channel'] or '-'}, {v['decided_at'] or '-'}, delivery {v['delivery']})"
        )
    for event in item["events"]:
        print(f"  {event['at']}  {event['kind']}  {event['actor'] or ''}")
    return EX_OK


def cmd_services_show(args: argparse.Namespace, settings: Settings) -> int:
    with open_bot(settings) as bot:
        service = bot.reports.service(args.name)
    if service is None:
        raise CommandFailed(f"no service {args.name}")
    item = service_json(service)
    if args.json:
        print_json(item)
        return EX_OK
    print(
        f"{item['name']} ({item['kind']}, {'in' if item['in_good_standing'] else 'NOT in'}"
        " good standing)"
    )
    for role in Role:
        contact = item["contacts"][role.value]
        print(f"  {role:<8} {contact['email']}  {contact['handle'] or ''}  {contact['name']}")
    return EX_OK


def cmd_inbound_list(args: argparse.Namespace, settings: Settings) -> int:
    status = InboundStatus(args.status) if args.status else None
    with open_bot(settings) as bot:
        items = [inbound_json(entry) for entry in bot.reports.inbound(status, args.limit)]
        counts = bot.reports.inbound_counts()
    if args.json:
        print_json(items)
        return EX_OK
    for item in items:
        print(
            f"{item['id']:>7} {item['status']:<9} {item['received_at']}  {item['source']:<4}"
            f"  {item['message_id'] or '-'}  {item['outcome']}"
        )
    total = ", ".join(f"{counts.get(s, 0)} {s}" for s in InboundStatus)
    print(f"stored: {total}")
    return EX_OK


def cmd_outbox_list(args: argparse.Namespace, settings: Settings) -> int:
    with open_bot(settings) as bot:
        items = [outbox_json(entry) for entry in bot.reports.outbox(sent_limit=args.sent)]
    if args.json:
        print_json(items)
        return EX_OK
    for item in items:
        when = item["sent_at"] or item["next_attempt_at"]
        error = f"  last error: {item['last_error']}" if item["last_error"] else ""
        print(
            f"{item['id']:>6} {item['status']:<7} {when}  {item['event']:<20} {item['to']}"
            f"  (request {item['request'] or '-'}, {item['attempts']} attempts){error}"
        )
    if not items:
        print("the outbox is empty")
    return EX_OK
