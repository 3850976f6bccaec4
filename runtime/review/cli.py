"""``lgld-report``: a count session's lab report from the JSONL log alone (works off the Pi).

Exit status: 0 written, 1 the log cannot be read, the session is not in it, or an output cannot
be written (one line on stderr; nothing is written then), 2 bad arguments.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from lgld.runtime.config import state_dir as lgld_state_dir
from lgld.runtime.core.cliutil import OneLineParser, plural, run_cli
from lgld.runtime.core.countlog import SessionLog, SessionLogError, read_log
from lgld.runtime.core.files import write_atomic
from lgld.runtime.core.untrusted import shown, text_arg, utf8_safe
from lgld.runtime.review import validation
from lgld.runtime.review.report import CropFiles, cells_csv, render_html, summary

PROG = "lgld-report"

EPILOG = """\
examples:
  lgld-report results.jsonl -o report.html            the latest session with cells
  lgld-report results.jsonl --list                     the sessions in the log
  lgld-report results.jsonl --session 20261201-170254-3fa2 -o r.html --csv cells.csv --json s.json
"""


def build_parser() -> argparse.ArgumentParser:
    p = OneLineParser(
        prog=PROG,
        description="Write the report of a differential-count session (lgld-run --mode cells) "
        "from its JSONL log: one self-contained HTML file, a per-cell CSV, a JSON summary. "
        "Rotated siblings (LOG.1, LOG.2 ...) are read too.",
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("log", metavar="LOG.jsonl", type=text_arg, help="the result log lgld-run wrote")
    p.add_argument("--session", metavar="ID", type=text_arg,
                   help="session id (default: the latest one with counted cells)")
    p.add_argument("-o", "--output", metavar="REPORT.html", type=text_arg,
                   help="write the HTML report here")
    p.add_argument("--csv", metavar="FILE", type=text_arg, help="write the per-cell table here")
    p.add_argument("--json", metavar="FILE", type=text_arg, help="write the summary here")
    p.add_argument("--crops", metavar="DIR", type=text_arg,
                   help="the folder crops are read from, never outside it (default: the log's "
                        "folder); a crop is found by the longest tail of its logged path")
    p.add_argument("--list", action="store_true", help="list the sessions in the log and exit")
    p.add_argument("--validate", action="store_true",
                   help="store the session's reviewed accuracy (Wilson 95%% interval) as this "
                   "model's validation on this microscope, in the state directory; later "
                   "sessions that look alike are 'validated'")
    p.add_argument("--state-dir", metavar="DIR", help="state directory (default: "
                   "$STATE_DIRECTORY, else ~/.local/state/lgld, as the calibration's)")
    return p


def _list(log) -> int:
    for s in log.sessions:
        start = s.start.isoformat(timespec="seconds") if s.start else "?"
        label = f"  {shown(s.sample)}" if s.sample else ""
        print(f"{shown(s.id)}  {start}  {plural(len(s.cells), 'cell')}{label}")
    print(f"({log.lines} lines, {log.skipped} skipped)", file=sys.stderr)
    return 0


def default_session(log: SessionLog) -> str | None:
    """The last session with counted cells (a "new count" left empty is not the default);
    None when no session has any (then the latest)."""
    return next((s.id for s in reversed(log.sessions) if s.cells), None)


def run(args: argparse.Namespace) -> int:
    if args.crops is not None and not Path(args.crops).is_dir():
        raise SessionLogError(f"crop folder not found: {args.crops}")
    log = read_log(args.log)
    if args.list:
        return _list(log)
    session = log.get(args.session or default_session(log))
    # build everything first: an error leaves no output behind
    crops = CropFiles(log, args.crops)
    data = summary(log, session, crops)
    state_dir = Path(args.state_dir).expanduser() if args.state_dir else lgld_state_dir()
    events = validation.read_session(args.log, session.id)
    if args.validate:
        path = validation.save(state_dir, validation.record(events))
        v = validation.session_validation(events["cells"], events["reviews"])
        print(f"{PROG}: validated {events['model'].get('name')} on this microscope: "
              f"{v['right']}/{v['reviewed']} right ({100 * v['accuracy']:.1f}%, 95% CI "
              f"{100 * v['ci95'][0]:.1f}-{100 * v['ci95'][1]:.1f}%); stored in {path}")
    data["microscope"] = {**(events["domain"] or {"state": "unchecked", "message": "no "
                                                  "microscope check in this session"}),
                          "validations": validation.for_model(
                              validation.load(state_dir), events["model"].get("sha256", ""))}
    outputs: list[tuple[str, str]] = []
    if args.output:
        outputs.append((args.output, render_html(log, session, crops, data)))
    if args.csv:
        outputs.append((args.csv, cells_csv(log, session, crops)))
    if args.json:
        outputs.append((args.json, utf8_safe(json.dumps(data, indent=2, ensure_ascii=False))
                        + "\n"))
    for target, text in outputs:
        try:
            write_atomic(target, text)
        except OSError as exc:
            raise SessionLogError(f"cannot write {target}: {exc.strerror or exc}") from None
    counts = session.reviewed_counts()
    if outputs:
        print(f"{PROG}: session {shown(session.id)}: {plural(len(session.cells), 'cell')}, "
              f"{sum(counts.values())} after review; wrote "
              + ", ".join(str(Path(t)) for t, _ in outputs))
    if log.skipped:
        print(f"{PROG}: warning: {log.skipped} torn or foreign lines skipped", file=sys.stderr)
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if not (args.output or args.csv or args.json or args.list or args.validate):
        parser.error("nothing to write: give -o REPORT.html, --csv FILE, --json FILE or --list")
    return run_cli(PROG, run, args)


if __name__ == "__main__":
    sys.exit(main())
