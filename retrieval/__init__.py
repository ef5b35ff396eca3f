"""sslforge retrieval: Faiss indexes (CPU, GPU when Faiss sees one; torch fallback for exact search),
kNN classification and retrieval metrics. Numpy in, numpy out; of the other stages it imports only pretrain's
numpy-only ground (atomic writes, the kNN vote, the embeddings-dir format, the JSON reading rule): no torch.
"""
from retrieval.embeddings import Embeddings, EmbeddingsError, read_embeddings, write_embeddings
from retrieval.exact import BackendError, exact_search
from retrieval.index import Index, IndexDirError, ModelMismatchError, choose_kind
from retrieval.knn import classify, knn_vote

__all__ = ["BackendError", "Embeddings", "EmbeddingsError", "Index", "IndexDirError", "ModelMismatchError",
           "choose_kind", "classify", "exact_search", "knn_vote", "read_embeddings", "write_embeddings"]
