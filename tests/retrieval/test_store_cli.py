"""The CLI on a PostgreSQL collection (a real server): build, search, eval, classify, remove, dedup through a
postgresql:// URL or $SSLFORGE_INDEX; `index copy` both ways keeps ids, fields and vectors; credentials are never
printed."""
from __future__ import annotations

import numpy as np
import pytest
from retrieval_helpers import brute_force, clustered

from pretrain.cli import main
from retrieval import write_embeddings
from retrieval.filters import Filter
from retrieval.store import build_store, open_store

DIM = 16


@pytest.fixture
def emb(tmp_path):
    x, groups = clustered(600, DIM, seed=1)
    x[7] = x[3]  # one exact duplicate pair for dedup
    return write_embeddings(tmp_path / "emb", x, [f"g{g}/{i}.jpg" for i, g in enumerate(groups)],
                            [f"c{g % 4}" for g in groups], model_fingerprint="sha256:m1", root="/data")


def test_the_index_commands_on_a_database(emb, pg_url, tmp_path, capsys, monkeypatch):
    url = pg_url()
    assert main(["index", "build", "--embeddings", str(emb), "--out", url, "--kind", "hnsw", "--quiet"]) == 0
    out = capsys.readouterr().out
    assert "hnsw index of 600 vectors (dim 16) built in PostgreSQL" in out and ":***@" in out
    monkeypatch.setenv("SSLFORGE_INDEX", url)  # the default of --index
    assert main(["search", "--query-embeddings", str(emb), "--limit", "2", "-k", "3"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[0].startswith("query g") and lines[1].split()[0] == "1." and float(lines[1].split()[1]) > 0.999
    assert main(["index", "eval", "--sample", "100"]) == 0
    out = capsys.readouterr().out
    recall = float(next(ln for ln in out.splitlines() if "recall@10" in ln).split()[-1])
    assert recall >= 0.95
    assert main(["index", "classify", "--queries", str(emb), "-k", "5"]) == 0
    assert "top-1" in capsys.readouterr().out
    out_csv = tmp_path / "dups.csv"
    assert main(["dedup", "--threshold", "0.9999", "--out", str(out_csv)]) == 0
    assert "3," in out_csv.read_text() and "7," in out_csv.read_text()
    capsys.readouterr()
    assert main(["index", "remove", "--where", "label=c1"]) == 0
    removed = int(capsys.readouterr().out.split()[1].replace(",", ""))
    store = open_store(url)
    assert removed > 0 and len(store) == 600 - removed
    assert store.preprocessing["backend"] == "numpy" and store.model_fingerprint == "sha256:m1"
    assert not (store.search(clustered(5, DIM, seed=2)[0], 10, where=Filter({"label": "c1"}))[1] >= 0).any()
    store.close()
    assert main(["index", "compact"]) == 2
    assert "no change log" in capsys.readouterr().err


def test_credentials_never_appear_in_errors(pg_server, pg_url, emb, capsys):
    bad = pg_server.url(table="nothing").replace(pg_server.password, "wrong-secret-42")
    assert main(["search", "--index", bad, "--query-embeddings", str(emb)]) == 2
    err = capsys.readouterr().err
    assert "wrong-secret-42" not in err and "sslforge:***@" in err and len(err.strip().splitlines()) == 1
    assert main(["search", "--index", pg_server.url(table="nothing"), "--query-embeddings", str(emb)]) == 2
    err = capsys.readouterr().err
    assert "no collection 'nothing'" in err and pg_server.password not in err
    assert main(["index", "build", "--embeddings", str(emb), "--out", pg_url().split("?")[0]]) == 2
    assert "?table=NAME" in capsys.readouterr().err
    import psycopg

    with psycopg.connect(pg_server.url(), autocommit=True) as conn:
        conn.execute("CREATE TABLE IF NOT EXISTS someone_elses (x int)")
    assert main(["index", "build", "--embeddings", str(emb), "--out", pg_server.url(table="someone_elses")]) == 2
    assert "is not an sslforge collection" in capsys.readouterr().err


@pytest.mark.parametrize("dtype", ["float32", "float16"])
def test_copy_both_ways_keeps_ids_fields_and_vectors(dtype, pg_url, tmp_path, capsys):
    x, groups = clustered(300, DIM, seed=4)
    paths, labels = [f"p/{i}.jpg" for i in range(300)], [f"c{g % 3}" for g in groups]
    meta = [{"shop": str(i % 5)} for i in range(300)]
    src = build_store(str(tmp_path / "a"), x, paths, labels, kind="flat", model_fingerprint="m", meta=meta,
                      info={"root": "/imgs"}, progress=False)
    src.add(x[:2] * -1, ["n0.jpg", "n1.jpg"], [None, "z"], [{"shop": "9"}, {}])
    src.remove([4, 301])  # the dir keeps their ids unused
    url, back = pg_url(), str(tmp_path / "b")
    assert main(["index", "copy", str(tmp_path / "a"), url, "--dtype", dtype, "--quiet"]) == 0
    assert main(["index", "copy", url, back, "--quiet"]) == 0
    assert "ids kept" in capsys.readouterr().out
    tol = 1e-6 if dtype == "float32" else 2e-3
    for loc in (url, back):
        dst = open_store(loc)
        assert dst.ntotal == 302 and set(dst.removed.tolist()) == {4, 301} and dst.model_fingerprint == "m"
        live = [i for i in range(302) if i not in (4, 301)]
        assert [dst.paths[i] for i in live] == [src.paths[i] for i in live]
        assert [dst.labels[i] for i in live] == [src.labels[i] for i in live]
        assert [dst.meta[i] for i in live] == [src.meta[i] for i in live] and dst.info["root"] == "/imgs"
        np.testing.assert_allclose(dst.vectors()[live], src.vectors()[live], atol=tol)
        q = clustered(10, DIM, seed=8)[0]
        _, ref = brute_force(src.vectors()[live], q, 5)
        assert (dst.search(q, 5)[1] == np.array(live)[ref]).mean() >= (1.0 if dtype == "float32" else 0.9)
        assert dst.add(x[:1], ["next.jpg"])[0] >= 302  # ids continue after the copied ones
        dst.close()


def test_the_service_role_needs_only_row_privileges(pg_server, pg_url, emb):
    """What docs/stores.md grants a service's role is enough to search, add and remove, and not enough to build."""
    import psycopg
    from psycopg import sql

    from retrieval.store_pgsql import DatabaseError

    url = pg_url()
    table = url.split("table=")[1]
    build_store(url, np.eye(DIM, dtype=np.float32), [f"{i}.jpg" for i in range(DIM)], [None] * DIM, kind="hnsw",
                model_fingerprint="m", progress=False).close()
    role = f"svc_{table}"
    with psycopg.connect(pg_server.url(), autocommit=True) as conn:
        conn.execute(sql.SQL("CREATE ROLE {} LOGIN PASSWORD {}").format(sql.Identifier(role), sql.Literal("pw-123")))
        grant = "GRANT SELECT, INSERT, UPDATE, DELETE ON {}, sslforge_collections, sslforge_add_keys TO {}"
        conn.execute(sql.SQL(grant).format(
            sql.Identifier(table), sql.Identifier(role)))
        conn.execute(sql.SQL("GRANT USAGE, SELECT ON SEQUENCE {} TO {}").format(
            sql.Identifier(f"{table}_id_seq"), sql.Identifier(role)))
    service = url.replace(f"sslforge:{pg_server.password}@", f"{role}:pw-123@")
    store = open_store(service)
    new = store.add(np.ones((1, DIM), np.float32), ["new.jpg"])
    assert store.search(np.ones((1, DIM), np.float32), 1)[1][0, 0] == new[0]
    assert store.remove(new) == 1 and len(store) == DIM
    store.close()
    with pytest.raises(DatabaseError, match="permission denied"):
        build_store(service.replace(f"table={table}", f"table={table}_b"), np.eye(DIM, dtype=np.float32),
                    ["a"] * DIM, [None] * DIM,
                    kind="flat", model_fingerprint="m", progress=False)
