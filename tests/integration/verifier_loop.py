"""A verifier process for the multi-process test: verifies one token in a loop and prints each change of decision.

Usage: python -m tests.integration.verifier_loop TOKEN SECONDS, with the stores
chosen by AGENTCAPS_* variables. Each line is `<time.monotonic()> <reason>`
(CLOCK_MONOTONIC is system-wide, so the parent can compare times); the process
exits 0 on the first `revoked`, 2 if SECONDS pass first.
"""

from __future__ import annotations

import sys
import time

import agentcaps


def main(argv: list[str]) -> int:
    token, seconds = argv[1], float(argv[2])
    deadline = time.monotonic() + seconds
    stores = agentcaps.connect()
    try:
        if not stores.revocations.wait_ready(10):  # type: ignore[union-attr]
            print(f"{time.monotonic():.6f} never-ready", flush=True)
            return 1
        verifier = stores.verifier()
        last = None
        while time.monotonic() < deadline:
            reason = verifier.verify(token, resource="crm/contacts/42", action="read").reason
            if reason is not last:
                print(f"{time.monotonic():.6f} {reason.value}", flush=True)
                last = reason
                if reason is agentcaps.Reason.REVOKED:
                    return 0
            time.sleep(0.002)
        return 2
    finally:
        stores.close()


if __name__ == "__main__":
    sys.exit(main(sys.argv))
