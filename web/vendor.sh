#!/bin/sh
# Copy the Leaflet and leaflet.heat dist files the page loads into vendor/.
# The page must never reach a CDN at run time (the service often runs offline),
# so the browser gets these from our own server at /vendor/...
# Run after `npm ci` (also run by npm's postinstall hook); safe to run twice.
set -eu
cd "$(dirname "$0")"
if [ ! -f node_modules/leaflet/dist/leaflet.js ] || [ ! -f node_modules/leaflet.heat/dist/leaflet-heat.js ]; then
    echo "vendor.sh: node_modules missing; run 'npm ci' in web/ first" >&2
    exit 1
fi
rm -rf vendor
mkdir -p vendor/images
cp node_modules/leaflet/dist/leaflet.js node_modules/leaflet/dist/leaflet.css vendor/
cp node_modules/leaflet/dist/images/*.png vendor/images/
cp node_modules/leaflet.heat/dist/leaflet-heat.js vendor/
echo "vendor.sh: copied leaflet $(node -p "require('./node_modules/leaflet/package.json').version" 2>/dev/null || echo '?') and leaflet.heat into web/vendor/"
