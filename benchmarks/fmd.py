"""FMD2 (nyth.proto.fmd): detection throughput against the scalar-multiplication limit.

All figures are single-threaded (per core). The limit for a non-matching (tag, key) test
is half the raw variable-base scalar-multiplication rate of the library, measured in the
same run: a non-matching test needs ~2 multiplications x_i·U on average (early exit).
W = y·U + m·B depends only on the tag: the mailbox computes it once per tag (at ingest or
once per detection pass); "cold" figures include decoding and W on every test.
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable

import rbcl
from nyth.proto import fmd

from benchmarks.common import Results


def _rate(fn: Callable[[], object], seconds: float = 1.5) -> float:
    """Calls per second of fn, over at least `seconds`."""
    fn()
    count = 0
    started = time.perf_counter()
    while True:
        for _ in range(200):
            fn()
        count += 200
        elapsed = time.perf_counter() - started
        if elapsed >= seconds:
            return count / elapsed


def _library_rates(results: Results) -> float:
    s = rbcl.crypto_core_ristretto255_scalar_random()
    p = rbcl.crypto_core_ristretto255_random()
    var = _rate(lambda: rbcl.crypto_scalarmult_ristretto255(s, p))
    base = _rate(lambda: rbcl.crypto_scalarmult_ristretto255_base(s))
    results.add("rbcl ristretto255 scalar mult (variable base)", f"{var:,.0f}/s", "chosen library")
    results.add("rbcl ristretto255 scalar mult (base)", f"{base:,.0f}/s")
    try:
        import nacl.bindings as nb

        e = nb.crypto_core_ed25519_scalar_reduce(os.urandom(64))
        q = nb.crypto_scalarmult_ed25519_base_noclamp(e)
        nvar = _rate(lambda: nb.crypto_scalarmult_ed25519_noclamp(e, q))
        nbase = _rate(lambda: nb.crypto_scalarmult_ed25519_base_noclamp(e))
        results.add("PyNaCl ed25519 noclamp (variable base)", f"{nvar:,.0f}/s", "validates the point")
        results.add("PyNaCl ed25519 noclamp (base)", f"{nbase:,.0f}/s")
    except ImportError:  # pragma: no cover
        pass
    try:
        import pysodium

        s2 = pysodium.crypto_core_ristretto255_scalar_random()
        p2 = pysodium.crypto_core_ristretto255_random()
        pvar = _rate(lambda: pysodium.crypto_scalarmult_ristretto255(s2, p2))
        results.add("pysodium ristretto255 (variable base)", f"{pvar:,.0f}/s", "system libsodium")
    except (ImportError, OSError, ValueError):
        results.note("pysodium not installed here (see docs/performance.md for its figure)")
    return var


def _timed(fn: Callable[[], object]) -> float:
    started = time.perf_counter()
    fn()
    return time.perf_counter() - started


def run(tags_max: int = 10_000) -> Results:
    results = Results("FMD2 on ristretto255 (single core)")
    var = _library_rates(results)
    limit = var / 2
    results.add("limit: non-matching test = 2 scalar mults", f"{limit:,.0f}/s", "rate / 2, this run")

    recipient = fmd.FmdSecretKey.generate()
    other_pk = fmd.FmdSecretKey.generate().public_key()
    pk = recipient.public_key()
    raw: list[bytes] = []
    elapsed = _timed(lambda: raw.extend(fmd.flag(other_pk) for _ in range(tags_max)))
    results.add("flag (make a tag)", f"{tags_max / elapsed:,.0f}/s",
                f"{elapsed / tags_max * 1e3:.2f} ms; ≈ γ+2 = 26 scalar mults")
    own = [fmd.flag(pk) for _ in range(50)]

    elapsed = _timed(lambda: [fmd.decode_tag(t) for t in raw])
    results.add("decode_tag (ingest validation)", f"{tags_max / elapsed:,.0f}/s")
    tags = [fmd.decode_tag(t) for t in raw]
    elapsed = _timed(lambda: [t.w for t in tags])
    results.add("W = y·U + m·B (once per tag)", f"{tags_max / elapsed:,.0f}/s")

    for n in (8, 24):
        dk = recipient.extract(n)
        hits = 0

        def warm(dk: fmd.DetectionKey = dk) -> None:
            nonlocal hits
            hits = sum(fmd.test(dk, t) for t in tags)

        def cold(dk: fmd.DetectionKey = dk, cold_tags: list[bytes] = raw[:2000]) -> None:
            for t in cold_tags:
                fmd.test(dk, t)

        def matching(dk: fmd.DetectionKey = dk) -> None:
            for t in own:
                fmd.test(dk, fmd.decode_tag(t))

        rate = tags_max / _timed(warm)
        results.add(f"test n={n}, non-matching, W known", f"{rate:,.0f}/s",
                    f"{limit / rate:.2f}× the limit; {hits} false positives in {tags_max:,}")
        rate = 2000 / _timed(cold)
        results.add(f"test n={n}, non-matching, cold (bytes)", f"{rate:,.0f}/s",
                    f"{limit / rate:.2f}× the limit; includes decode + W per test")
        results.add(f"test n={n}, matching tag, cold", f"{len(own) / _timed(matching):,.0f}/s",
                    "n mults + W; matches are rare: ~p·N + M")

    keys = [fmd.FmdSecretKey.generate().extract(8) for _ in range(100)]
    stored_w = [t.w for t in tags]  # what a mailbox keeps next to each tag, computed at ingest
    for t_count in (1_000, tags_max):
        for k_count in (1, 10, 100):
            subset = list(zip(raw[:t_count], stored_w[:t_count], strict=True))
            ks = keys[:k_count]

            def detection_pass(subset: list[tuple[bytes, bytes]] = subset, ks: list[fmd.DetectionKey] = ks,
                               stored: bool = True) -> None:
                for t, w in subset:
                    decoded = fmd.decode_tag(t, w=w if stored else None)
                    for dk in ks:
                        fmd.test(dk, decoded)

            pairs = t_count * k_count
            variants = [("W stored", True), ("W per pass", False)] if k_count == 1 else [("W stored", True)]
            for label, stored in variants:
                elapsed = _timed(lambda f=detection_pass, s=stored: f(stored=s))  # type: ignore[misc]
                results.add(f"pass: {t_count:>6,} tags × {k_count:>3} keys (n=8), {label}",
                            f"{elapsed:.2f} s",
                            f"{pairs / elapsed:,.0f} pairs/s, {limit / (pairs / elapsed):.2f}× the limit")
    results.note("a detection pass decodes each stored tag and tests every registered key; W is computed"
                 " once per tag at ingest and stored (32 bytes), or once per tag per pass;"
                 " work = tags × (W? + keys × ~2 mults)")
    return results
