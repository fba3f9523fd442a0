"""Delivery states of outgoing P2P messages and the retry policy (pure).

    queued ──▶ sending ──▶ delivered (acked by the recipient)
       ▲          │
       └──────────┘  attempt failed: back to queued with a reason and a next retry time
    failed: permanent (contact refused us, or the message expired); has a reason.
"""

from __future__ import annotations

import enum
import random
from dataclasses import dataclass


class DeliveryState(enum.StrEnum):
    QUEUED = "queued"
    SENDING = "sending"
    DELIVERED = "delivered"
    FAILED = "failed"


@dataclass(frozen=True)
class RetryPolicy:
    """Capped exponential backoff with jitter, so a fleet of peers coming back after a
    gateway restart does not retry in lock-step."""

    initial: float = 2.0
    factor: float = 2.0
    cap: float = 300.0
    jitter: float = 0.2

    def delay(self, attempts: int, rng: random.Random | None = None) -> float:
        """Seconds to wait after the attempts-th consecutive failure (attempts ≥ 1)."""
        try:
            base = min(self.cap, self.initial * self.factor ** max(0, attempts - 1))
        except OverflowError:  # float ** overflows after ~1000 attempts (days offline)
            base = self.cap
        spread = (rng or random).uniform(-self.jitter, self.jitter)
        return max(0.1, base * (1 + spread))
