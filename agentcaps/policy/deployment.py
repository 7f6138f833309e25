"""A deployment's policies: where they come from (settings, environment) and the objects the service holds.

The mint policy is the folder AGENTCAPS_POLICY_DIR (or `--policy-dir`), else
the built-in default for the deployment's AGENTCAPS_MAX_TTL. The gateway
policy is the folder AGENTCAPS_GATEWAY_POLICY_DIR, else the `gateway/`
folder inside the mint policy folder when there is one (the layout `agentcaps
policy test` checks), else none.
"""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from agentcaps.config import Settings
from agentcaps.mint import DEFAULT_MAX_TTL
from agentcaps.policy.gateway import GatewayPolicy
from agentcaps.policy.mint import PolicyEngine
from agentcaps.policy.schema import PolicyKind
from agentcaps.policy.store import PolicyStore, PolicyWatcher, SignalHandler, install_sighup

log = logging.getLogger("agentcaps.policy")

GATEWAY_SUBFOLDER = "gateway"


def gateway_dir_for(policy_dir: Path | None, gateway_policy_dir: Path | None) -> Path | None:
    """The gateway folder: the one given, else `<policy_dir>/gateway` if anything has that name, else None.

    Anything named `gateway` counts, a file or a link to nowhere too: loading
    it then fails and stops the start, where skipping it would run with no
    gateway policy at all.
    """
    if gateway_policy_dir is not None:
        return gateway_policy_dir
    if policy_dir is not None and os.path.lexists(policy_dir / GATEWAY_SUBFOLDER):
        return policy_dir / GATEWAY_SUBFOLDER
    return None


@dataclass(frozen=True, slots=True)
class Policies:
    """The mint policy engine and the optional gateway policy of one deployment."""

    engine: PolicyEngine
    gateway: GatewayPolicy | None = None
    # The mint policy folder, when there is one: where a gateway folder that
    # appears after start-up would be (see `unenforced_gateway`).
    policy_dir: Path | None = None

    @classmethod
    def load(
        cls,
        *,
        policy_dir: str | Path | None = None,
        gateway_policy_dir: str | Path | None = None,
        max_ttl: int = DEFAULT_MAX_TTL,
    ) -> Policies:
        """Load the policies (see the module's docstring for which).

        Raises:
            PolicyError: a folder is missing, or its policies do not parse or validate.
        """
        mint_dir = Path(policy_dir) if policy_dir is not None else None
        engine = PolicyEngine.from_dir(mint_dir) if mint_dir else PolicyEngine.default(max_ttl)
        gateway_dir = gateway_dir_for(
            mint_dir, Path(gateway_policy_dir) if gateway_policy_dir is not None else None
        )
        gateway = (
            GatewayPolicy(PolicyStore.from_dir(gateway_dir, PolicyKind.GATEWAY))
            if gateway_dir is not None
            else None
        )
        return cls(engine, gateway, mint_dir)

    @classmethod
    def from_settings(cls, settings: Settings, *, policy_dir: str | Path | None = None) -> Policies:
        """`load` with a deployment's settings; `policy_dir` (`--policy-dir`) overrides theirs.

        Raises:
            PolicyError: as `load`.
        """
        return cls.load(
            policy_dir=policy_dir if policy_dir is not None else settings.policy_dir,
            gateway_policy_dir=settings.gateway_policy_dir,
            max_ttl=settings.max_ttl,
        )

    @property
    def stores(self) -> list[PolicyStore]:
        """Every store, mint first."""
        return [self.engine.store] + ([self.gateway.store] if self.gateway else [])

    def watch(self, interval: float = 1.0) -> PolicyWatcher:
        """Start reloading the folders when their files change; `stop()` the result to end it."""
        return PolicyWatcher(self.stores, interval).start()

    def install_sighup(self) -> SignalHandler:
        """Reload every store on SIGHUP (call from the main thread), as `reload` does."""
        return install_sighup(*self.stores, after=self._warn_unenforced)

    def reload(self) -> None:
        """Reload every store now (a failed one keeps its running set); log a gateway folder not in force."""
        for store in self.stores:
            store.reload()
        self._warn_unenforced()

    def _warn_unenforced(self) -> None:
        unenforced = self.unenforced_gateway()
        if unenforced is not None:
            log.warning("%s", unenforced)

    def unenforced_gateway(self) -> str | None:
        """Why gateway policies on disk are not in force, when a gateway folder appeared after start-up.

        Whether there is a gateway policy at all is settled at start-up (the
        verifiers are built with it or without); a restart brings in a folder
        added since. Until then this is reported, never silently ignored.
        """
        if self.gateway is not None:
            return None
        folder = gateway_dir_for(self.policy_dir, None)
        if folder is None:
            return None
        return f"{folder} appeared after start-up: its policies are not enforced until a restart"

    def status(self) -> dict[str, Any]:
        """For /readyz details: each set's version and last reload error; `ok` if none failed."""
        mint = self.engine.store.status()
        gateway = self.gateway.store.status() if self.gateway else None
        unenforced = self.unenforced_gateway()
        if unenforced is not None:
            gateway = {"ok": False, "version": "none", "last_error": unenforced}
        return {
            "ok": mint["ok"] and (gateway is None or gateway["ok"]),
            "mint": mint,
            "gateway": gateway,
        }
