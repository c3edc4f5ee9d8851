#!/bin/sh
# As grafana/grafana's /run.sh: the image's entrypoint, which a wrapper may exec after its own set-up.
exec python3 /usr/share/grafana/grafana-standin.py "$@"
