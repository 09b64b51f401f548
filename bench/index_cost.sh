#!/usr/bin/env bash
# Cost of index upkeep on ingest: binary COPY of 1M synthetic pings into an empty table
# with each index combination. Needs PostgreSQL + PostGIS at $PGHOST (default 127.0.0.1).
set -euo pipefail
P0="psql -q -U ${PGUSER:-postgres} -h ${PGHOST:-127.0.0.1}"
echo "machine: $(nproc) cores, $(free -g | awk '/Mem/{print $2}') GiB, $($P0 -Atc 'select version()' | cut -d, -f1)"
$P0 -c "drop database if exists hr_index_cost" -c "create database hr_index_cost"
P="$P0 -d hr_index_cost"
$P -c "create extension postgis"
$P -c "create table src as select now() - (i||' ms')::interval as ts, 'drv-'||(i%5000) as driver_id, ST_SetSRID(ST_MakePoint(3.0+random()*1.2, 6.3+random()*0.5),4326) as geom, 's14mhgs'||i%10 as geohash, 30.0::real as speed_kmh, 90.0::real as heading from generate_series(1,1000000) i"
$P -c "copy src to '/tmp/hr_index_cost.bin' with (format binary)"
for idx in none brin btree btree_incl btree_incl+drv btree_incl+gist brin+spgist brin+gist btree_incl+drv+gist; do
  $P -c "drop table if exists t" -c "create table t (like src)"
  case $idx in btree|btree+*) $P -c "create index on t (ts)";; esac
  case $idx in *btree_incl*) $P -c "create index on t (ts) include (driver_id, geohash)";; esac
  case $idx in *brin*) $P -c "create index on t using brin (ts) with (pages_per_range = 16)";; esac
  case $idx in *drv*) $P -c "create index on t (driver_id, ts)";; esac
  case $idx in *+gist*) $P -c "create index on t using gist (geom)";; esac
  case $idx in *spgist*) $P -c "create index on t using spgist (geom)";; esac
  s=$(date +%s.%N); $P -c "copy t from '/tmp/hr_index_cost.bin' with (format binary)"; e=$(date +%s.%N)
  printf '%-22s %6.2f s per 1M rows\n' "$idx" "$(echo "$e - $s" | bc)"
done
$P0 -c "drop database hr_index_cost"
