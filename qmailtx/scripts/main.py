"""
The C{qmailtx} command: C{qmailtx TOOL ARGS...} runs C{qmailtx.scripts.<tool>.main(argv)}.

A tool is any module in this package with a C{main(argv) -> int}; C{argv[0]} is the tool's
qmail name, so messages read C{tcprules: fatal: ...} exactly as qmail's do.
"""

import importlib
import keyword
import pkgutil
import sys

import qmailtx.scripts


def tools():
    return sorted(
        m.name.rstrip("_").replace("_", "-")
        for m in pkgutil.iter_modules(qmailtx.scripts.__path__)
        if m.name not in ("main", "common")
    )


def usage(out):
    out.write("usage: qmailtx TOOL [ARGS...]\ntools: " + " ".join(tools()) + "\n")


def main(argv):
    if len(argv) < 2 or argv[1] in ("-h", "--help"):
        usage(sys.stdout if len(argv) >= 2 else sys.stderr)
        return 0 if len(argv) >= 2 else 100
    name = argv[1]
    if name not in tools():
        sys.stderr.write(f"qmailtx: fatal: unknown tool {name!r}\n")
        usage(sys.stderr)
        return 100
    module = name.replace("-", "_")
    if keyword.iskeyword(module):
        module += "_"  # a tool named like a keyword (except) lives in except_.py
    module = importlib.import_module("qmailtx.scripts." + module)
    return module.main([name] + argv[2:])


def run():
    sys.exit(main(sys.argv))


if __name__ == "__main__":
    run()
