"""sslforge retrieval: collections behind one Store interface (`open_store`: a Faiss index dir, or a PostgreSQL
table with pgvector through psycopg, imported only then), Faiss indexes (CPU, GPU when Faiss sees one; torch
fallback for exact search), kNN classification and retrieval metrics. Numpy in, numpy out; of the other stages it
imports only pretrain's numpy-only ground (atomic writes, the kNN vote, the embeddings-dir format, the JSON reading
rule): no torch.
"""
from retrieval.embeddings import Embeddings, EmbeddingsError, read_embeddings, write_embeddings
from retrieval.exact import BackendError, exact_search
from retrieval.index import Index, IndexDirError, choose_kind
from retrieval.kinds import ModelMismatchError
from retrieval.knn import classify, knn_vote
from retrieval.store import Store, build_store, open_store

__all__ = ["BackendError", "Embeddings", "EmbeddingsError", "Index", "IndexDirError", "ModelMismatchError", "Store",
           "build_store", "choose_kind", "classify", "exact_search", "knn_vote", "open_store", "read_embeddings",
           "write_embeddings"]
