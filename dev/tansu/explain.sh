#!/usr/bin/env bash
# Prints sqlite's query plan for every statement on tansu's hot paths (produce, fetch, list
# offsets, offset commit/fetch, metadata), against a store of the patched build:
#
#   dev/tansu/explain.sh [.stack/kafka/tansu.db]      (needs the sqlite3 CLI: apt install sqlite3)
#
# Every line should read SEARCH ... USING INDEX; a SCAN of record or header is a fetch or
# produce whose cost grows with the log. The result is kept in query-plans.txt.
set -euo pipefail
HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
DB="${1:-$HERE/../../.stack/kafka/tansu.db}"
SQL="${LOCUS_CACHE:-$HOME/.cache/locus}/build/tansu-0.6.0/tansu-storage/src/sql"
[[ -d $SQL ]] || { echo "no patched tansu-storage sources at $SQL: run dev/tansu/build.sh" >&2; exit 1; }
for f in record_insert header_insert watermark_select_no_update watermark_update \
  producer_epoch_current_for_producer watermark_select record_fetch_from header_fetch_range \
  list_earliest_offset list_latest_offset_uncommitted list_latest_offset_timestamp \
  consumer_offset_insert consumer_offset_select topic_select_name topition_select; do
  echo "== $f.sql"
  sqlite3 "$DB" "EXPLAIN QUERY PLAN $(grep -v '^--' "$SQL/$f.sql" | sed 's/\$\([0-9]*\)/?\1/g')" |
    sed 's/^/   /'
done
