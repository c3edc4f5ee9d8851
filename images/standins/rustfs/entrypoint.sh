#!/bin/sh
# As the upstream image's /entrypoint.sh normalises its command: no arguments, flags, `rustfs ...`
# or data paths all run /usr/bin/rustfs (with the arguments after a leading `rustfs`).
set -e
if [ $# -eq 0 ]; then
    set -- /usr/bin/rustfs
elif [ "$1" = rustfs ]; then
    shift
    set -- /usr/bin/rustfs "$@"
elif [ "$1" != /usr/bin/rustfs ]; then
    set -- /usr/bin/rustfs "$@"
fi
exec "$@"
