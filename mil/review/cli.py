"""``python -m mil.review AUDIT_DIR --rater NAME [--host 127.0.0.1] [--port 8765] [--open]``.

Serves the review page of one rater over an audit folder written by ``mil.blast audit``.
Answers go to ``AUDIT_DIR/raters/NAME.csv`` as they are given; stop with Ctrl+C at any time
and start again to resume at the first unanswered cell. Two raters run two servers (two
ports) on the same folder. The server binds to 127.0.0.1; with any other ``--host`` it prints
a one-time token and refuses every request without it.
"""

from __future__ import annotations

import argparse
import ipaddress
import logging
import secrets
import webbrowser
from pathlib import Path

from mil.blast.folder import check_rater_name
from mil.cli import Command, run_command
from mil.errors import CliError
from mil.outputs import require_writable

log = logging.getLogger("mil.review")


def is_loopback(host: str) -> bool:
    """True for 127.0.0.0/8, ::1 and ``localhost``."""
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


def _arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("audit", help="audit folder written by 'python -m mil.blast audit'")
    p.add_argument("--rater", required=True,
                   help="your name, a plain word (letters, digits, '_' or '-')")
    p.add_argument("--host", default="127.0.0.1",
                   help="address to bind (default: 127.0.0.1; any other needs the printed token)")
    p.add_argument("--port", type=int, default=8765, help="port (default: 8765; 0: any free)")
    p.add_argument("--open", action="store_true", help="open the page in the default browser")


def serve(args: argparse.Namespace) -> int:
    from werkzeug.serving import make_server

    from mil.review.app import create_app

    rater = check_rater_name(args.rater)
    require_writable(Path(args.audit) / "raters", "answers folder")  # before any answer is given
    token = None if is_loopback(args.host) else secrets.token_urlsafe(24)
    app = create_app(Path(args.audit), rater, token=token)
    try:
        server = make_server(args.host, args.port, app, threaded=True)
    except OSError as err:
        raise CliError(f"cannot listen on {args.host}:{args.port} ({err.strerror or err}); "
                       "pass another --port") from None
    if not args.verbose:
        logging.getLogger("werkzeug").setLevel(logging.WARNING)
    host = f"[{args.host}]" if ":" in args.host else args.host
    url = f"http://{host}:{server.server_port}/" + (f"?token={token}" if token else "")
    answers = app.config["RATER_ANSWERS"]
    print(f"mil.review: {rater} -> {answers.path} ({len(answers.answers)} answered so far)\n"
          f"  open {url}\n  Ctrl+C stops; every answer is already saved.", flush=True)
    if token:
        print("  this address is reachable from other machines: the token above is needed "
              "for every request; share it only with the rater", flush=True)
    if args.open:
        webbrowser.open(url)
    try:
        server.serve_forever()
    finally:
        server.server_close()
        answers.close()
    return 0


COMMAND = Command(name="review", help="review the blast filter's audit in the browser "
                  "(one expert per server)", description=__doc__ or "", run=serve,
                  arguments=_arguments)


def main(argv: list[str] | None = None) -> int:
    return run_command(COMMAND, argv)
