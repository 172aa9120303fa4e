"""
The qmailtx benchmark: qmailtx side by side with Postfix and aiosmtpd in one run.

Run it with C{python -m bench} (see bench/README.md).  Not part of the qmailtx package and not
run in CI; tests/service/test_bench_smoke.py keeps it working.
"""
