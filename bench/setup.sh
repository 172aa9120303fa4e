#!/bin/sh
# Install what bench/ needs: Postfix (a peer; also smtp-source/smtp-sink), a C compiler for
# bench/smtpload.c, and aiosmtpd (a peer) into the Python that runs the bench.
# Run as root.  Postfix is installed without configuring a mail system and is not started:
# the bench runs its own isolated instance on 127.0.0.1.
#
# Usage: sh bench/setup.sh [PYTHON]   (default: /work/venv/bin/python if present, else python3)
set -e

PYTHON=${1:-}
if [ -z "$PYTHON" ]; then
    if [ -x /work/venv/bin/python ]; then PYTHON=/work/venv/bin/python; else PYTHON=python3; fi
fi

if ! command -v postfix >/dev/null 2>&1 || ! command -v cc >/dev/null 2>&1; then
    echo "postfix postfix/main_mailer_type select No configuration" | debconf-set-selections
    DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends postfix gcc libc6-dev
    # The system instance is not needed and must not hold port 25 for the bench's sake.
    postfix stop >/dev/null 2>&1 || true
fi

"$PYTHON" -m pip install --quiet aiosmtpd
echo "bench: ready (postfix $(postconf -h mail_version), $("$PYTHON" -m pip show aiosmtpd | sed -n 's/^Version: /aiosmtpd /p'))"
