"""Tokens for group servers that want one per post (docs/protocol.md §9).

A wallet per server onion, kept in the profile store (sealed rows: tokens survive a
restart and never reach a log), filled a batch of MAX_BATCH at a time whenever it holds
fewer than LOW_WATER. Filling solves the issue request's proof of work on the peer's
proof-of-work threads (`pow_pool`), asks the server over a Tor circuit of its own, and
keeps the tokens only if the server's proof verifies against the token key of the
bundle *we pinned*: a server proving with another key could recognise our posts, so its
answer is refused and the server shown as refusing.

The post path (`GroupService._post_one`) asks `headers(onion, post, blob)` before each
post to a server and tells `settle(onion, post, status)` what the server answered. A
post is given one token per server, recorded with it before it is sent, so a post that
got no answer goes again with the same token (a post never spends two tokens for one
attempt that may have reached the server); a refusal for the token itself (400, 402,
403, 409) drops it, and the next attempt takes a new one: the post is never lost. While
the wallet is empty, `headers` raises TokensPending, whose text is the post's reason
("getting tokens from abcd….onion: proof of work").

Store collections (rows sealed by `nyth_peer.store`):

    token_wallets   key onion        {"key": token public key hex, "tokens": [b64 token]}
    token_spends    key post/onion   {"onion", "post", "key", "redemption": b64}
"""

from __future__ import annotations

import asyncio
import base64
import logging
import secrets
import time
from collections.abc import Callable
from typing import Annotated, Any

import httpx
from nyth.errors import AuthenticationError, DecodeError, NythError
from nyth.http_limits import (
    JSON_SLACK,
    StrictModel,
    b64_len,
    b64_validator,
    bounded_request,
    printable,
)
from nyth.proto import tokens
from nyth.proto.bundle import ServerBundle
from nyth.proto.delivery import RetryPolicy
from nyth.proto.tokens import MAX_BATCH, Token
from pydantic import PlainValidator

from nyth_peer import pow_pool
from nyth_peer.pins import GROUP, Pins
from nyth_peer.store import Store

log = logging.getLogger(__name__)

TOKEN_HEADER = "Nyth-Token"  # noqa: S105 (a header name)
WALLETS = "token_wallets"
SPENDS = "token_spends"
# Refill below this: a batch takes a proof of work and a round trip through Tor, and
# posting should not wait for it. Getting tokens well before they are needed also keeps
# the issuance away in time from the posts they pay for.
LOW_WATER = MAX_BATCH // 4
ISSUE_RESPONSE_SIZE = 1 + MAX_BATCH * tokens.voprf.ELEMENT_SIZE + tokens.voprf.PROOF_SIZE
ISSUE_ANSWER_BYTES = b64_len(ISSUE_RESPONSE_SIZE) + JSON_SLACK
REQUEST_DEADLINE = 60.0
# The server's answer to a post that names the token as the problem: the token is
# dropped and the next attempt takes another one.
TOKEN_REFUSALS = frozenset({400, 402, 403, 409})


class TokensPending(NythError):
    """No token for this server yet: one is on its way (the text says how far)."""


class TokenRefusedError(NythError):
    """A server's issuance was refused or failed; the text says why."""


class _IssueAnswer(StrictModel):
    issue_response: Annotated[bytes, PlainValidator(b64_validator(max_size=ISSUE_RESPONSE_SIZE))]


def isolated_http_factory(socks: Any) -> Callable[[], httpx.AsyncClient]:
    """Clients for issuance, each on a Tor circuit of its own (a fresh SOCKS credential):
    the server must not see the issuance on the connection our posts use."""
    from nyth.tor.socks import onion_http_client

    def factory() -> httpx.AsyncClient:
        return onion_http_client(socks, timeout=120.0, username="nyth-group-tokens",
                                 password=secrets.token_hex(16))

    return factory


class TokenWallets:
    """The peer's tokens, one wallet per group server; see the module docstring."""

    def __init__(self, store: Store, pins: Pins, http_factory: Callable[[], httpx.AsyncClient],
                 retry: RetryPolicy, *, on_tokens: Callable[[str], None],
                 on_refusal: Callable[[str, str], None]) -> None:
        self.store = store
        self.pins = pins
        self.http_factory = http_factory  # the engine gives one with circuit isolation
        self.retry = retry
        self.on_tokens = on_tokens        # a batch arrived: posts waiting for it may go
        self.on_refusal = on_refusal      # the server's issuance is refused: show why
        self.states: dict[str, dict[str, Any]] = {}
        self._fills: dict[str, asyncio.Task[None]] = {}

    # -- lifecycle ---------------------------------------------------------------------------
    def start(self, onions: set[str]) -> None:
        """Forget tokens given to posts that are gone, and fill low wallets now rather
        than at the next post."""
        for row in self.store.list(SPENDS):
            if not self.store.has("group_outbox", row["post"]):
                self.store.delete(SPENDS, f"{row['post']}/{row['onion']}")
        for onion in onions:
            if self.required(onion) is not None and self.count(onion) < LOW_WATER:
                self._fill(onion)

    async def stop(self) -> None:
        fills = list(self._fills.values())
        for task in fills:
            task.cancel()
        await asyncio.gather(*fills, return_exceptions=True)

    # -- what the post path asks -----------------------------------------------------------
    def required(self, onion: str) -> ServerBundle | None:
        """The pinned bundle, if it wants tokens (whether or not the server presents
        another one now: the post path refuses those servers on its own)."""
        pinned = self.pins.pinned(GROUP, onion)
        if pinned is None:
            return None
        try:
            bundle = ServerBundle.verify(pinned, onion)
        except (DecodeError, AuthenticationError):
            return None  # the post path's pin check says what is wrong with it
        return bundle if bundle.tokens_required else None

    def headers(self, onion: str, post: str, blob: bytes) -> dict[str, str]:
        """The token header for posting blob (post: its hash) to onion; {} if the server
        wants none. TokensPending while the wallet is empty (a fill is started)."""
        bundle = self.required(onion)
        if bundle is None:
            return {}
        key = bundle.token_public_key.hex()
        slot = f"{post}/{onion}"
        assigned = self.store.get(SPENDS, slot)
        if assigned is not None and assigned["key"] == key:
            return {TOKEN_HEADER: assigned["redemption"]}
        with self.store.transaction():
            token, left = self._take(onion, key)
            if token is not None:
                redemption = base64.b64encode(tokens.redeem(token, blob)).decode()
                self.store.put(SPENDS, slot, {"onion": onion, "post": post, "key": key,
                                              "redemption": redemption})
        if left < LOW_WATER:
            self._fill(onion)
        if token is None:
            raise TokensPending(self.waiting_reason(onion))
        return {TOKEN_HEADER: redemption}

    def settle(self, onion: str, post: str, status: int) -> None:
        """What the server answered a post that carried our token: spent (2xx) or refused
        for the token, the token is done with; any other answer keeps it for the retry."""
        if status < 300 or status in TOKEN_REFUSALS:
            self.store.delete(SPENDS, f"{post}/{onion}")
        if status in TOKEN_REFUSALS and self.required(onion) is not None:
            log.info("server %s… refused a token (HTTP %d); the post goes again with another",
                     onion[:8], status)

    def waiting_reason(self, onion: str) -> str:
        state = self.states.get(onion, {})
        doing = state.get("reason") or "starting"
        return f"getting tokens from {onion[:8]}….onion: {doing}"

    def count(self, onion: str) -> int:
        row = self.store.get(WALLETS, onion)
        return len(row["tokens"]) if row else 0

    def view(self, onion: str) -> dict[str, Any] | None:
        """For the UI: how many tokens we hold for onion and what filling is doing; None
        for a server that wants none."""
        if self.required(onion) is None:
            return None
        state = self.states.get(onion, {"state": "idle", "reason": None})
        return {"tokens": self.count(onion), "state": state["state"],
                "reason": state.get("reason")}

    # -- the wallet --------------------------------------------------------------------------
    def _take(self, onion: str, key: str) -> tuple[Token | None, int]:
        """Pop one token issued under key (tokens under another key, from before a re-pin,
        are worthless and dropped); (token or None, how many are left)."""
        row = self.store.get(WALLETS, onion)
        if row is None or row["key"] != key or not row["tokens"]:
            return None, 0
        token = Token.from_bytes(base64.b64decode(row["tokens"].pop()))
        self.store.put(WALLETS, onion, row)
        return token, len(row["tokens"])

    def _add(self, onion: str, key: str, batch: list[Token]) -> int:
        with self.store.transaction():
            row = self.store.get(WALLETS, onion)
            if row is None or row["key"] != key:
                row = {"key": key, "tokens": []}
            row["tokens"] += [base64.b64encode(t.to_bytes()).decode() for t in batch]
            self.store.put(WALLETS, onion, row)
        return len(row["tokens"])

    # -- filling -----------------------------------------------------------------------------
    def _fill(self, onion: str) -> None:
        task = self._fills.get(onion)
        if task is None or task.done():
            self._fills[onion] = asyncio.ensure_future(self._fill_loop(onion))

    def _set_state(self, onion: str, state: str, reason: str | None) -> None:
        self.states[onion] = {"state": state, "reason": reason, "since": time.time()}

    async def _fill_loop(self, onion: str) -> None:
        """Get one batch, retrying with backoff until it comes or tokens are no longer
        wanted (a re-pin may have changed that). A server whose changed bundle waits for
        the user's review is not asked: the next post after a re-pin starts again."""
        failures = 0
        while ((bundle := self.required(onion)) is not None
               and self.pins.refusal(GROUP, onion) is None):
            try:
                count = self._add(onion, bundle.token_public_key.hex(),
                                  await self._get_batch(onion, bundle))
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                failures += 1
                delay = self.retry.delay(failures)
                reason = printable(str(exc) or type(exc).__name__, 300)
                self._set_state(onion, "failed", f"{reason}; trying again in {delay:.0f} s")
                log.info("tokens from %s…: %s", onion[:8], reason)
                if isinstance(exc, AuthenticationError):
                    self.on_refusal(onion, reason)
                await asyncio.sleep(delay)
                continue
            self._set_state(onion, "ready", None)
            log.info("got %d tokens from %s… (%d held)", MAX_BATCH, onion[:8], count)
            self.on_tokens(onion)
            return

    async def _get_batch(self, onion: str, bundle: ServerBundle) -> list[Token]:
        pk, bits = bundle.token_public_key, bundle.token_pow_bits
        self._set_state(onion, "working", "proof of work")
        pending = await asyncio.to_thread(tokens.prepare_issue, MAX_BATCH)
        nonce = await pow_pool.solve(tokens.solve_issue_pow, pk, pending.blinded, bits,
                                     what=f"tokens from {onion[:8]}….onion",
                                     error=TokenRefusedError)
        self._set_state(onion, "working", "asking the server")
        body = {"issue_request": base64.b64encode(pending.request(nonce).encode()).decode()}
        async with self.http_factory() as http:
            answer = await bounded_request(
                http, "POST", f"http://{onion}.onion/v1/tokens", json=body,
                max_bytes=ISSUE_ANSWER_BYTES, deadline=REQUEST_DEADLINE, what="token batch")
        if answer.status_code != 200:
            raise TokenRefusedError(f"{answer.server} {answer.failure()} to a token request")
        response = answer.parse(_IssueAnswer).issue_response
        try:
            # Against the pinned key, never a key the server names now.
            return await asyncio.to_thread(tokens.finalize_batch, pk, pending, response)
        except AuthenticationError as exc:
            raise AuthenticationError(
                f"{onion}.onion answered our token request with a proof that does not "
                "verify for the token key we pinned: refusing its tokens (a server doing "
                "this could recognise our posts)") from exc

