"""
C{python -m bench}: run every scenario against every peer and print the table.

Starts the peers (bench/peers) in a fresh temporary work directory on 127.0.0.1, measures the
repeated scenarios in rounds, peers interleaved and their order rotated every round (the
machine is shared and noisy, so only ratios taken in one run mean anything), then the once-only
scenarios on freshly restarted peers, stops everything and removes the work directory.  Saves
the record as JSON in bench/results/ (not in git).  Writes only there and in the work directory.
"""

import argparse
import datetime
import json
import os
import platform
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from bench import report
from bench.load import buildClient
from bench.peers import PEERS, PeerUnavailable, raiseFileLimit
from bench.scenarios import KB, SCENARIOS, Sample, Settings

RESULTS = Path(__file__).with_name("results")
FULL_ROUNDS = 5


def parseArguments(argv):
    """
    @return: the command line's options.
    """
    parser = argparse.ArgumentParser(
        prog="python -m bench", description="qmailtx against Postfix and aiosmtpd")
    parser.add_argument("--quick", action="store_true",
                        help="small batches, one round, fewer connections (about a minute)")
    parser.add_argument("--rounds", type=int, help=f"rounds of the rate rows "
                        f"(default {FULL_ROUNDS}, 1 with --quick)")
    parser.add_argument("--peers", default=",".join(PEERS),
                        help="comma-separated peers (default: %(default)s)")
    parser.add_argument("--scenarios", default="",
                        help="only rows whose key contains one of these comma-separated words")
    parser.add_argument("--messages", type=int, help="messages per batch, every size")
    parser.add_argument("--idle", type=int, help="idle connections for the memory row")
    parser.add_argument("--held", type=int, help="connections for the simultaneous row")
    parser.add_argument("--workdir", help="parent of the temporary work directory "
                        "(default: the system's temporary directory)")
    parser.add_argument("--keep", action="store_true", help="keep the work directory")
    parser.add_argument("--json", help="where to save the record (default: bench/results/)")
    return parser.parse_args(argv)


def makeSettings(args, client):
    """
    @return: the L{Settings} of this run: the full sizes, or C{--quick}'s, then overrides.
    """
    settings = Settings(client=str(client))
    if args.quick:
        settings.batchMessages = {KB: 100, 50 * KB: 50}
        settings.sessionsPerClient = 1
        settings.idleConnections = 500
        settings.heldConnections = 2000
    if args.messages:
        settings.batchMessages = {size: args.messages for size in settings.batchMessages}
        settings.sessionsPerClient = 1
    if args.idle:
        settings.idleConnections = args.idle
    if args.held:
        settings.heldConnections = args.held
    return settings


def selectScenarios(words):
    """
    @return: the scenarios whose key contains one of the comma-separated words (all if none).
    """
    words = [w for w in words.split(",") if w]
    return [s for s in SCENARIOS if not words or any(w in s.key for w in words)]


def say(text):
    """
    Progress goes to stderr, so that stdout holds only the table.
    """
    sys.stderr.write(text + "\n")
    sys.stderr.flush()


def measure(scenario, peer, settings):
    """
    Take one sample; a scenario that breaks records its exception instead of ending the run.
    """
    try:
        return scenario.measure(peer, settings)
    except Exception as e:
        return Sample(None, 1, {"exception": f"{type(e).__name__}: {e}"})


def startPeers(names, workdir, skipped, running):
    """
    Start the named peers, adding each to C{running} before it starts so that an interrupted
    start is still stopped; record in C{skipped} why a peer cannot run.
    """
    for name in names:
        peer = PEERS[name](workdir, log=say)
        reason = peer.missing()
        if reason is None:
            running.append(peer)
            try:
                peer.start()
            except (PeerUnavailable, OSError, subprocess.CalledProcessError) as e:
                reason = str(e)
                peer.stop()
                running.remove(peer)
        if reason is None:
            say(f"started {name} on {peer.address[0]}:{peer.address[1]}")
        else:
            say(f"skipping {name}: {reason}")
            skipped[name] = reason


def runRounds(scenarios, peers, settings, rounds, samples):
    """
    Measure every repeated scenario on every peer, C{rounds} times; within a round each row is
    taken on all peers back to back, and the peers' order rotates from round to round.
    """
    for n in range(rounds):
        order = peers[n % len(peers):] + peers[:n % len(peers)]
        for scenario in scenarios:
            for peer in order:
                if scenario.only and peer.name not in scenario.only:
                    continue
                sample = measure(scenario, peer, settings)
                samples[scenario.key].setdefault(peer.name, []).append(sample)
                say(f"round {n + 1}/{rounds} {scenario.key:32} {peer.name:9} "
                    f"{report.formatValue(sample.value, scenario.unit):>8} {scenario.unit}"
                    + (f"  errors={sample.errors}" if sample.errors else ""))


def runAllRounds(scenarios, peers, settings, rounds, samples):
    """
    L{runRounds} for the rows that only create files, then for those that delete many
    (L{bench.scenarios.Scenario.deletes}), so no creating row follows a mass deletion.
    """
    runRounds([s for s in scenarios if not s.deletes], peers, settings, rounds, samples)
    runRounds([s for s in scenarios if s.deletes], peers, settings, rounds, samples)


def runOnce(scenarios, peers, settings, samples):
    """
    Measure each once-only scenario on each of its peers, restarted first so that nothing
    left from earlier rows (Postfix's idle smtpd processes, Python's heap) skews it.
    """
    for scenario in scenarios:
        for peer in peers:
            if scenario.only and peer.name not in scenario.only:
                continue
            try:
                peer.restart()
            except PeerUnavailable as e:
                sample = Sample(None, 1, {"exception": str(e)})
            else:
                sample = measure(scenario, peer, settings)
            samples[scenario.key].setdefault(peer.name, []).append(sample)
            say(f"once    {scenario.key:32} {peer.name:9} "
                f"{report.formatValue(sample.value, scenario.unit):>8} {scenario.unit}"
                + (f"  errors={sample.errors}" if sample.errors else ""))


def checkStored(peers, scenarios, samples):
    """
    Compare what each peer says it stored with the 250s the client counted.
    """
    stored = {}
    for peer in peers:
        accepted = sum(s.detail.get("accepted", 0) for scenario in scenarios
                       for s in samples[scenario.key].get(peer.name, []))
        try:
            onDisk = peer.storedCount()
        except (NotImplementedError, OSError):
            onDisk = None
        stored[peer.name] = {"accepted": accepted, "stored": onDisk}
        if onDisk is not None and onDisk < accepted:
            say(f"WARNING: {peer.name} answered 250 to {accepted} messages "
                f"but holds only {onDisk}")
    return stored


def environment(peers, skipped, rounds):
    """
    @return: what the JSON record needs to tell one run from another.
    """
    import twisted
    return {
        "time": datetime.datetime.now(datetime.timezone.utc).isoformat(),
        "host": platform.node(), "kernel": platform.release(), "cpus": os.cpu_count(),
        "loadavg": os.getloadavg(), "python": platform.python_version(),
        "twisted": twisted.__version__, "rounds": rounds,
        "peers": {p.name: {"version": p.version(), "description": p.description}
                  for p in peers},
        "skipped": skipped,
    }


def _terminate(signum, frame):
    raise SystemExit(128 + signum)


def main(argv=None):
    args = parseArguments(sys.argv[1:] if argv is None else argv)
    rounds = args.rounds or (1 if args.quick else FULL_ROUNDS)
    names = [n for n in args.peers.split(",") if n]
    unknown = [n for n in names if n not in PEERS]
    if unknown:
        say(f"unknown peers: {', '.join(unknown)} (known: {', '.join(PEERS)})")
        return 2
    signal.signal(signal.SIGTERM, _terminate)
    raiseFileLimit()
    client = buildClient(RESULTS / ".build")
    settings = makeSettings(args, client)
    scenarios = selectScenarios(args.scenarios)
    began = time.monotonic()
    workdir = Path(tempfile.mkdtemp(prefix="qmailtx-bench-", dir=args.workdir))
    os.chmod(workdir, 0o755)
    skipped = {}
    peers = []
    samples = {s.key: {} for s in scenarios}
    try:
        startPeers(names, workdir, skipped, peers)
        if not peers:
            say("no peer could run")
            return 1
        env = environment(peers, skipped, rounds)
        repeated = [s for s in scenarios if s.repeated]
        runAllRounds(repeated, peers, settings, rounds, samples)
        env["stored"] = checkStored(peers, repeated, samples)
        runOnce([s for s in scenarios if not s.repeated], peers, settings, samples)
    finally:
        for peer in peers:
            peer.stop()
        if args.keep:
            say(f"kept {workdir}")
        else:
            shutil.rmtree(workdir, ignore_errors=True)
    env["seconds"] = round(time.monotonic() - began, 1)
    columns = [p.name for p in peers]
    results, rows = [], []
    for scenario in scenarios:
        summary = report.summarize(scenario, samples[scenario.key])
        results.append((scenario, samples[scenario.key], summary))
        rows.append((scenario.label.format(**vars(settings)), scenario.unit, summary))
    print(report.table(rows, columns))
    print(f"\nmedians of {rounds} round(s); '!' = some message or connection failed "
          f"(see JSON); ratios are qmailtx/peer; {env['seconds']} s")
    for name, reason in skipped.items():
        print(f"not measured: {name}: {reason}")
    record = report.record(env, vars(settings) | {"batchMessages": {
        str(k): v for k, v in settings.batchMessages.items()}}, columns, results)
    path = Path(args.json) if args.json else RESULTS / (
        "bench-" + datetime.datetime.now().strftime("%Y%m%d-%H%M%S") + ".json")
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(record, indent=1))
    print(f"saved {path}")
    return 0
