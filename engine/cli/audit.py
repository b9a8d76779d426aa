"""``engine audit verify FILE``: check an audit log's hash chain."""

from __future__ import annotations

import argparse
import sys

from engine.errors import AuditError
from engine.observe.audit import verify


def run_verify(args: argparse.Namespace) -> int:
    try:
        summary = verify(args.file, head=args.head)
    except AuditError as exc:
        print(f"audit verify: {args.file}: FAILED: {exc}", file=sys.stderr)
        return 1
    print(f"audit verify: {args.file}: ok, {summary.records} records, head {summary.head}")
    return 0


def register(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    p = sub.add_parser("audit", help="audit log tools")
    asub = p.add_subparsers(dest="audit_command", metavar="ACTION", required=True)
    v = asub.add_parser("verify", help="verify a hash-chained audit log (exit 1 if tampered)")
    v.add_argument("file", metavar="FILE", help="the audit log to check")
    v.add_argument("--head", help="expected hash of the last record (detects truncation)")
    v.set_defaults(func=run_verify)
