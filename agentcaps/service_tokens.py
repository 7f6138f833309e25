"""The service's own tokens: admin and issuer tokens, and how a request to the service is authorised.

Everything is a token (DESIGN.md): the service has no API keys. An admin
token and an issuer token are ordinary agentcaps tokens with audience
`agentcaps`, signed by the platform's root key. The service names what each
request touches as a resource under `agentcaps/` and an action, and lets a
request through when the bearer token allows exactly that, *and* was signed
by a platform key. The second condition is what keeps agent tokens out: a
customer's issuer mints agent tokens with the customer's key, so whatever
caveats such a token carries, it never acts as a service token.

Resources named here (customer names are percent-encoded into one segment,
so no name can reach another customer's resources):

    agentcaps/admin/<what>                   admin routes (action `admin`)
    agentcaps/customers/<C>/tokens           minting for customer C (`mint`)
    agentcaps/customers/<C>/revocations      revoking C's tokens (`revoke`)
    agentcaps/customers/<C>/audit            reading C's audit events (`audit`)
"""

from __future__ import annotations

from collections.abc import Sequence
from urllib.parse import quote

from agentcaps.decision import Decision, Reason
from agentcaps.errors import InvalidArgument, NotAllowed, NotAuthenticated, refusal
from agentcaps.keys import KeyStore
from agentcaps.mint import MintedToken, Minter
from agentcaps.verify import Verifier

SERVICE_AUDIENCE = "agentcaps"
# The principal of admin tokens: the platform itself, as a customer name.
PLATFORM_CUSTOMER = "agentcaps"
ADMIN_AGENT = "admin"
ISSUER_AGENT = "issuer"
ISSUER_USER = "issuer"

ADMIN_ACTIONS = ("admin", "mint", "revoke")
# What an admin token allows (and what its mint event records).
ADMIN_SCOPE: dict[str, list[str]] = {
    "resources": [f"{SERVICE_AUDIENCE}/**"],
    "actions": list(ADMIN_ACTIONS),
    "purposes": ["administer"],
    "audience": [SERVICE_AUDIENCE],
}
ISSUER_ACTIONS = ("mint", "revoke", "audit")


def segment(name: str) -> str:
    """`name` as exactly one resource segment: percent-encoded, so never `/`, `*`, `.` or `..`.

    The encoding is injective (`%` itself is encoded), so two names never share a segment.
    """
    return quote(name, safe="").replace(".", "%2E")


def admin_resource(what: str) -> str:
    """The resource of an admin route, e.g. `agentcaps/admin/keys`."""
    return f"{SERVICE_AUDIENCE}/admin/{what}"


def customer_resource(customer: str, what: str) -> str:
    """The resource of customer `customer`'s `what` (`tokens`, `revocations`)."""
    return f"{SERVICE_AUDIENCE}/customers/{segment(customer)}/{what}"


def mint_admin_token(minter: Minter, *, ttl: int, name: str = "admin") -> MintedToken:
    """An admin token for admin `name`: every service route, signed by the platform key.

    Raises:
        InvalidArgument: a bad name or ttl (the minter's max ttl applies).
        StoreUnavailable: the key store did not answer.
    """
    return minter.issue(
        customer=PLATFORM_CUSTOMER,
        user=name,
        agent=ADMIN_AGENT,
        resources=ADMIN_SCOPE["resources"],
        actions=ADMIN_SCOPE["actions"],
        purposes=ADMIN_SCOPE["purposes"],
        audience=ADMIN_SCOPE["audience"],
        ttl=ttl,
        platform_key=True,
    )


def mint_issuer_token(minter: Minter, *, customer: str, ttl: int) -> MintedToken:
    """An issuer token for `customer`: mint and revoke that customer's agent tokens, read its audit trail.

    Raises:
        InvalidArgument: a bad customer name or ttl.
        StoreUnavailable: the key store did not answer.
    """
    return minter.issue(
        customer=customer,
        user=ISSUER_USER,
        agent=ISSUER_AGENT,
        resources=[f"{SERVICE_AUDIENCE}/customers/{segment(customer)}/**"],
        actions=list(ISSUER_ACTIONS),
        purposes=["issue"],
        ttl=ttl,
        audience=[SERVICE_AUDIENCE],
        platform_key=True,
    )


class ServiceAuthority:
    """Decides whether a bearer token may do one thing at the service.

    Args:
        keys: root keys, to tell platform keys from customer keys.
        verifier: a Verifier whose audience is `agentcaps`.
    """

    def __init__(self, keys: KeyStore, verifier: Verifier) -> None:
        self._keys = keys
        self._verifier = verifier

    def authorize(self, token: str | None, resource: str, action: str) -> Decision:
        """The allowing decision of `token` for `action` on `resource`, else raise.

        Raises:
            NotAuthenticated: no token, or one that is unacceptable (forged,
                expired, revoked, unreadable).
            NotAllowed: an acceptable token that is not a service token (not
                signed by a platform key) or does not cover this request.
            StoreUnavailable: revocation state or keys cannot be read now.
        """
        if token is None:
            raise NotAuthenticated("this route needs a bearer token (Authorization: Bearer agc_…)")
        decision = self._verifier.verify(token, resource=resource, action=action)
        if decision.allowed:
            self._require_platform_key(decision)
            return decision
        error = refusal(decision)
        if isinstance(error, NotAllowed):
            # Say "not a service token" before "not this resource": it is the
            # truer reason for an agent token, whatever its caveats.
            self._require_platform_key(decision)
        raise error

    def authenticate(self, token: object, *, in_force: bool = False) -> Decision:
        """Whether `token` is authentic (signature and key), saying nothing of what it allows.

        With `in_force`, also whether it could be used now (Verifier.authenticate).
        """
        return self._verifier.authenticate(token, in_force=in_force)

    def _require_platform_key(self, decision: Decision) -> None:
        assert decision.key_id is not None  # an authentic token has a key id
        key = self._keys.get(decision.key_id)
        if key is None or key.customer is not None:
            raise NotAllowed(
                "this token is not a service token: it was not issued by the service for an "
                "admin or an issuer",
                Reason.AUDIENCE_DENIED,
            )


def is_admin(decision: Decision) -> bool:
    """True when an authorised service token (see ServiceAuthority) is an admin token.

    Judged by the holder it was minted for, not the last one: any holder can
    delegate a token offline, and a delegated admin token is still an admin's
    (its chain shows to whom it went).
    """
    return (
        decision.customer == PLATFORM_CUSTOMER
        and bool(decision.chain)
        and decision.chain[0] == ADMIN_AGENT
    )


def caller(decision: Decision) -> str:
    """Who made a request, for the `by` of a revocation and the audit trail (no secrets)."""
    chain = ">".join(decision.chain)
    return f"{decision.customer}/{decision.user} via {chain} (token {decision.token_id})"


def reserved_customer(customer: str) -> None:
    """Refuse issuer or agent tokens for the platform's own customer name.

    Admin tokens are principal (`agentcaps`, admin name): a customer of that
    name could revoke or impersonate them through customer-wide operations.

    Raises:
        InvalidArgument: `customer` is `agentcaps`.
    """
    if customer == PLATFORM_CUSTOMER:
        raise InvalidArgument(
            f"customer: {PLATFORM_CUSTOMER!r} is reserved for the service's admin tokens"
        )


def reserved_audience(audience: Sequence[str] | None) -> None:
    """Refuse an agent token's audience that names the service itself.

    Raises:
        InvalidArgument: `audience` includes `agentcaps`.
    """
    if audience is not None and SERVICE_AUDIENCE in audience:
        raise InvalidArgument(
            f"audience: {SERVICE_AUDIENCE!r} is reserved for the service's own tokens"
        )
