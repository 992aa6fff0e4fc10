"""Which vector search should back the per-worker retrieval index: numpy, sqlite-vec or usearch?

Builds N synthetic passages with topic structure (a vocabulary of a few thousand made-up
words, 200 topics, each passage drawing most of its words from its own topic), embeds them
with a hashing-trick embedding (signed hashed word unigrams + character trigrams,
L2-normalised float32), then measures for each method:

- build: the time to get from the float32 matrix to a searchable index (insert / graph build);
- query p50 / p99 / mean over single queries (k=10, cosine = dot product on unit vectors);
- recall@10 against numpy exact search on the same data;
- memory: RSS growth of the process while the index was built (the matrix itself is already
  resident, so numpy's row is the matrix size it searches).

The filtered rows restrict the search to a 10% subset (a tenant or a metadata value); their
recall is against numpy exact search over that subset.

The optional packages are imported by name at run time; a method whose import fails is
reported as "not available: <reason>". Install them with
`pip install sqlite-vec usearch pysqlite3-binary` (pysqlite3 supplies
`enable_load_extension` where the interpreter's sqlite3 was built without it).

    python -m dev.bench.vector_choice [--n 100000] [--dims 256] [--queries 300]
        [--only numpy,numpy_mask,sqlite_vec,usearch_exact,usearch_hnsw]
"""

from __future__ import annotations

import argparse
import gc
import importlib
import os
import platform
import statistics
import sys
import time
import zlib
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import numpy.typing as npt

F32 = npt.NDArray[np.float32]
I64 = npt.NDArray[np.int64]

K = 10
VOCAB = 4000
TOPICS = 200
TOPIC_WORDS = 80
ON_TOPIC = 0.8
FILTER_FRACTION = 0.10
METHODS = ("numpy", "numpy_mask", "sqlite_vec", "usearch_exact", "usearch_hnsw")


# --- data -----------------------------------------------------------------------------------


def _vocabulary(rng: np.random.Generator, size: int) -> list[str]:
    """`size` distinct pronounceable-ish words of 3 to 10 letters."""
    consonants = "bcdfghjklmnprstvwz"
    vowels = "aeiouy"
    words: set[str] = set()
    while len(words) < size:
        n = int(rng.integers(2, 6))
        w = "".join(
            consonants[int(rng.integers(len(consonants)))] + vowels[int(rng.integers(len(vowels)))]
            for _ in range(n)
        )
        words.add(w[: int(rng.integers(3, len(w) + 1))])
    return sorted(words)


def _signed_bucket(feature: str, dims: int) -> tuple[int, float]:
    h = zlib.crc32(feature.encode())
    return h % dims, (1.0 if (h >> 31) & 1 else -1.0)


def _word_features(words: Sequence[str], dims: int) -> F32:
    """Row w = the hashed features one occurrence of word w contributes: its unigram and the
    character trigrams of `<word>`. A passage's embedding is its word counts @ this matrix,
    which is the hashing trick over the passage's unigrams and within-word trigrams."""
    table = np.zeros((len(words), dims), dtype=np.float32)
    for i, w in enumerate(words):
        b, s = _signed_bucket("w:" + w, dims)
        table[i, b] += 2.0 * s  # a whole-word match weighs more than one trigram
        padded = f"<{w}>"
        for j in range(len(padded) - 2):
            b, s = _signed_bucket("c:" + padded[j : j + 3], dims)
            table[i, b] += s
    return table


@dataclass
class Corpus:
    dims: int
    word_table: F32
    topic_words: I64  # (TOPICS, TOPIC_WORDS) word ids
    topic_p: npt.NDArray[np.float64]  # Zipf weights within a topic
    global_p: npt.NDArray[np.float64]  # Zipf weights over the vocabulary

    @classmethod
    def build(cls, rng: np.random.Generator, dims: int) -> Corpus:
        words = _vocabulary(rng, VOCAB)
        topic_words = np.stack(
            [rng.choice(VOCAB, size=TOPIC_WORDS, replace=False) for _ in range(TOPICS)]
        ).astype(np.int64)
        zt = 1.0 / np.arange(1, TOPIC_WORDS + 1) ** 0.9
        zg = 1.0 / np.arange(1, VOCAB + 1) ** 1.0
        global_p = zg[rng.permutation(VOCAB)]
        return cls(
            dims=dims,
            word_table=_word_features(words, dims),
            topic_words=topic_words,
            topic_p=zt / zt.sum(),
            global_p=global_p / global_p.sum(),
        )

    def passages(
        self, rng: np.random.Generator, n: int, min_len: int, max_len: int, block: int = 4000
    ) -> tuple[F32, I64]:
        """n embedded passages of min_len..max_len words, and their topic ids."""
        out = np.empty((n, self.dims), dtype=np.float32)
        topics = rng.integers(TOPICS, size=n).astype(np.int64)
        for start in range(0, n, block):
            stop = min(n, start + block)
            m = stop - start
            lengths = rng.integers(min_len, max_len + 1, size=m)
            owner = np.repeat(np.arange(m), lengths)
            on_topic = rng.random(owner.size) < ON_TOPIC
            in_topic = rng.choice(TOPIC_WORDS, size=owner.size, p=self.topic_p)
            words = np.where(
                on_topic,
                self.topic_words[topics[start + owner], in_topic],
                rng.choice(VOCAB, size=owner.size, p=self.global_p),
            )
            counts = np.bincount(owner * VOCAB + words, minlength=m * VOCAB).reshape(m, VOCAB)
            emb = np.log1p(counts.astype(np.float32)) @ self.word_table  # sublinear tf
            emb /= np.linalg.norm(emb, axis=1, keepdims=True) + 1e-12
            out[start:stop] = emb
        return out, topics


# --- measurement ----------------------------------------------------------------------------


def _rss_bytes() -> int:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


@dataclass
class Result:
    method: str
    note: str = ""
    build_s: float | None = None
    mem_mb: float | None = None
    latencies_ms: list[float] = field(default_factory=list)
    recall: float | None = None
    unavailable: str | None = None


Search = Callable[[F32], I64]


def _measure(
    result: Result,
    build: Callable[[], Search],
    queries: F32,
    truth: list[set[int]],
    *,
    mem_mb: float | None = None,
) -> Result:
    gc.collect()
    rss0 = _rss_bytes()
    t0 = time.perf_counter()
    search = build()
    result.build_s = time.perf_counter() - t0
    gc.collect()
    result.mem_mb = mem_mb if mem_mb is not None else (_rss_bytes() - rss0) / 2**20
    for q in queries[:5]:  # warm caches and lazy initialisation
        search(q)
    hits = 0
    for q, want in zip(queries, truth, strict=True):
        t = time.perf_counter_ns()
        ids = search(q)
        result.latencies_ms.append((time.perf_counter_ns() - t) / 1e6)
        hits += len(want.intersection(int(i) for i in ids[:K]))
    result.recall = hits / (K * len(truth))
    return result


def _numpy_topk(matrix: F32, q: F32, mask: npt.NDArray[np.bool_] | None = None) -> I64:
    scores = matrix @ q
    if mask is not None:
        scores[~mask] = -np.inf
    top = np.argpartition(scores, -K)[-K:]
    return top[np.argsort(-scores[top])].astype(np.int64)


def _numpy_topk_ids(matrix: F32, q: F32, mask: npt.NDArray[np.bool_]) -> I64:
    """Exact top-k under an arbitrary mask without the -inf trick: argpartition slows down
    several-fold on an array that is 90% ties at -inf, so keep only the allowed scores."""
    ids = np.flatnonzero(mask)
    scores = (matrix @ q)[ids]
    top = np.argpartition(scores, -K)[-K:] if len(ids) > K else np.arange(len(ids))
    return ids[top[np.argsort(-scores[top])]].astype(np.int64)


def _import(name: str) -> Any:
    return importlib.import_module(name)


def _sqlite_with_extensions() -> tuple[Any, str]:
    """An sqlite3 module whose connections can load extensions, and which one it is."""
    import sqlite3

    if hasattr(sqlite3.Connection, "enable_load_extension"):
        return sqlite3, f"sqlite3 {sqlite3.sqlite_version}"
    try:
        mod = _import("pysqlite3.dbapi2")
    except ImportError as e:
        raise ImportError(
            f"stdlib sqlite3 lacks enable_load_extension and pysqlite3 is missing ({e})"
        ) from e
    return mod, f"pysqlite3 {mod.sqlite_version}"


def run_sqlite_vec(
    matrix: F32,
    queries: F32,
    truth: list[set[int]],
    mask: npt.NDArray[np.bool_] | None,
    mtruth: list[set[int]],
) -> list[Result]:
    name = "sqlite-vec (vec0, brute force)"
    try:
        sqlite_vec = _import("sqlite_vec")
        sqlite, which = _sqlite_with_extensions()
    except ImportError as e:
        return [Result(name, unavailable=str(e))]
    dims = matrix.shape[1]
    conn = sqlite.connect(":memory:")
    conn.enable_load_extension(True)
    sqlite_vec.load(conn)
    conn.enable_load_extension(False)
    version = conn.execute("select vec_version()").fetchone()[0]
    note = f"{version} on {which}, in-memory db, distance_metric=cosine"

    def build() -> Search:
        conn.execute(
            f"create virtual table chunks using vec0("
            f"embedding float[{dims}] distance_metric=cosine, tenant integer)"
        )
        tenants = mask.astype(np.int64) if mask is not None else np.zeros(len(matrix), np.int64)
        with conn:
            conn.executemany(
                "insert into chunks(rowid, embedding, tenant) values (?, ?, ?)",
                ((i, matrix[i].tobytes(), int(tenants[i])) for i in range(len(matrix))),
            )

        def search(q: F32) -> I64:
            rows = conn.execute(
                "select rowid from chunks where embedding match ? and k = ? order by distance",
                (q.tobytes(), K),
            ).fetchall()
            return np.array([r[0] for r in rows], dtype=np.int64)

        return search

    results = [_measure(Result(name, note=note), build, queries, truth)]
    if mask is not None:

        def filtered() -> Search:
            def search(q: F32) -> I64:
                rows = conn.execute(
                    "select rowid from chunks where embedding match ? and k = ? and tenant = 1"
                    " order by distance",
                    (q.tobytes(), K),
                ).fetchall()
                return np.array([r[0] for r in rows], dtype=np.int64)

            return search

        r = _measure(
            Result("sqlite-vec + metadata filter (10%)", note="vec0 metadata column `tenant = 1`"),
            filtered,
            queries,
            mtruth,
            mem_mb=0.0,
        )
        r.build_s = None  # same table as above
        results.append(r)
    conn.close()
    return results


def run_usearch(
    matrix: F32, queries: F32, truth: list[set[int]], hnsw: bool, ef_search: Sequence[int]
) -> list[Result]:
    label = "usearch HNSW" if hnsw else "usearch exact (brute force)"
    try:
        usearch = _import("usearch")
        ui = _import("usearch.index")
    except ImportError as e:
        return [Result(label, unavailable=str(e))]
    ver = usearch.__version__
    if not hnsw:

        def build_exact() -> Search:
            def search(q: F32) -> I64:
                m = ui.search(matrix, q, K, ui.MetricKind.IP, exact=True, threads=1)
                return np.asarray(m.keys, dtype=np.int64)

            return search

        return [
            _measure(
                Result(label, note=f"{ver}, usearch.index.search(exact=True, threads=1)"),
                build_exact,
                queries,
                truth,
                mem_mb=0.0,
            )
        ]

    index = ui.Index(
        ndim=matrix.shape[1],
        metric="ip",
        dtype="f32",
        connectivity=16,
        expansion_add=128,
        expansion_search=ef_search[0],
    )
    keys = np.arange(len(matrix), dtype=np.int64)

    def build_graph() -> Search:
        index.add(keys, matrix, threads=os.cpu_count() or 1)

        def search(q: F32) -> I64:
            return np.asarray(index.search(q, K, threads=1).keys, dtype=np.int64)

        return search

    results: list[Result] = []
    build_s: float | None = None
    mem: float | None = None
    for ef in ef_search:
        note = f"{ver}, f32, M=16, ef_add=128, ef_search={ef}, built on {os.cpu_count()} threads"
        if build_s is None:
            r = _measure(Result(f"{label} ef={ef}", note=note), build_graph, queries, truth)
            build_s, mem = r.build_s, r.mem_mb
        else:
            index.expansion_search = ef

            def reuse() -> Search:
                return lambda q: np.asarray(index.search(q, K, threads=1).keys, dtype=np.int64)

            r = _measure(Result(f"{label} ef={ef}", note=note), reuse, queries, truth, mem_mb=mem)
            r.build_s = build_s  # the same graph, searched with a wider beam
        results.append(r)
    return results


# --- report ---------------------------------------------------------------------------------


def _fmt(v: float | None, spec: str) -> str:
    return "-" if v is None else format(v, spec)


def table(results: Sequence[Result]) -> str:
    lines = [
        "| method | build s | query p50 ms | query p99 ms | query mean ms | recall@10 | RSS +MB |"
        " notes |",
        "| --- | ---: | ---: | ---: | ---: | ---: | ---: | --- |",
    ]
    for r in results:
        if r.unavailable is not None:
            lines.append(f"| {r.method} | | | | | | | not available: {r.unavailable} |")
            continue
        lat = sorted(r.latencies_ms)
        p99 = float(np.percentile(lat, 99))
        lines.append(
            f"| {r.method} | {_fmt(r.build_s, '.2f')} | {statistics.median(lat):.3f} |"
            f" {p99:.3f} | {statistics.fmean(lat):.3f} | {_fmt(r.recall, '.3f')} |"
            f" {_fmt(r.mem_mb, '.0f')} | {r.note} |"
        )
    return "\n".join(lines)


def _versions() -> str:
    parts = [f"Python {platform.python_version()}", f"numpy {np.__version__}"]
    for mod in ("usearch", "sqlite_vec"):
        try:
            parts.append(f"{mod} {_import(mod).__version__}")
        except ImportError:
            parts.append(f"{mod} missing")
    return ", ".join(parts)


def main(argv: Sequence[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0] if __doc__ else None)
    ap.add_argument("--n", type=int, default=100_000)
    ap.add_argument("--dims", type=int, default=256)
    ap.add_argument("--queries", type=int, default=300)
    ap.add_argument("--seed", type=int, default=7)
    ap.add_argument("--ef", default="64,256", help="usearch HNSW expansion_search values")
    ap.add_argument("--only", default=",".join(METHODS), help=f"subset of {','.join(METHODS)}")
    args = ap.parse_args(argv)
    only = {m.strip() for m in args.only.split(",") if m.strip()}
    unknown = only - set(METHODS)
    if unknown:
        ap.error(f"unknown methods: {sorted(unknown)}")

    rng = np.random.default_rng(args.seed)
    t0 = time.perf_counter()
    corpus = Corpus.build(rng, args.dims)
    matrix, _ = corpus.passages(rng, args.n, 20, 80)
    queries, _ = corpus.passages(rng, args.queries, 5, 25)
    mask = np.zeros(args.n, dtype=bool)
    mask[rng.choice(args.n, size=int(args.n * FILTER_FRACTION), replace=False)] = True
    gen_s = time.perf_counter() - t0

    truth = [set(_numpy_topk(matrix, q).tolist()) for q in queries]
    mtruth = [set(_numpy_topk(matrix, q, mask).tolist()) for q in queries]
    top1 = np.array([float(np.max(matrix @ q)) for q in queries[:50]])
    print(
        f"# vector search, n={args.n} dims={args.dims} queries={args.queries} k={K}\n\n"
        f"{os.cpu_count()} CPUs, {platform.machine()}, {_versions()}; "
        f"data generated + embedded in {gen_s:.1f}s; "
        f"median top-1 cosine of a query {np.median(top1):.2f}; "
        f"load average at start {os.getloadavg()[0]:.2f}\n",
        flush=True,
    )

    results: list[Result] = []
    matrix_mb = matrix.nbytes / 2**20
    if "numpy" in only:
        results.append(
            _measure(
                Result("numpy exact", note="matrix @ q, argpartition; RSS = the matrix itself"),
                lambda: lambda q: _numpy_topk(matrix, q),
                queries,
                truth,
                mem_mb=matrix_mb,
            )
        )
    if "numpy_mask" in only:
        results.append(
            _measure(
                Result("numpy exact + mask (10%), -inf", note="scores[~mask] = -inf"),
                lambda: lambda q: _numpy_topk(matrix, q, mask),
                queries,
                mtruth,
                mem_mb=0.0,
            )
        )
    if "numpy_mask" in only:
        results.append(
            _measure(
                Result(
                    "numpy exact + mask (10%), compress",
                    note="ids = flatnonzero(mask) per query; (matrix @ q)[ids]",
                ),
                lambda: lambda q: _numpy_topk_ids(matrix, q, mask),
                queries,
                mtruth,
                mem_mb=0.0,
            )
        )
        # When the filter is known ahead (one worker's tenant), its rows can be gathered once.
        subset_ids = np.flatnonzero(mask).astype(np.int64)
        holder: list[F32] = []

        def gather() -> Search:
            holder.append(np.ascontiguousarray(matrix[subset_ids]))
            return lambda q: subset_ids[_numpy_topk(holder[0], q)]

        results.append(
            _measure(
                Result("numpy exact, pre-gathered subset (10%)", note="matrix[ids] once, then @ q"),
                gather,
                queries,
                mtruth,
            )
        )
    if "sqlite_vec" in only:
        results.extend(run_sqlite_vec(matrix, queries, truth, mask, mtruth))
    if "usearch_exact" in only:
        results.extend(run_usearch(matrix, queries, truth, False, ()))
    if "usearch_hnsw" in only:
        efs = [int(x) for x in args.ef.split(",") if x.strip()]
        results.extend(run_usearch(matrix, queries, truth, True, efs))

    print(table(results))
    print(f"\nload average at end {os.getloadavg()[0]:.2f} (over 1 minute)")
    sys.stdout.flush()


if __name__ == "__main__":
    main()
