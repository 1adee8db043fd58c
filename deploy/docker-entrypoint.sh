#!/bin/sh
# The image's entry point (tini runs it as PID 1's child, and passes it signals):
# runs ./run.sh with the container's arguments as an unprivileged user.
#
# Started as root (the default), it runs as the owner of the data folder, so a
# bind-mounted folder keeps its owner: PUID/PGID when set, else the folder's
# own owner; a folder owned by root (a new volume, or one Docker just made) is
# given to PUID:PGID, 1000:1000 by default. Started with --user, it runs as that.
set -eu
data=${ANKISYNC_DATA_DIR:-/data}
app=/opt/ankisync/run.sh

if [ "$(id -u)" != 0 ]; then
    exec "$app" "$@"
fi
mkdir -p "$data"
owner=$(stat -c %u "$data")
if [ "$owner" = 0 ]; then
    uid=${PUID:-1000}
    gid=${PGID:-$uid}
    chown "$uid:$gid" "$data"
else
    uid=${PUID:-$owner}
    gid=${PGID:-$(stat -c %g "$data")}
fi
if [ "$uid" = 0 ]; then
    echo "ankisync does not run as root: set PUID and PGID to the owner of your data folder" \
        "(id -u; id -g), or leave them unset" >&2
    exit 1
fi
if [ "$uid" != "$(stat -c %u "$data")" ]; then
    echo "ankisync: the data folder ($data in the container) belongs to user" \
        "$(stat -c %u "$data"), not PUID=$uid: chown -R $uid:$gid it on the host," \
        "or unset PUID and PGID to run as its owner" >&2
    exit 1
fi
exec setpriv --reuid="$uid" --regid="$gid" --clear-groups --no-new-privs \
    --inh-caps=-all --bounding-set=-all "$app" "$@"
