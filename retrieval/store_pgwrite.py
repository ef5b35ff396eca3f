"""The writes of the database store (retrieval/store_pg.py): add rows, with an idempotency key stored in the
same transaction, and remove them by id or by filter, each in one transaction answered after COMMIT.

`PgWrites` is a base class of PgStore and uses what PgStore has: the location, `_run` (a pooled connection, a
database error as one line), `_q`, `_issued`, `refresh` and the recorded fields.
"""
from __future__ import annotations

import numpy as np

from pretrain.ground.knn import l2_normalize
from retrieval.filters import Filter, check_row_meta
from retrieval.keys import MAX_KEYS, add_digest, check_key, reused
from retrieval.kinds import IndexDirError
from retrieval.store_pgload import copy_rows
from retrieval.store_pgsql import KEYS_TABLE, META_TABLE, where_sql
from retrieval.text import check_new_rows


class PgWrites:
    """Adding and removing rows of a collection, a base class of PgStore."""

    def add(self, vectors: np.ndarray, paths: list[str], labels: list[str | None] | None = None,
            meta: list[dict] | None = None, *, key: str | None = None) -> np.ndarray:
        """Insert rows in one transaction; their ids once it committed. With an idempotency `key` seen before
        (for the same paths, labels and fields), nothing is written and the first add's ids are returned; the key
        is stored in the same transaction as the rows, so an add and its key commit together."""
        x = l2_normalize(np.asarray(vectors, dtype=np.float32))
        labels = [None] * len(paths) if labels is None else list(labels)
        meta = check_row_meta(meta, len(paths), IndexDirError)
        check_new_rows(list(paths), labels, meta, IndexDirError)
        digest = add_digest(paths, labels, meta, len(x)) if check_key(key) is not None else None
        if x.ndim != 2 or x.shape[1] != self.dim or not (len(x) == len(paths) == len(labels)) or not len(x):
            raise IndexDirError(f"add: {len(x)} vectors of shape {tuple(x.shape)[1:]}, {len(paths)} paths, "
                                f"{len(labels)} labels; the index holds dimension {self.dim}, one of each a row")
        if not np.isfinite(x).all():
            raise IndexDirError("add: the vectors hold NaN or infinite values")
        new_fields = sorted({k for m in meta for k in m})

        def write(conn):
            with conn.transaction():
                if key is not None:  # one add per key at a time, across every replica of the service
                    conn.execute("SELECT pg_advisory_xact_lock(hashtext(%s))",
                                 (f"sslforge-key:{self.loc.table}:{key}",))
                    seen = conn.execute(f"SELECT digest, ids FROM {KEYS_TABLE} WHERE collection = %s AND key = %s",
                                        (self.loc.table, key)).fetchone()
                    if seen is not None:
                        if seen[0] != digest:
                            raise reused(key)
                        return np.asarray(seen[1], dtype=np.int64), None
                ids = np.asarray(conn.execute(
                    "SELECT nextval(pg_get_serial_sequence(%s, 'id')) FROM generate_series(1, %s)",
                    (self.loc.table, len(x))).fetchall(), dtype=np.int64).ravel()
                ids.sort()
                copy_rows(conn, self.loc.table, self.dtype, ids, x, list(paths), labels, meta, False)
                fields = conn.execute(f"""UPDATE {META_TABLE} SET live = live + %s,
                    fields = ARRAY(SELECT DISTINCT f FROM unnest(fields || %s::text[]) f ORDER BY f)
                    WHERE name = %s RETURNING fields""", (len(x), new_fields, self.loc.table)).fetchone()[0]
                if key is not None:
                    conn.execute(f"INSERT INTO {KEYS_TABLE} (collection, key, digest, ids) VALUES (%s, %s, %s, %s)",
                                 (self.loc.table, key, digest, ids.tolist()))
                    conn.execute(f"""DELETE FROM {KEYS_TABLE} WHERE collection = %s AND added_at < (SELECT added_at
                        FROM {KEYS_TABLE} WHERE collection = %s ORDER BY added_at DESC OFFSET %s LIMIT 1)""",
                                 (self.loc.table, self.loc.table, MAX_KEYS - 1))
            return ids, fields
        ids, fields = self._run("adding rows", write)
        if fields is not None:
            self.fields, self._table = set(fields), None
        return ids

    def remove(self, ids: np.ndarray | list[int]) -> int:
        """Delete these rows in one transaction; how many were live. An id never issued is an error."""
        ids = np.unique(np.asarray(ids, dtype=np.int64))

        def delete(conn):
            with conn.transaction():
                issued = self._issued(conn)
                bad = ids[(ids < 0) | (ids >= issued)]
                if len(bad):
                    raise IndexDirError(f"remove: id {bad[0]} is not in the index (ids are 0..{issued - 1})")
                gone = conn.execute(self._q("DELETE FROM {t} WHERE id = ANY(%s)"), (ids.tolist(),)).rowcount
                self._count(conn, -gone)
            return gone
        gone = self._run("removing rows", delete)
        self._table = None
        return gone

    def remove_where(self, where: Filter) -> int:
        """Delete the rows that match `where` in one transaction; how many."""
        def delete(conn):
            from psycopg import sql

            cond, args = where_sql(where, self.fields)
            with conn.transaction():
                gone = conn.execute(sql.SQL("DELETE FROM {} WHERE ").format(sql.Identifier(self.loc.table)) + cond,
                                    args).rowcount
                self._count(conn, -gone)
            return gone
        self.refresh()
        gone = self._run("removing rows", delete)
        self._table = None
        return gone

    def _count(self, conn, change: int) -> None:
        if change:
            conn.execute(f"UPDATE {META_TABLE} SET live = live + %s WHERE name = %s", (change, self.loc.table))
