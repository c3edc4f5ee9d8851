#!/bin/sh
# The upstream haproxy image's entrypoint: flags alone mean haproxy; haproxy runs in the foreground.
set -e
if [ "${1#-}" != "$1" ]; then
    set -- haproxy "$@"
fi
if [ "$1" = haproxy ]; then
    shift
    set -- haproxy -W -db "$@"
fi
exec "$@"
