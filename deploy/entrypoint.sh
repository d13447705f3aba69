#!/bin/sh
# entrypoint.sh USER DIRECTORY COMMAND...
# Runs COMMAND as USER, with DIRECTORY (the outbox's) owned by USER.
#
# Fly, like Docker, mounts a volume owned by root over the image's directory, so a
# process started as the image's user could not create its database there. Started as
# root, this gives the directory (and anything a root shell left in it) to USER, then
# drops root for good: setpriv (util-linux, in every Debian image) sets the user, its
# group and supplementary groups, and execs COMMAND in place. Started as anyone else
# (`docker run --user`, a Kubernetes runAsUser), it only execs COMMAND.
set -eu
user=$1
directory=$2
shift 2
if [ "$(id -u)" = 0 ]; then
    chown -R "$user:" "$directory"
    exec setpriv --reuid="$user" --regid="$(id -g "$user")" --init-groups -- "$@"
fi
exec "$@"
