#!/usr/bin/env bash
# ankisync launcher. The first run makes a virtualenv (.venv) and installs the
# pinned requirements; later runs reinstall only when a requirements file changed.
#
#   ./run.sh              start the API and the worker in the foreground;
#                         Ctrl-C or SIGTERM stops both
#   ./run.sh test [ARGS]  install what the tests need and run them (ARGS go to pytest)
#   ./run.sh setup        interactive setup: AnkiWeb login, TTS key, API key
#   ./run.sh CMD ...      any other command of ankisync.py (login USER, api-key, ...)
#   ./run.sh --help       every command and setting
set -euo pipefail
cd "$(dirname "$0")"
VENV=${ANKISYNC_VENV:-.venv}
PY="$VENV/bin/python"

check_python() {
    if ! command -v python3 >/dev/null; then
        echo "ankisync needs Python 3.11 or newer: install it (Debian: apt install python3 python3-venv)" >&2
        exit 1
    fi
    if ! python3 -c 'import sys; sys.exit(sys.version_info < (3, 11))'; then
        echo "ankisync needs Python 3.11 or newer, this is $(python3 -V 2>&1): install a newer python3" >&2
        exit 1
    fi
}

install() {  # install() REQUIREMENTS_FILE: skipped when nothing changed since last time
    local stamp="$VENV/.installed-$(basename "$1")" hash
    hash=$(cat "$1" requirements.txt | sha256sum | cut -d' ' -f1)
    if [ ! -x "$PY" ]; then
        check_python
        echo "ankisync: making the virtualenv in $VENV" >&2
        python3 -m venv "$VENV" || {
            echo "could not make a virtualenv: install python3-venv (Debian: apt install python3-venv)" >&2
            exit 1
        }
    fi
    if [ "$(cat "$stamp" 2>/dev/null)" != "$hash" ]; then
        echo "ankisync: installing $1 (first run takes a minute)" >&2
        "$PY" -m pip install --quiet --disable-pip-version-check -r "$1"
        echo "$hash" >"$stamp"
    fi
}

stdout_is_journal() {  # under systemd: stdout is the stream JOURNAL_STREAM names
    [ -n "${JOURNAL_STREAM:-}" ] &&
        [ "$(stat -L -c %d:%i "/proc/$$/fd/1" 2>/dev/null)" = "$JOURNAL_STREAM" ]
}

start() {
    install requirements.txt
    # The first start prints the API key, once; never into the journal, where
    # it would stay on disk: there the API logs how to make one by hand.
    stdout_is_journal || "$PY" ankisync.py api-key --if-missing
    # Two malloc arenas instead of one per thread: the threaded web process
    # keeps ~5 MB less, at no measurable cost in speed (bench/README.md).
    export MALLOC_ARENA_MAX="${MALLOC_ARENA_MAX:-2}"
    "$PY" ankisync.py worker & worker=$!
    "$PY" ankisync.py serve & web=$!
    stop() {
        trap - INT TERM
        # SIGTERM: the web process stops at once; the worker finishes its
        # running job (bounded) and leaves the rest queued for next time.
        kill -TERM "$web" "$worker" 2>/dev/null || true
        wait "$web" "$worker" 2>/dev/null || true
    }
    trap 'stop; exit 0' INT TERM
    wait -n || true
    echo "ankisync: a process stopped on its own; stopping the other" >&2
    stop
    exit 1
}

usage() {
    cat <<'EOF'
./run.sh               start the API and the worker in the foreground; Ctrl-C or SIGTERM stops both
./run.sh test [ARGS]   install what the tests need and run the test suite (ARGS go to pytest)
./run.sh COMMAND ...   one of the commands below (./run.sh COMMAND --help for its options)

EOF
}

case "${1:-}" in
    "") start ;;
    -h|--help|help)
        usage
        install requirements.txt
        exec "$PY" ankisync.py --help
        ;;
    test)
        shift
        install requirements-test.txt
        exec "$PY" -m pytest "$@"
        ;;
    *)
        install requirements.txt
        exec "$PY" ankisync.py "$@"
        ;;
esac
