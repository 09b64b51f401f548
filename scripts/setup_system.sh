#!/usr/bin/env bash
# System packages heatreplay needs beyond Python: PostGIS for the running PostgreSQL,
# Chromium for the browser tests, docker-compose to validate the compose file.
# Installs only what is missing, only as root on Debian/Ubuntu; otherwise says what to do.
set -euo pipefail
want_browser=${1:-}

missing=()
pg_major=""
if command -v pg_lsclusters >/dev/null 2>&1; then
  pg_major=$(pg_lsclusters -h 2>/dev/null | awk 'NR==1{print $1}')
fi
pg_major=${pg_major:-15}
if [ ! -e "/usr/share/postgresql/${pg_major}/extension/postgis.control" ]; then
  missing+=("postgresql-${pg_major}-postgis-3")
fi
if [ "$want_browser" = "--test" ]; then
  command -v chromium >/dev/null 2>&1 || missing+=(chromium)
  command -v docker-compose >/dev/null 2>&1 || missing+=(docker-compose)
fi
if command -v npm >/dev/null 2>&1; then :; else missing+=(npm); fi

if [ ${#missing[@]} -eq 0 ]; then
  exit 0
fi
if [ "$(id -u)" = "0" ] && command -v apt-get >/dev/null 2>&1; then
  echo "· installing system packages: ${missing[*]}"
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -q >/dev/null
  apt-get install -y -q --no-install-recommends "${missing[@]}" >/dev/null
else
  echo "heatreplay needs these system packages: ${missing[*]}" >&2
  echo "install them (Debian: sudo apt-get install -y ${missing[*]}) and run again" >&2
  exit 1
fi
