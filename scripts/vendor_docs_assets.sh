#!/usr/bin/env bash
# Fetch the Data Docs assets of cmunext/data/docs_assets/SOURCES.md from the npm registry again (npm pack:
# the published files, unchanged). Run from the repository root; review the diff before committing.
set -euo pipefail
out=cmunext/data/docs_assets
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
cd "$work"
for p in bootstrap@4.3.1 jquery@3.7.1 popper.js@1.12.9 bootstrap-table@1.19.1 bootstrap-datepicker@1.9.0 \
         @fortawesome/fontawesome-free@6.6.0 vega@5.33.1 vega-lite@5.23.0 vega-embed@6.29.0 @forevolve/bootstrap-dark@1.1.0; do
  tgz=$(npm pack -q "$p" | tail -1); name=${tgz%.tgz}; mkdir "$name"; tar xzf "$tgz" -C "$name"
done
cd - >/dev/null
w=$work
cp "$w"/bootstrap-4.3.1/package/dist/css/bootstrap.min.css "$w"/bootstrap-4.3.1/package/dist/js/bootstrap.min.js "$out"/bootstrap/
cp "$w"/jquery-3.7.1/package/dist/jquery.min.js "$out"/jquery/
cp "$w"/popper.js-1.12.9/package/dist/umd/popper.min.js "$out"/popper/
bt="$w"/bootstrap-table-1.19.1/package/dist
cp "$bt"/bootstrap-table.min.js "$bt"/bootstrap-table.min.css "$bt"/extensions/filter-control/bootstrap-table-filter-control.min.js \
   "$bt"/extensions/filter-control/bootstrap-table-filter-control.min.css "$out"/bootstrap-table/
bd="$w"/bootstrap-datepicker-1.9.0/package/dist
cp "$bd"/css/bootstrap-datepicker.min.css "$bd"/js/bootstrap-datepicker.min.js "$out"/bootstrap-datepicker/
fa="$w"/fortawesome-fontawesome-free-6.6.0/package
cp "$fa"/css/all.min.css "$out"/fontawesome/css/
cp "$fa"/webfonts/*.woff2 "$out"/fontawesome/webfonts/
cp "$w"/vega-5.33.1/package/build/vega.min.js "$w"/vega-lite-5.23.0/package/build/vega-lite.min.js \
   "$w"/vega-embed-6.29.0/package/build/vega-embed.min.js "$out"/vega/
cp "$w"/forevolve-bootstrap-dark-1.1.0/package/dist/css/bootstrap-prefers-dark.min.css "$out"/bootstrap-dark/
echo "refreshed $out"
