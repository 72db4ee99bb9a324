"""``python -m openalgo_events.relay``: what keepers, publishers and the gunicorn hook start."""

from __future__ import annotations

import argparse
import sys

from ..errors import ConfigError
from .command import finish, run


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="openalgo_events.relay")
    parser.add_argument("--spool")
    parser.add_argument("--port", type=int, default=None)
    parser.add_argument("--exit-when-idle", action="store_true")
    parser.add_argument("--wait-for-lock", action="store_true")
    parser.add_argument("--keep", action="store_true", help="be the relay's keeper")
    parser.add_argument("--watch-parent", action="store_true")
    args = parser.parse_args(argv)
    try:
        return run(args.spool, args.port, args.exit_when_idle, args.wait_for_lock,
                   env_file=None, keep=args.keep, watch_parent=args.watch_parent)
    except ConfigError as exc:
        print(f"openalgo-events relay: {exc}", file=sys.stderr)
        return 78


if __name__ == "__main__":
    finish(main())
