"""
C{qmailtx except program [arg ...]}: qmail's except filter (spec/local.md §10): turns the
program's success into a bounce — exit 0 becomes 100, 111 stays 111 (defer), anything
else becomes 0.  The module is C{except_} because C{except} is a Python keyword.
Writes nothing.
"""

from qmailtx.scripts.bouncesaying import die, filterOutcome, runFilterProgram

USAGE = "except: usage: except program [ arg ... ]"


def main(argv):
    if len(argv) < 2:
        return die(100, USAGE)
    code = filterOutcome("except", runFilterProgram(argv[1:]))
    return 100 if code is None else code
