#!/bin/sh
# `minio server DIR... [--address [HOST]:PORT] [--console-address ...]` -> `moto_server -H HOST -p PORT`.
# An empty HOST means all addresses, as with MinIO. The address goes to a file for `mc ready local`.
set -e
if [ "$1" != server ]; then
    echo "minio stand-in: only 'minio server DIR --address [HOST]:PORT' is supported" >&2
    exit 2
fi
shift
address=":9000"
while [ $# -gt 0 ]; do
    case "$1" in
        --address) address="$2"; shift 2 ;;
        --address=*) address="${1#*=}"; shift ;;
        --console-address|--certs-dir|-S) shift 2 ;;
        *) shift ;;
    esac
done
host="${address%:*}"
port="${address##*:}"
if [ -z "$host" ]; then
    host=0.0.0.0
fi
echo "$host:$port" > /tmp/minio-standin-address
exec /opt/moto/bin/moto_server -H "$host" -p "$port"
