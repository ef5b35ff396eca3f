"""Index kinds as objects: a new kind is one class and one `register` line (here a toy kind that lives in this test
only, not in the package), and every registered kind has the whole interface with defaults that pass its checks."""
import argparse

import numpy as np
import pytest
from retrieval_helpers import brute_force, clustered, collection

import retrieval.kinds as kinds
from retrieval import Index, IndexDirError
from retrieval.cli import INDEX_ACTIONS, add_commands
from retrieval.filters import Filter
from retrieval.kinds import FaissKind, Kind, kind_of, register, resolve_params


class FlatIP(FaissKind):
    """A toy kind: Faiss's exact IndexFlatIP, which has no parameters (registered by this test only)."""

    name = "flatip"
    summary = "Faiss's exact IndexFlatIP"
    faiss_types = ("IndexFlatIP",)

    def new_faiss_index(self, faiss, dim, p):
        return faiss.IndexFlatIP(dim)

    def search_cpu(self, faiss, index, q, k, p, extra):
        return index.faiss_index.search(q, k, params=faiss.SearchParameters(**extra))


@pytest.fixture
def toy_kind():
    """FlatIP registered as a kind; taken out of the registry again after the test."""
    register(FlatIP)
    try:
        yield kinds.REGISTRY["flatip"]
    finally:
        del kinds.REGISTRY["flatip"]


def build_help() -> tuple[argparse.ArgumentParser, str]:
    """`sslforge index build`'s parser and its help on one line."""
    sub = argparse.ArgumentParser(prog="sslforge").add_subparsers(dest="command")
    add_commands(sub)
    build = getattr(sub.choices["index"], INDEX_ACTIONS).choices["build"]
    return build, " ".join(build.format_help().split())


def test_a_kind_registered_outside_the_package_is_built_searched_saved_and_loaded(toy_kind, tmp_path) -> None:
    x, paths, labels = collection(1500)
    q = clustered(30, seed=4)[0]
    index = Index.build(x, paths, labels, kind="flatip", progress=False,
                        meta=[{"half": str(i % 2)} for i in range(len(x))])
    assert index.kind == "flatip" and index.kind_obj is toy_kind and index.params == {}
    scores, ids = index.search_ids(q, 10)
    ref_scores, ref_ids = brute_force(x, q, 10)
    np.testing.assert_array_equal(ids, ref_ids)
    np.testing.assert_allclose(scores, ref_scores, atol=1e-5)

    flat = Index.build(x, paths, labels, kind="flat", meta=index.meta)
    where = Filter({"half": "1", "label": "c3"})
    np.testing.assert_array_equal(index.search_ids(q, 5, where=where)[1], flat.search_ids(q, 5, where=where)[1])
    with pytest.raises(IndexDirError, match="search option 'nprobe' does not apply to a flatip index"):
        index.search_ids(q, 5, nprobe=3)
    with pytest.raises(IndexDirError, match=r"--nlist does not apply to a flatip index \(its options: none\)"):
        Index.build(x, paths, labels, kind="flatip", nlist=4)

    index.remove([int(ids[0, 0])])
    index.add(x[:3], ["new/0", "new/1", "new/2"])
    back = Index.load(index.save(tmp_path / "toy"))
    assert (tmp_path / "toy" / "index.faiss").is_file() and back.kind == "flatip" and back.ntotal == len(x) + 3
    np.testing.assert_array_equal(back.search_ids(q, 10)[1], index.search_ids(q, 10)[1])
    np.testing.assert_allclose(back.all_vectors()[-3:], x[:3], atol=1e-6)


def test_a_registered_kind_is_in_kinds_and_in_the_kind_option(toy_kind) -> None:
    assert kinds.KINDS == ("flat", "hnsw", "ivf", "ivfpq", "flatip")
    assert kinds.BUILD_PARAMS["flatip"] == () and kinds.SEARCH_KNOBS["flatip"] == ()
    assert resolve_params("flatip", 10, 4, {}) == {}
    parser, text = build_help()
    assert "{auto,flat,hnsw,ivf,ivfpq,flatip}" in text
    assert "ivfpq: inverted lists with compressed codes; flatip: Faiss's exact IndexFlatIP; auto:" in text
    assert parser.parse_args(["--embeddings", "e", "--out", "o", "--kind", "flatip"]).kind == "flatip"
    with pytest.raises(IndexDirError, match="or auto"):
        Index.build(*collection(50)[:2], kind="flatip2")


def test_the_registry_is_the_package_s_own_again_after_the_toy_test() -> None:
    assert kinds.KINDS == ("flat", "hnsw", "ivf", "ivfpq")
    assert "flatip" not in build_help()[1]


def test_every_registered_kind_has_the_whole_interface_and_defaults_that_pass_its_checks() -> None:
    assert list(kinds.REGISTRY) == ["flat", "hnsw", "ivf", "ivfpq"]
    for name, kind in kinds.REGISTRY.items():
        assert isinstance(kind, Kind) and kind.name == name and kind_of(name) is kind
        assert not type(kind).__abstractmethods__, f"{name} leaves {sorted(type(kind).__abstractmethods__)} open"
        assert kind.summary and kind.file and set(kind.search_knobs) <= set(kind.build_params)
        assert set(kind.lowest) <= set(kind.build_params)
        if isinstance(kind, FaissKind):
            assert kind.file == "index.faiss" and kind.faiss_types
        for count, dim in ((39, 3), (1000, 64), (100_000, 768), (5_000_000, 1000)):
            defaults = kind.defaults(count, dim)
            assert tuple(defaults) == kind.build_params, name
            assert kind.resolve(count, dim, {}) == defaults == resolve_params(name, count, dim, dict(defaults))
            assert kind.check_knobs({knob: defaults[knob] for knob in kind.search_knobs}) == \
                {knob: defaults[knob] for knob in kind.search_knobs}


def test_kind_of_an_unknown_name_and_register_refuse_clearly() -> None:
    for name in ("nope", None, ["flat"]):
        with pytest.raises(IndexDirError) as e:
            kind_of(name)
        assert str(e.value) == f"--kind must be one of flat, hnsw, ivf, ivfpq or auto (got {name!r})"
    for taken in ("flat", "auto", ""):
        with pytest.raises(ValueError, match="empty, taken or reserved"):
            register(type("Taken", (FlatIP,), {"name": taken}))
    assert kinds.KINDS == ("flat", "hnsw", "ivf", "ivfpq")
