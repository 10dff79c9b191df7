"""The pause between attempts at something that failed for a passing reason: exponential, with jitter."""

import random


def pause(attempt: int, base: float = 0.5, ceiling: float = 30.0) -> float:
    """Seconds to wait before attempt `attempt + 1`: base x 2^attempt, at most `ceiling`, times 0.5 to 1.5 so
    that clients failing together do not retry together."""
    return min(ceiling, base * 2 ** attempt) * (0.5 + random.random())
