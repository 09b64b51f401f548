"""The history schema as SQLAlchemy Core tables (GeoAlchemy2 for the geometry column).

Alembic owns the schema (migrations/versions); these declarations describe it for
queries and for Alembic's autogenerate comparisons. Partitions and SQL functions are
created by the migrations, not by ``create_all``.
"""

from __future__ import annotations

from geoalchemy2 import Geometry
from sqlalchemy import (
    REAL,
    BigInteger,
    Column,
    DateTime,
    Integer,
    MetaData,
    Table,
    Text,
)

metadata = MetaData()

pings = Table(
    "pings",
    metadata,
    Column("ts", DateTime(timezone=True), nullable=False),
    Column("driver_id", Text, nullable=False),
    Column("geom", Geometry("POINT", srid=4326, spatial_index=False), nullable=False),
    Column("geohash", Text, nullable=False),
    Column("speed_kmh", REAL),
    Column("heading", REAL),
    postgresql_partition_by="RANGE (ts)",
)

driver_minutes = Table(
    "driver_minutes",
    metadata,
    Column("minute", DateTime(timezone=True), primary_key=True),
    Column("driver_id", Text, primary_key=True),
)

minute_stats = Table(
    "minute_stats",
    metadata,
    Column("minute", DateTime(timezone=True), primary_key=True),
    Column("pings", BigInteger, nullable=False),
    Column("drivers", Integer, nullable=False),
)

sink_offsets = Table(
    "sink_offsets",
    metadata,
    Column("consumer_group", Text, primary_key=True),
    Column("topic", Text, primary_key=True),
    Column("partition", Integer, primary_key=True),
    Column("next_offset", BigInteger, nullable=False),
    Column("updated_at", DateTime(timezone=True), nullable=False),
)
