"""A retrieval server speaking Search-R1's ``POST /retrieve`` contract, backed by BM25.

Search-R1 trains against a separate retriever process (a FAISS dense index behind FastAPI). This
is the same contract on the standard library's threaded HTTP server, so the environment, the
client and Search-R1's own code can all talk to it, and it needs no GPU or web framework::

    python -m environments.search_qa.server --corpus generated --port 8000 [--host 127.0.0.1]

``--corpus`` is ``generated`` (``--seed`` picks the world), ``wiki`` (gensim's Wikipedia slice) or
the path of a JSONL corpus. ``GET /health`` answers ``{"status": "ok", "passages": N}``.
"""

from __future__ import annotations

import argparse
import json
import logging
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

from .retriever import BM25Retriever, Retriever

logger = logging.getLogger(__name__)

#: Largest accepted request body and batch: a bound against accidental or malicious huge requests.
MAX_BODY_BYTES = 8 * 1024 * 1024
MAX_QUERIES = 4096
MAX_TOPK = 100


class _BadRequest(ValueError):
    pass


def _validate(payload: Any, default_topk: int) -> tuple[list[str], int, bool]:
    if not isinstance(payload, dict):
        raise _BadRequest("body must be a JSON object")
    queries = payload.get("queries")
    if not isinstance(queries, list) or not all(isinstance(q, str) for q in queries):
        raise _BadRequest("'queries' must be a list of strings")
    if len(queries) > MAX_QUERIES:
        raise _BadRequest(f"at most {MAX_QUERIES} queries per request")
    topk = payload.get("topk") or default_topk  # Search-R1 falls back to the server default on null/0
    if not isinstance(topk, int) or isinstance(topk, bool) or not 1 <= topk <= MAX_TOPK:
        raise _BadRequest(f"'topk' must be an integer in [1, {MAX_TOPK}]")
    return_scores = payload.get("return_scores", False)
    if not isinstance(return_scores, bool):
        raise _BadRequest("'return_scores' must be a boolean")
    return queries, topk, return_scores


def handle_retrieve(retriever: Retriever, payload: Any, default_topk: int = 3) -> dict[str, Any]:
    """The response body of one ``/retrieve`` request (raises ``ValueError`` on a bad request)."""
    queries, topk, return_scores = _validate(payload, default_topk)
    results = retriever.search(queries, topk) if queries else []
    if return_scores:
        return {"result": [[{"document": h.passage.to_json(), "score": h.score} for h in hits] for hits in results]}
    return {"result": [[h.passage.to_json() for h in hits] for hits in results]}


class _Handler(BaseHTTPRequestHandler):
    server: RetrievalHTTPServer
    protocol_version = "HTTP/1.1"

    def _send(self, status: int, body: dict[str, Any]) -> None:
        data = json.dumps(body).encode("utf-8")
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def do_GET(self) -> None:  # noqa: N802 - http.server naming
        if self.path.rstrip("/") == "/health":
            self._send(200, {"status": "ok", "passages": len(getattr(self.server.retriever, "passages", ()))})
        else:
            self._send(404, {"error": f"no route GET {self.path}"})

    def do_POST(self) -> None:  # noqa: N802
        if self.path.rstrip("/") != "/retrieve":
            self._send(404, {"error": f"no route POST {self.path}"})
            return
        try:
            length = int(self.headers.get("Content-Length") or 0)
            if not 0 < length <= MAX_BODY_BYTES:
                raise _BadRequest(f"Content-Length must be in (0, {MAX_BODY_BYTES}]")
            payload = json.loads(self.rfile.read(length).decode("utf-8"))
            body = handle_retrieve(self.server.retriever, payload, self.server.default_topk)
        except (_BadRequest, json.JSONDecodeError, UnicodeDecodeError) as exc:
            self._send(400, {"error": str(exc)})
            return
        except Exception as exc:  # a retriever failure must answer 500, not drop the connection
            logger.exception("retrieval failed")
            self._send(500, {"error": f"{type(exc).__name__}: {exc}"})
            return
        self._send(200, body)

    def log_message(self, format: str, *args: Any) -> None:  # noqa: A002 - keep per-request logs out of stderr
        logger.debug("%s - %s", self.address_string(), format % args)


class RetrievalHTTPServer(ThreadingHTTPServer):
    """Threaded HTTP server holding one retriever; ``port=0`` binds a free port."""

    daemon_threads = True

    def __init__(self, retriever: Retriever, host: str = "127.0.0.1", port: int = 8000, default_topk: int = 3,
                 handler: type[BaseHTTPRequestHandler] = _Handler) -> None:
        super().__init__((host, port), handler)
        self.retriever = retriever
        self.default_topk = default_topk
        self._thread: threading.Thread | None = None

    @property
    def url(self) -> str:
        host, port = self.server_address[:2]
        return f"http://{host}:{port}"

    def start(self) -> RetrievalHTTPServer:
        """Serve on a daemon thread (for tests and notebooks); returns ``self``."""
        self._thread = threading.Thread(target=self.serve_forever, name="retrieval-server", daemon=True)
        self._thread.start()
        return self

    def close(self) -> None:
        """Stop serving and release the port."""
        if self._thread is not None:
            self.shutdown()
            self._thread.join(timeout=5)
            self._thread = None
        self.server_close()

    def __enter__(self) -> RetrievalHTTPServer:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.close()


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description="BM25 retrieval server with Search-R1's /retrieve contract.")
    parser.add_argument("--corpus", default="generated", help="'generated', 'wiki' or the path of a JSONL corpus")
    parser.add_argument("--seed", type=int, default=0, help="world of the generated corpus")
    parser.add_argument("--host", default="127.0.0.1", help="bind address (default: loopback only)")
    parser.add_argument("--port", type=int, default=8000)
    parser.add_argument("--topk", type=int, default=3, help="default topk when a request omits it")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(message)s")

    from .loaders import load_passages

    retriever = BM25Retriever(load_passages(args.corpus, seed=args.seed))
    server = RetrievalHTTPServer(retriever, args.host, args.port, args.topk)
    logger.info("serving %d passages of %r on %s/retrieve", len(retriever), args.corpus, server.url)
    try:
        server.serve_forever()
    except KeyboardInterrupt:
        pass
    finally:
        server.server_close()


if __name__ == "__main__":
    main()
