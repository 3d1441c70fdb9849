"""Hostile clients at the sizes of issue "Stay up when clients misbehave": one markdown row each.

Run: ``.venv/bin/python bench/hostile.py [--source DIR] [--only NAME ...] [--hold S]
[--server-flag=--receive-timeout=2 ...]``

Each attack gets a fresh ``flatscope serve`` process of the embedded model, run as
``PYTHONPATH=DIR .venv/bin/python -m flatscope serve --port 0 ...`` so that ``--source`` can
point at a copy of an older ``service/`` (default: this tree's). While the attack runs, a
child process probes the server every ~100 ms (a Predict and a health Check on a fresh
connection, each within 1 s) and the server's RSS is sampled every 50 ms. Then the bench
waits up to 30 s for the server to serve a probe and for its RSS to come back within
RETURN_MARGIN of where it was before the attack. The row reports the probes, the peak RSS,
the final status of each of the attacker's calls (and facts about the attack), what the
server counted (Predict's statuses, dropped requests by reason), and how it did afterwards.

Attacks (tests/attackers.py has each one's details):
  stalled_streams       1 connection opening 1,030 Predict streams that never send a byte
  stalled_streams_many  11 connections x 100 such streams
  stalled_uploads       20 streams declaring a 50 MiB message, sending 49 MiB, then stalling
  unread_replies        48 Inspect calls (batch 256, include_source) whose replies are never read
  big_requests          100 concurrent ~50 MiB Predict requests
  burst                 2,000 batch-1 Predict calls at once
  deadlines             10,000 Predict calls with 1 ms deadlines
  big_message_latency   batch-256 Inspect calls with typed replies (~38 MB) one after another,
                        while health checks measure their latency
The stalling attacks hold their calls ``--hold`` seconds (default 20).
"""

from __future__ import annotations

import argparse
import functools
import sys
import tempfile
from collections.abc import Callable
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "tests"))

import attackers  # noqa: E402
from attackers import AttackResult, MiB  # noqa: E402
from processes import ServerProcess  # noqa: E402

RETURN_MARGIN = 100 * MiB  # RSS "came back" when within this of its value before the attack
RECOVERY = 30.0  # seconds the server gets to serve again and give memory back
Attack = Callable[[str, tuple[int, ...], float], AttackResult]  # (target, shape, hold)

ATTACKS: dict[str, Attack] = {
    "stalled_streams": lambda target, shape, hold: attackers.stalled_streams(
        target, connections=1, streams_per_connection=1030, hold=hold
    ),
    "stalled_streams_many": lambda target, shape, hold: attackers.stalled_streams(
        target, connections=11, streams_per_connection=100, hold=hold
    ),
    "stalled_uploads": lambda target, shape, hold: attackers.stalled_uploads(
        target, streams=20, declared=50 * MiB, send=49 * MiB, hold=hold
    ),
    "unread_replies": lambda target, shape, hold: attackers.unread_replies(
        target, shape, calls=48, batch=256, hold=hold
    ),
    "big_requests": lambda target, shape, hold: attackers.big_requests(
        target, shape, calls=100, size=50 * MiB
    ),
    "burst": lambda target, shape, hold: attackers.burst(target, shape, calls=2000),
    "deadlines": lambda target, shape, hold: attackers.deadlines(target, shape, calls=10_000),
    "big_message_latency": lambda target, shape, hold: attackers.big_message_latency(
        target, shape, seconds=hold, typed=True
    ),
}
HEADER = (
    "| attack | probes ok (Predict + health, each < 1 s) | peak RSS | attacker's calls "
    "| server counted | afterwards |\n|---|---|---|---|---|---|"
)


def run(name: str, source: Path, flags: list[str], hold: float, folder: Path) -> str:
    """Runs attack ``name`` against a fresh server; its markdown row."""
    process = ServerProcess(
        folder / f"{name}.log", *flags, env={"PYTHONPATH": str(source)}, metrics=True
    )
    with process.serving() as server:
        shape = attackers.model_input_shape(server.target)
        baseline = attackers.settled_rss(server.pid)
        before = attackers.server_counts(server.metric)
        with attackers.watching(server.target, server.pid, shape) as watch:
            result = ATTACKS[name](server.target, shape, hold)
        if server.proc.poll() is not None:
            died = f"exited ({server.proc.returncode}); log {process.log_path}"
            return _row(name, watch.describe(), _mib(watch.peak_rss), result.describe(), "", died)
        counted = attackers.counted_since(server.metric, before)
        after = attackers.recovery(
            server.target, server.pid, shape, baseline + RETURN_MARGIN, timeout=RECOVERY
        )
        exited = server.proc.poll()
    if exited is not None:
        afterwards = f"exited ({exited}) after the attack; log {process.log_path}"
        return _row(name, watch.describe(), _mib(watch.peak_rss), result.describe(), "", afterwards)
    peak = f"{_mib(watch.peak_rss)} (+{_mib(watch.peak_rss - baseline)} over {_mib(baseline)})"
    serves = f"serves after {after.serves_after} s" if after.serves else "does not serve"
    back = "back" if after.rss_returned else f"not back in {RECOVERY:.0f} s"
    afterwards = f"{serves}; RSS {_mib(after.rss)} ({back})"
    server_side = "; ".join(
        f"{series} " + ", ".join(f"{k} {n}" for k, n in counts.most_common())
        for series, counts in counted.items()
        if counts
    )
    return _row(name, watch.describe(), peak, result.describe(), server_side, afterwards)


def _row(*cells: str) -> str:
    return "| " + " | ".join(c.replace("|", "/") for c in cells) + " |"


def _mib(size: int) -> str:
    return f"{size / MiB:.0f} MiB"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--source",
        type=Path,
        default=ROOT / "service",
        help="folder holding the flatscope package to serve (default: this tree's service/)",
    )
    parser.add_argument(
        "--only", action="append", choices=sorted(ATTACKS), help="run this attack (repeatable)"
    )
    parser.add_argument(
        "--server-flag",
        action="append",
        default=[],
        metavar="FLAG",
        help="a flag for flatscope serve, e.g. --server-flag=--receive-timeout=2 (repeatable)",
    )
    parser.add_argument("--hold", type=float, default=20.0, help="seconds stalled calls are held")
    parser.add_argument(
        "--logs", type=Path, help="keep the servers' logs in this folder (default: discarded)"
    )
    args = parser.parse_args(argv)
    source = args.source.resolve()
    if not (source / "flatscope" / "__init__.py").is_file():
        parser.error(f"{source} holds no flatscope package")
    print(f"source {source}; server flags: {' '.join(args.server_flag) or 'none'}\n")
    print(HEADER, flush=True)
    with tempfile.TemporaryDirectory() as tmp:
        logs = args.logs or Path(tmp)
        logs.mkdir(parents=True, exist_ok=True)
        for name in args.only or ATTACKS:
            attack = functools.partial(run, name, source, args.server_flag, args.hold, logs)
            print(attack(), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
