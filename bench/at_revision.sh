#!/usr/bin/env bash
# Run a bench script against a clean export of a git revision, so that what is
# measured is that commit, not whatever is being edited in the working tree.
# The bench/ scripts of the working tree are used; the virtualenv is this
# checkout's .venv (override with ANKISYNC_VENV).
#
#   bench/at_revision.sh [REV [SCRIPT [ARGS...]]]
#   bench/at_revision.sh HEAD run_all.py --runs 3
set -euo pipefail
here=$(cd "$(dirname "$0")/.." && pwd)
rev=${1:-HEAD}
script=${2:-run_all.py}
shift $(($# < 2 ? $# : 2))
commit=$(git -C "$here" rev-parse --short "$rev")
dir=$(mktemp -d /tmp/ankisync-rev-XXXXXX)
trap 'rm -rf "$dir"' EXIT
git -C "$here" archive "$commit" | tar -x -C "$dir"
rm -rf "$dir/bench"
cp -r "$here/bench" "$dir/bench"
echo "$commit" >"$dir/bench/REVISION"
export ANKISYNC_VENV=${ANKISYNC_VENV:-$here/.venv}
echo "# measuring $commit ($(git -C "$here" log -1 --format=%s "$commit")) in $dir" >&2
"$ANKISYNC_VENV/bin/python" "$dir/bench/$script" "$@"
