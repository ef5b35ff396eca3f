"""Building a database collection (`sslforge index build --out postgresql://...`, `index copy`): binary COPY of the
rows into a new table, its indexes, then swapped in for the old one, all in one transaction (a killed build leaves
the previous collection as it was). See retrieval/store_pg.py for the store itself."""
from __future__ import annotations

import time
from datetime import UTC, datetime

import numpy as np

from pretrain.ground.knn import l2_normalize
from retrieval.filters import check_row_meta
from retrieval.kinds import IndexDirError
from retrieval.store_pgsql import (
    DTYPES,
    FORMAT,
    KEYS_TABLE,
    META_TABLE,
    SCHEMA_VERSION,
    DatabaseError,
    create_indexes,
    create_keys_table,
    create_meta_table,
    create_table,
    parse_location,
    pg_params,
)

COPY_ROWS = 50_000  # rows normalised at a time


def create(cls, url: str, *, dim: int, kind: str, params: dict, model_fingerprint: str | None,
           dtype: str = "float32", info: dict | None = None, preprocessing: dict | None = None,
           ids: np.ndarray | None = None, total: int | None = None, vectors: np.ndarray, paths: list[str],
           labels: list[str | None], meta: list[dict] | None = None, progress: bool = False) -> tuple:
    """Build the collection from these rows in one transaction, replacing any of the same name as a whole (a
    killed build leaves the previous one): COPY (binary) into a new table, index it, swap it in.
    `ids`: keep these row ids (a copy of another store; default 0..n-1); `total`: ids issued so far (default:
    the largest + 1), so that adds continue after them. `cls`: PgStore (its connection helpers); returns the
    collection's metadata row, its location and the pool, for PgStore."""
    import psycopg
    from psycopg import sql
    from psycopg.types.json import Jsonb

    loc = parse_location(url)
    if dtype not in DTYPES:
        raise DatabaseError(f"--dtype must be one of {', '.join(DTYPES)} (got {dtype!r})")
    params = pg_params(kind, len(paths), dim, params)
    meta = check_row_meta(meta, len(paths), IndexDirError)
    ids = np.arange(len(paths), dtype=np.int64) if ids is None else np.asarray(ids, dtype=np.int64)
    if not (len(vectors) == len(paths) == len(labels) == len(ids)):
        raise IndexDirError(f"{len(vectors)} vectors, {len(paths)} paths, {len(labels)} labels, {len(ids)} ids: "
                            f"one each per row")
    pool = cls._pool(loc, 2)
    build = f"{loc.table}__build"
    start = time.perf_counter()
    try:
        with pool.connection() as conn, conn.transaction():
            conn.execute(create_meta_table())
            conn.execute(create_keys_table())
            conn.execute(f"DELETE FROM {KEYS_TABLE} WHERE collection = %s", (loc.table,))  # a new build: new ids
            conn.execute("SELECT pg_advisory_xact_lock(hashtext(%s))", (f"sslforge:{loc.table}",))
            foreign = conn.execute(f"SELECT to_regclass(%s) IS NOT NULL AND NOT EXISTS (SELECT 1 FROM {META_TABLE} "
                                   f"WHERE name = %s)", (loc.table, loc.table)).fetchone()[0]
            if foreign:  # never replace a table sslforge did not make
                raise DatabaseError(f"{loc.shown}: a table {loc.table!r} exists and is not an sslforge collection: "
                                    f"choose another ?table= name")
            conn.execute(sql.SQL("DROP TABLE IF EXISTS {}").format(sql.Identifier(build)))
            conn.execute(create_table(build, dim, dtype))
            copy_rows(conn, build, dtype, ids, vectors, paths, labels, meta, progress)
            loaded = time.perf_counter()
            issued = max(int(total or 0), int(ids.max()) + 1 if len(ids) else 0)
            if issued:
                conn.execute("SELECT setval(pg_get_serial_sequence(%s, 'id'), %s, true)", (build, issued - 1))
            for i, statement in enumerate(create_indexes(build, loc.table + "_new", kind, dtype, params)):
                if progress and i == 2:
                    print(f"building the {kind} index of {len(ids):,} rows in PostgreSQL", flush=True)
                conn.execute(statement)
            indexed = time.perf_counter()
            conn.execute(sql.SQL("DROP TABLE IF EXISTS {}").format(sql.Identifier(loc.table)))
            conn.execute(sql.SQL("ALTER TABLE {} RENAME TO {}").format(sql.Identifier(build),
                                                                       sql.Identifier(loc.table)))
            seq = conn.execute("SELECT pg_get_serial_sequence(%s, 'id')", (loc.table,)).fetchone()[0]
            conn.execute(sql.SQL("ALTER SEQUENCE {} RENAME TO {}").format(
                sql.Identifier(*seq.split(".")), sql.Identifier(f"{loc.table}_id_seq")))
            for suffix in ("meta", "label", "embedding"):
                conn.execute(sql.SQL("ALTER INDEX IF EXISTS {} RENAME TO {}").format(
                    sql.Identifier(f"{loc.table}_new_{suffix}"), sql.Identifier(f"{loc.table}_{suffix}")))
            info = {**(info or {}), "built_at": datetime.now(UTC).isoformat(timespec="seconds"),
                    "built_on": "postgresql", "load_seconds": round(loaded - start, 3),
                    "build_seconds": round(indexed - loaded, 3)}
            fields = sorted({k for m in meta for k in m})
            conn.execute(f"""INSERT INTO {META_TABLE} (name, format, schema_version, dim, dtype, metric, kind,
                params, model_fingerprint, preprocessing, info, fields, live)
                VALUES (%s, %s, %s, %s, %s, 'ip', %s, %s, %s, %s, %s, %s, %s)
                ON CONFLICT (name) DO UPDATE SET format = EXCLUDED.format, schema_version = EXCLUDED.schema_version,
                dim = EXCLUDED.dim, dtype = EXCLUDED.dtype, metric = EXCLUDED.metric, kind = EXCLUDED.kind,
                params = EXCLUDED.params, model_fingerprint = EXCLUDED.model_fingerprint,
                preprocessing = EXCLUDED.preprocessing, info = EXCLUDED.info, fields = EXCLUDED.fields,
                live = EXCLUDED.live, created_at = now()""",
                         (loc.table, FORMAT, SCHEMA_VERSION, dim, dtype, kind, Jsonb(params), model_fingerprint,
                          Jsonb(preprocessing) if preprocessing is not None else None, Jsonb(info), fields,
                          len(ids)))
        with pool.connection() as conn:
            row = cls._read_row(conn, loc)
    except psycopg.Error as e:
        pool.close()
        raise cls._fail(loc, e, "building the collection failed") from None
    except BaseException:
        pool.close()
        raise
    return row, loc, pool

def copy_rows(conn, table: str, dtype: str, ids: np.ndarray, vectors: np.ndarray, paths: list[str],
              labels: list[str | None], meta: list[dict], progress: bool) -> None:
    """Binary COPY of the rows into `table` (vectors normalised here)."""
    from pgvector import HalfVector
    from psycopg import sql
    from psycopg.types.json import Jsonb
    from tqdm.auto import tqdm

    bar = tqdm(total=len(ids), desc="COPY into PostgreSQL", unit="row", disable=not progress, leave=False)
    statement = sql.SQL("COPY {} (id, path, label, meta, embedding) FROM STDIN (FORMAT BINARY)").format(
        sql.Identifier(table))
    with conn.cursor().copy(statement) as copy:
        copy.set_types(["int8", "text", "text", "jsonb", DTYPES[dtype]])
        for start in range(0, len(ids), COPY_ROWS):
            block = l2_normalize(np.asarray(vectors[start:start + COPY_ROWS], dtype=np.float32))
            for j, v in enumerate(block):
                r = start + j
                copy.write_row((int(ids[r]), paths[r], labels[r], Jsonb(meta[r]),
                                HalfVector(v) if dtype == "float16" else v))
            bar.update(len(block))
    bar.close()
