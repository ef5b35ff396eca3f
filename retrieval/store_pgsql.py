"""The SQL of the pgvector store (retrieval/store_pg.py): the location URL, the tables, the index DDL, filters.

Tables (schema: the connection's search_path, `public` by default):
    sslforge_collections   one row per collection: name, dim, dtype (float32 -> vector, float16 -> halfvec),
                           metric (ip), kind (flat | hnsw | ivf), params, model_fingerprint, preprocessing, info,
                           fields (every user field ever added), live (rows that searches can return)
    NAME                   id bigint identity (from 0), path, label, meta jsonb (user fields), embedding
Indexes on NAME: the vector index (hnsw: `USING hnsw (embedding vector_ip_ops) WITH (m, ef_construction)`;
ivf: `USING ivfflat ... WITH (lists)`; flat: none, exact scans), GIN on meta (jsonb_path_ops), btree on label.

User input (field names and values, path prefixes, vectors, ids) only ever reaches the server as bound
parameters; the only identifiers are the table name (checked against TABLE_NAME, then quoted) and names derived
from it, and the only literals are integers this module checked.
"""
from __future__ import annotations

import re
from dataclasses import dataclass
from urllib.parse import parse_qsl, urlencode, urlsplit, urlunsplit

from retrieval.filters import Filter
from retrieval.kinds import IndexDirError, resolve_params
from retrieval.location import display

META_TABLE = "sslforge_collections"
KEYS_TABLE = "sslforge_add_keys"  # the idempotency keys of adds, per collection
FORMAT, SCHEMA_VERSION = "sslforge-pgvector", 1  # of a collection's metadata row
TABLE_NAME = re.compile(r"[a-z_][a-z0-9_]{0,47}")
PG_KINDS = ("flat", "hnsw", "ivf")  # ivf is pgvector's IVFFlat
MAX_EF_SEARCH = 1000  # pgvector's upper bound for hnsw.ef_search
DTYPES = {"float32": "vector", "float16": "halfvec"}


class DatabaseError(IndexDirError):
    """The database store could not be reached or used (one line; never the password)."""


@dataclass(frozen=True)
class Location:
    conninfo: str  # the URL without `table`, handed to libpq (which fills in PG* variables)
    table: str
    shown: str  # the URL with the password masked, for messages

    @property
    def password(self) -> str | None:
        return urlsplit(self.conninfo).password


def parse_location(url: str) -> Location:
    """`postgresql://USER[:PASSWORD]@HOST:PORT/DB?table=NAME[&libpq options]` -> Location; DatabaseError if bad."""
    shown = display(url)
    try:
        parts = urlsplit(url)
        query = parse_qsl(parts.query, keep_blank_values=True)
    except ValueError as e:
        raise DatabaseError(f"{shown}: not a postgresql:// URL ({e})") from None
    tables = [v for k, v in query if k == "table"]
    if len(tables) != 1 or not TABLE_NAME.fullmatch(tables[0]):
        raise DatabaseError(f"{shown}: name the collection with one ?table=NAME (lower-case letters, digits and _, "
                            f"at most 48, not starting with a digit)")
    if tables[0] == META_TABLE:
        raise DatabaseError(f"{shown}: {META_TABLE} is sslforge's own table: choose another name")
    rest = urlencode([(k, v) for k, v in query if k != "table"])
    return Location(urlunsplit(parts._replace(query=rest)), tables[0], shown)


def pg_params(kind: str, count: int, dim: int, given: dict) -> dict:
    """The build and search parameters of a database collection of `kind` (the index dir's names and defaults:
    hnsw_m, ef_construction, ef_search; nlist, nprobe)."""
    if kind not in PG_KINDS:
        raise DatabaseError(f"a database collection is flat, hnsw or ivf (IVFFlat); {kind!r} is for index dirs only")
    given = {k: v for k, v in given.items() if v is not None}
    if kind == "ivf" and "train_size" in given:
        raise DatabaseError("--train-size does not apply to a database collection (IVFFlat samples the table itself)")
    params = resolve_params(kind, max(count, 1), dim, given)
    params.pop("train_size", None)
    if kind == "hnsw":
        if not 2 <= params["hnsw_m"] <= 100:
            raise DatabaseError(f"--hnsw-m must be between 2 and 100 for pgvector (got {params['hnsw_m']})")
        if not 2 * params["hnsw_m"] <= params["ef_construction"] <= 1000:
            raise DatabaseError(f"--ef-construction must be between 2 x --hnsw-m and 1000 for pgvector (got "
                                f"{params['ef_construction']})")
    check_knobs(kind, params)
    return params


def check_knobs(kind: str, knobs: dict) -> None:
    ef = knobs.get("ef_search")
    if kind == "hnsw" and ef is not None and not 1 <= ef <= MAX_EF_SEARCH:
        raise DatabaseError(f"--ef-search must be between 1 and {MAX_EF_SEARCH} for pgvector (got {ef})")
    probes = knobs.get("nprobe")
    if kind == "ivf" and probes is not None and not 1 <= probes <= 32768:
        raise DatabaseError(f"--nprobe must be between 1 and 32768 for pgvector (got {probes})")


def create_meta_table():
    from psycopg import sql

    return sql.SQL("""CREATE TABLE IF NOT EXISTS {} (
        name text PRIMARY KEY, format text NOT NULL, schema_version int NOT NULL, dim int NOT NULL,
        dtype text NOT NULL, metric text NOT NULL, kind text NOT NULL, params jsonb NOT NULL,
        model_fingerprint text, preprocessing jsonb, info jsonb NOT NULL DEFAULT '{{}}',
        fields text[] NOT NULL DEFAULT '{{}}', live bigint NOT NULL DEFAULT 0,
        created_at timestamptz NOT NULL DEFAULT now())""").format(sql.Identifier(META_TABLE))


def create_keys_table():
    from psycopg import sql

    return sql.SQL("""CREATE TABLE IF NOT EXISTS {} (
        collection text NOT NULL, key text NOT NULL, digest text NOT NULL, ids bigint[] NOT NULL,
        added_at timestamptz NOT NULL DEFAULT clock_timestamp(), PRIMARY KEY (collection, key))""").format(
        sql.Identifier(KEYS_TABLE))


def create_table(table: str, dim: int, dtype: str):
    from psycopg import sql

    return sql.SQL("""CREATE TABLE {} (
        id bigint GENERATED BY DEFAULT AS IDENTITY (MINVALUE 0 START WITH 0) PRIMARY KEY,
        path text NOT NULL, label text, meta jsonb NOT NULL DEFAULT '{{}}', embedding {}({}) NOT NULL)""").format(
        sql.Identifier(table), sql.SQL(DTYPES[dtype]), sql.Literal(int(dim)))


def create_indexes(table: str, final: str, kind: str, dtype: str, params: dict) -> list:
    """The statements that index `table` (named after `final`, the name it will have)."""
    from psycopg import sql

    t = sql.Identifier(table)
    ops = sql.SQL(f"{DTYPES[dtype]}_ip_ops")
    out = [sql.SQL("CREATE INDEX {} ON {} USING gin (meta jsonb_path_ops)").format(
               sql.Identifier(f"{final}_meta"), t),
           sql.SQL("CREATE INDEX {} ON {} (label)").format(sql.Identifier(f"{final}_label"), t)]
    if kind == "hnsw":
        out.append(sql.SQL("CREATE INDEX {} ON {} USING hnsw (embedding {}) WITH (m = {}, ef_construction = {})")
                   .format(sql.Identifier(f"{final}_embedding"), t, ops, sql.Literal(int(params["hnsw_m"])),
                           sql.Literal(int(params["ef_construction"]))))
    elif kind == "ivf":
        out.append(sql.SQL("CREATE INDEX {} ON {} USING ivfflat (embedding {}) WITH (lists = {})").format(
            sql.Identifier(f"{final}_embedding"), t, ops, sql.Literal(int(params["nlist"]))))
    return out


def where_sql(where: Filter | None, known: set[str]) -> tuple:
    """(SQL condition, parameters) of a filter; the FilterError of the index dir for a field no row has."""
    from psycopg import sql
    from psycopg.types.json import Jsonb

    from retrieval.filters import FilterError

    parts, args = [], []
    if where:
        fields = {}
        for name, value in where.equals.items():
            if name == "label":
                parts.append(sql.SQL("label = %s"))
                args.append(value)
            elif name not in known:
                raise FilterError(f"no field {name!r} in this index (fields: {', '.join(sorted(known | {'label'}))})")
            else:
                fields[name] = value
        if fields:
            parts.append(sql.SQL("meta @> %s"))
            args.append(Jsonb(fields))
        if where.path_prefix:
            parts.append(sql.SQL("starts_with(path, %s)"))
            args.append(where.path_prefix)
    cond = sql.SQL(" AND ").join(parts) if parts else sql.SQL("true")
    return cond, args
