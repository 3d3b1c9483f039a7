#!/bin/sh
# Fetch the chart libraries the portal serves from hybridhub/web/static/ (no CDN): vega, vega-lite,
# vega-embed, pinned to the versions in hybridhub/web/static/VENDORED.txt.
set -eu
cd "$(dirname "$0")/.."
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
(cd "$tmp" && npm pack --silent vega@5.33.1 vega-lite@5.23.0 vega-embed@6.29.0 >/dev/null)
for pkg in vega-5.33.1 vega-lite-5.23.0 vega-embed-6.29.0; do
  mkdir -p "$tmp/$pkg" && tar xzf "$tmp/$pkg.tgz" -C "$tmp/$pkg"
done
cp "$tmp/vega-5.33.1/package/build/vega.min.js" hybridhub/web/static/
cp "$tmp/vega-lite-5.23.0/package/build/vega-lite.min.js" hybridhub/web/static/
cp "$tmp/vega-embed-6.29.0/package/build/vega-embed.min.js" hybridhub/web/static/
cp "$tmp/vega-lite-5.23.0/package/LICENSE" hybridhub/web/static/LICENSE.vega-lite.txt
cp "$tmp/vega-embed-6.29.0/package/LICENSE" hybridhub/web/static/LICENSE.vega-embed.txt
