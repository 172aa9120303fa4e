"""
Memory of a server's processes, read from /proc.

PSS (proportional set size) is the fair sum for servers that fork: Postfix's smtpd processes
share their program pages, and PSS charges each shared page once in total, spread over the
processes that map it; RSS would charge it once per process.  Reads /proc only.
"""

import os


def _parents():
    parents = {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat", "rb") as f:
                stat = f.read()
        except OSError:
            continue
        # The command name may hold spaces and parentheses; fields resume after the last ')'.
        fields = stat[stat.rindex(b")") + 2:].split()
        parents[int(entry)] = int(fields[1])
    return parents


def processTree(root):
    """
    @return: C{root} and all its living descendants.
    """
    children = {}
    for pid, parent in _parents().items():
        children.setdefault(parent, []).append(pid)
    tree, todo = [], [root]
    while todo:
        pid = todo.pop()
        tree.append(pid)
        todo.extend(children.get(pid, ()))
    return tree


def memoryOf(pids):
    """
    Sum the memory of some processes.

    @return: C{{"pssKiB": ..., "rssKiB": ..., "processes": ...}}; processes that exit while
        being read are left out.
    """
    pss = rss = counted = 0
    for pid in pids:
        try:
            with open(f"/proc/{pid}/smaps_rollup", "rb") as f:
                rollup = f.read()
        except OSError:
            continue
        counted += 1
        for line in rollup.splitlines():
            if line.startswith(b"Pss:"):
                pss += int(line.split()[1])
            elif line.startswith(b"Rss:"):
                rss += int(line.split()[1])
    return {"pssKiB": pss, "rssKiB": rss, "processes": counted}
