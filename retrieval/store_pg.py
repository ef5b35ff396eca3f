"""The database store: a collection as a PostgreSQL table with pgvector, behind the Store interface
(retrieval/store.py); its SQL is retrieval/store_pgsql.py, its writes (add, remove) retrieval/store_pgwrite.py.

    PgStore.create(url, dim=..., kind="hnsw", ...) then .load(ids, vectors, paths, labels, meta)  # `index build`
    store = PgStore.open(url)                 # checks the table and its metadata row
    store.add(...) / store.remove(...)        # one transaction each, answered after COMMIT

Similarity is cosine, as in an index dir: vectors are L2-normalised before they are stored or searched and
compared by inner product (`<#>`, pgvector's negative inner product). Searches run `ORDER BY embedding <#> q
LIMIT k` with `hnsw.ef_search` (at least k, as in Faiss; or `ivfflat.probes`); with a filter (or k past
pgvector's ef_search bound) also `*.iterative_scan = relaxed_order`, so the index keeps walking until k matching rows
are found, and when it still returns fewer while more rows match (a filter that matches very few rows, past
`hnsw.max_scan_tuples`; IVF lists holding fewer than k), the same query runs once more without the vector index:
exact among the matching rows, found through the GIN and btree indexes. Every connection comes from one pool per process
(psycopg_pool), so each service worker has its own.
"""
from __future__ import annotations

from typing import Any

import numpy as np

from pretrain.ground.knn import l2_normalize
from retrieval.filters import Filter
from retrieval.kinds import check_fingerprint, check_query, check_search_knobs
from retrieval.store_pgload import create
from retrieval.store_pgsql import (
    DTYPES,
    FORMAT,
    MAX_EF_SEARCH,
    META_TABLE,
    SCHEMA_VERSION,
    DatabaseError,
    Location,
    check_knobs,
    parse_location,
    where_sql,
)
from retrieval.store_pgwrite import PgWrites


def _psycopg():
    try:
        import psycopg
        import psycopg_pool  # noqa: F401
        from pgvector.psycopg import register_vector  # noqa: F401
    except ImportError:
        raise DatabaseError("a postgresql:// collection needs psycopg, psycopg_pool and pgvector: "
                            "pip install 'sslforge[database]'") from None
    return psycopg


class PgStore(PgWrites):
    """One collection (table) of one database; see the module docstring."""

    def __init__(self, loc: Location, pool, row: dict):
        self.loc, self.pool = loc, pool
        self._set(row)
        self._table: tuple | None = None  # (paths, labels, meta, removed, ntotal) as last read

    def _set(self, row: dict) -> None:
        self.dim, self.dtype, self.kind = int(row["dim"]), row["dtype"], row["kind"]
        self.params, self.model_fingerprint = dict(row["params"]), row["model_fingerprint"]
        self.info, self.fields = dict(row["info"] or {}), set(row["fields"])
        self.preprocessing = row.get("preprocessing")

    # ---- connecting -------------------------------------------------------------------------------------
    @staticmethod
    def _fail(loc: Location, e: Exception, what: str) -> DatabaseError:
        text = " ".join(str(e).split())
        if loc.password:
            text = text.replace(loc.password, "***")
        return DatabaseError(f"{loc.shown}: {what}: {text[:300]}")

    @classmethod
    def _pool(cls, loc: Location, size: int):
        psycopg = _psycopg()
        from pgvector.psycopg import register_vector
        from psycopg_pool import ConnectionPool

        try:  # one direct connection first: a wrong host or password is one line at once, not a pool timeout
            with psycopg.connect(loc.conninfo, connect_timeout=10, autocommit=True) as conn:
                if conn.execute("SELECT 1 FROM pg_extension WHERE extname = 'vector'").fetchone() is None:
                    raise DatabaseError(f"{loc.shown}: the database has no pgvector: run `CREATE EXTENSION vector` "
                                        f"in it (as its owner), or use `sslforge store serve-local DIR`")
        except psycopg.Error as e:
            raise cls._fail(loc, e, "cannot connect") from None
        pool = ConnectionPool(loc.conninfo, min_size=1, max_size=max(1, size), configure=register_vector,
                              kwargs={"connect_timeout": 10}, open=True, timeout=30, name="sslforge")
        return pool

    @classmethod
    def _read_row(cls, conn, loc: Location) -> dict | None:
        from psycopg.rows import dict_row

        exists = conn.execute("SELECT to_regclass(%s) IS NOT NULL", (META_TABLE,)).fetchone()[0]
        if not exists:
            return None
        with conn.cursor(row_factory=dict_row) as cur:
            return cur.execute(f"SELECT * FROM {META_TABLE} WHERE name = %s", (loc.table,)).fetchone()

    @classmethod
    def open(cls, url: str, pool_size: int = 4) -> PgStore:
        loc = parse_location(url)
        pool = cls._pool(loc, pool_size)
        try:
            with pool.connection() as conn:
                row = cls._read_row(conn, loc)
                if row is None or conn.execute("SELECT to_regclass(%s)", (loc.table,)).fetchone()[0] is None:
                    raise DatabaseError(f"{loc.shown}: no collection {loc.table!r} in this database: build one with "
                                        f"`sslforge index build --embeddings EMB_DIR --out '{loc.shown}'` or copy "
                                        f"an index dir with `sslforge index copy`")
            if row["format"] != FORMAT or row["schema_version"] != SCHEMA_VERSION or row["dtype"] not in DTYPES:
                raise DatabaseError(f"{loc.shown}: the collection is of format {row['format']} version "
                                    f"{row['schema_version']}; this sslforge reads {FORMAT} {SCHEMA_VERSION}: "
                                    f"rebuild it")
        except _psycopg().Error as e:
            pool.close()
            raise cls._fail(loc, e, "reading the collection") from None
        except BaseException:
            pool.close()
            raise
        return cls(loc, pool, row)

    @classmethod
    def create(cls, url: str, **build) -> PgStore:
        """Build the collection from rows, replacing any of the same name as a whole: see store_pgload.create."""
        row, loc, pool = create(cls, url, **build)
        return cls(loc, pool, row)

    # ---- what the collection is -------------------------------------------------------------------------
    @property
    def location(self) -> str:
        return self.loc.shown

    path = None  # not a folder (callers that show a dir's path show `location`)

    def _q(self, text: str):
        """SQL with {t} the collection's table, quoted as an identifier (its name was checked by parse_location)."""
        from psycopg import sql

        return sql.SQL(text).format(t=sql.Identifier(self.loc.table))

    def _run(self, what: str, fn, *args):
        """`fn(conn, *args)` on a pooled connection; a database error becomes one DatabaseError line."""
        psycopg = _psycopg()
        from psycopg_pool import PoolTimeout

        try:
            with self.pool.connection() as conn:
                return fn(conn, *args)
        except psycopg.errors.ReadOnlySqlTransaction:
            raise DatabaseError(f"{self.location}: {what}: this server is a read-only replica; send changes to the "
                                f"primary") from None
        except (psycopg.Error, PoolTimeout) as e:
            raise self._fail(self.loc, e, what) from None

    def __len__(self) -> int:
        return int(self._run("counting rows", lambda c: c.execute(
            f"SELECT live FROM {META_TABLE} WHERE name = %s", (self.loc.table,)).fetchone()[0]))

    def check_model(self, fingerprint: str | None) -> None:
        check_fingerprint(self.model_fingerprint, fingerprint, self.location)

    def _issued(self, conn) -> int:
        """Ids ever issued (0 .. n-1), from the table's identity sequence."""
        seq = conn.execute("SELECT pg_get_serial_sequence(%s, 'id')", (self.loc.table,)).fetchone()[0]
        from psycopg import sql

        last, called = conn.execute(sql.SQL("SELECT last_value, is_called FROM {}").format(
            sql.Identifier(*seq.split(".")))).fetchone()
        return int(last) + 1 if called else int(last)

    # ---- every row (whole-collection work) ----------------------------------------------------------------
    def _rows(self) -> tuple:
        if self._table is None:
            def read(conn):
                issued = self._issued(conn)
                rows = conn.execute(self._q("SELECT id, path, label, meta FROM {t} ORDER BY id")).fetchall()
                return issued, rows
            issued, rows = self._run("reading the rows", read)
            n = max([issued] + [r[0] + 1 for r in rows[-1:]])
            paths, labels, meta = [""] * n, [None] * n, [{} for _ in range(n)]
            live = np.zeros(n, bool)
            for i, p, lab, m in rows:
                paths[i], labels[i], meta[i], live[i] = p, lab, m, True
            self._table = (paths, labels, meta, np.flatnonzero(~live).astype(np.int64), n)
        return self._table

    paths = property(lambda self: self._rows()[0])
    labels = property(lambda self: self._rows()[1])
    meta = property(lambda self: self._rows()[2])
    removed = property(lambda self: self._rows()[3])
    ntotal = property(lambda self: self._rows()[4])

    @property
    def classes(self) -> list[str]:
        live = np.ones(self.ntotal, bool)
        live[self.removed] = False
        return sorted({lab for lab, ok in zip(self.labels, live) if ok and lab is not None})

    def vectors(self) -> np.ndarray:
        n = self.ntotal

        def read(conn):
            x = np.zeros((n, self.dim), np.float32)
            with conn.cursor(binary=True) as cur:
                cur.execute(self._q("SELECT id, embedding::vector FROM {t} WHERE id < %s"), (n,))
                for i, v in cur:
                    x[i] = v.to_numpy()
            return x
        return self._run("reading the vectors", read)

    def refresh(self) -> int:
        """Forget the rows read for whole-collection work and the recorded fields; the live row count."""
        self._table = None
        row = self._run("reading the collection", self._read_row, self.loc)
        if row is None:
            raise DatabaseError(f"{self.location}: the collection was dropped")
        self._set(row)
        return len(self)

    def sample_paths(self, count: int) -> list[str]:
        return [r[0] for r in self._run("reading paths", lambda c: c.execute(
            self._q("SELECT path FROM {t} ORDER BY id LIMIT %s"), (count,)).fetchall())]

    def size_bytes(self) -> int:
        return int(self._run("measuring the table", lambda c: c.execute(
            "SELECT pg_total_relation_size(%s)", (self.loc.table,)).fetchone()[0]))

    def close(self) -> None:
        self.pool.close()

    # ---- search -----------------------------------------------------------------------------------------
    def search(self, queries: np.ndarray, k: int = 10, where: Filter | None = None, **knobs: Any):
        """(scores (Q, k), ids (Q, k), metadata) like `Index.search`: metadata[q][j] is {"id", "path", "label",
        "score", **user fields} or None past the matching rows."""
        scores, ids, rows = self._search(queries, k, where, knobs, with_rows=True)
        return scores, ids, rows

    def search_ids(self, queries: np.ndarray, k: int = 10, where: Filter | None = None, **knobs: Any):
        scores, ids, _ = self._search(queries, k, where, knobs, with_rows=False)
        return scores, ids

    def _search(self, queries, k: int, where: Filter | None, knobs: dict, with_rows: bool):
        from psycopg import sql

        from retrieval.filters import FilterError

        q = l2_normalize(check_query(queries, k, self.dim, self.location))
        knobs = check_search_knobs(knobs, self.kind)
        check_knobs(self.kind, knobs)
        p = {**self.params, **knobs}
        try:
            cond, args = where_sql(where, self.fields)
        except FilterError:
            self.refresh()  # another process may have added rows with this field
            cond, args = where_sql(where, self.fields)
        dist = sql.SQL("embedding <#> %s::{}").format(sql.SQL(DTYPES[self.dtype]))
        cols = sql.SQL("id, path, label, meta" if with_rows else "id, NULL, NULL, NULL")
        query = sql.SQL("SELECT {}, {} AS d FROM {} WHERE {} ORDER BY d LIMIT %s").format(
            cols, dist, sql.Identifier(self.loc.table), cond)
        # more rows than the candidate list holds (k > ef_search): widen it, as Faiss does, and past pgvector's
        # bound keep walking (iterative scan), as with a filter
        walk = bool(where) or k > MAX_EF_SEARCH
        settings = []
        if self.kind == "hnsw":
            settings = [("hnsw.ef_search", min(MAX_EF_SEARCH, max(p["ef_search"], k)))]
            settings += [("hnsw.iterative_scan", "relaxed_order")] if walk else []
        elif self.kind == "ivf":
            settings = [("ivfflat.probes", p["nprobe"])] + ([("ivfflat.iterative_scan", "relaxed_order")]
                                                            if walk else [])
        live: list[int] = []

        def short(conn, rows: list) -> bool:
            """The index returned fewer than k rows where more match (a filter matching few rows, past
            hnsw.max_scan_tuples; or IVF's probed lists holding fewer than k rows)."""
            if len(rows) >= k or self.kind == "flat":
                return False
            if where:
                return True
            if not live:
                live.append(conn.execute(f"SELECT live FROM {META_TABLE} WHERE name = %s",
                                         (self.loc.table,)).fetchone()[0])
            return len(rows) < live[0]

        def run(conn):
            found = []
            with conn.transaction():
                for name, value in settings:
                    conn.execute("SELECT set_config(%s, %s, true)", (name, str(value)))
                for vec in q:
                    rows = conn.execute(query, [vec, *args, k]).fetchall()
                    if short(conn, rows):  # the same query without the vector index: exact among the matches
                        conn.execute("SELECT set_config('enable_indexscan', 'off', true)")
                        rows = conn.execute(query, [vec, *args, k]).fetchall()
                        conn.execute("SELECT set_config('enable_indexscan', 'on', true)")
                    found.append(rows)
            return found
        found = self._run("searching", run)
        scores = np.full((len(q), k), -np.inf, np.float32)
        ids = np.full((len(q), k), -1, np.int64)
        hits = []
        for r, rows in enumerate(found):
            rows = sorted(rows, key=lambda row: (row[4], row[0]))  # relaxed order: sort by distance again
            scores[r, :len(rows)] = [-row[4] for row in rows]
            ids[r, :len(rows)] = [row[0] for row in rows]
            hits.append([{**(row[3] or {}), "id": int(row[0]), "path": row[1], "label": row[2],
                          "score": float(-row[4])} for row in rows] + [None] * (k - len(rows)))
        return scores, ids, hits

