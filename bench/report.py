"""
Turning samples into the table and the JSON record.

Pure functions over plain data; writes nothing (run.py saves what L{record} returns).
"""

import statistics

REFERENCE = "qmailtx"


def median(samples):
    """
    @return: the median of the samples' values, or C{None} if none has one.
    """
    values = [s.value for s in samples if s.value is not None]
    return statistics.median(values) if values else None


def summarize(scenario, samplesByPeer):
    """
    Reduce one row's samples to medians, error counts and the target verdict.

    @param samplesByPeer: C{{peer name: [Sample, ...]}}.
    """
    medians = {peer: median(samples) for peer, samples in samplesByPeer.items()}
    errors = {peer: sum(s.errors for s in samples) for peer, samples in samplesByPeer.items()}
    verdict = scenario.target(medians, errors) if scenario.target else (None, "")
    return {"medians": medians, "errors": errors, "target": verdict}


def ratio(mine, theirs):
    """
    @return: C{mine / theirs}, or C{None} when either is missing.
    """
    if mine is None or not theirs:
        return None
    return mine / theirs


def formatValue(value, unit):
    """
    @return: a table cell: whole numbers for rates and counts, one decimal otherwise.
    """
    if value is None:
        return "n/a"
    if unit == "msg/s" or unit == "conns":
        return f"{value:.0f}"
    return f"{value:.1f}"


def table(rows, peers):
    """
    Format the table: one line per scenario, a column per peer, ratio columns of qmailtx
    against each other peer, and the target verdict.

    @param rows: C{[(label, unit, summary)]} with summaries from L{summarize}.
    @param peers: peer names, in column order.
    """
    others = [p for p in peers if p != REFERENCE]
    header = (["scenario", "unit"] + peers + [f"{REFERENCE}/{p}" for p in others]
              + ["target"])
    lines = []
    for label, unit, summary in rows:
        medians, errors = summary["medians"], summary["errors"]
        cells = [label, unit]
        for peer in peers:
            if peer not in medians:
                cells.append("-")
                continue
            text = formatValue(medians[peer], unit)
            cells.append(text + ("!" if errors.get(peer) else ""))
        for peer in others:
            r = ratio(medians.get(REFERENCE), medians.get(peer))
            cells.append("-" if r is None else f"{r:.3g}")
        passed, text = summary["target"]
        cells.append("" if not text else
                     f"{'PASS' if passed else 'FAIL' if passed is False else '----'} {text}")
        lines.append(cells)
    widths = [max(len(row[i]) for row in [header] + lines) for i in range(len(header))]
    def render(row):
        return "  ".join(cell.ljust(w) if i < 2 or i == len(row) - 1 else cell.rjust(w)
                         for i, (cell, w) in enumerate(zip(row, widths))).rstrip()
    rule = "  ".join("-" * w for w in widths)
    return "\n".join([render(header), rule] + [render(row) for row in lines])


def pairedRatios(samplesByPeer):
    """
    The median over rounds of qmailtx's value divided by each other peer's value in the same
    round: less sensitive than the ratio of medians to the machine's load drifting during a run.

    @return: C{{peer: median ratio}}, for peers with at least one round measured on both sides.
    """
    mine = samplesByPeer.get(REFERENCE, [])
    paired = {}
    for peer, samples in samplesByPeer.items():
        if peer == REFERENCE:
            continue
        ratios = [ratio(a.value, b.value) for a, b in zip(mine, samples)]
        ratios = [r for r in ratios if r is not None]
        if ratios:
            paired[peer] = statistics.median(ratios)
    return paired


def record(environment, settings, peers, results):
    """
    @return: the JSON-ready record of a run.

    @param results: C{[(scenario, samplesByPeer, summary)]}.
    """
    scenarios = []
    for scenario, samplesByPeer, summary in results:
        scenarios.append({
            "key": scenario.key,
            "unit": scenario.unit,
            "higherIsBetter": scenario.higherIsBetter,
            "medians": summary["medians"],
            "errors": summary["errors"],
            "ratios": {p: ratio(summary["medians"].get(REFERENCE), summary["medians"].get(p))
                       for p in summary["medians"] if p != REFERENCE},
            "pairedRatios": pairedRatios(samplesByPeer),
            "target": {"passed": summary["target"][0], "text": summary["target"][1]},
            "samples": {peer: [{"value": s.value, "errors": s.errors, "detail": s.detail}
                               for s in samples]
                        for peer, samples in samplesByPeer.items()},
        })
    return {"environment": environment, "settings": settings, "peers": peers,
            "scenarios": scenarios}
