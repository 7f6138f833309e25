"""The service's own tokens: admin and issuer tokens, the platform-key rule, encoded customer names."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

import agentcaps
from agentcaps.decision import Decision, Reason
from agentcaps.errors import (
    InvalidArgument,
    NotAllowed,
    NotAuthenticated,
    StoreUnavailable,
    refusal,
)
from agentcaps.mint import Minter
from agentcaps.service_tokens import (
    SERVICE_AUDIENCE,
    ServiceAuthority,
    admin_resource,
    customer_resource,
    mint_admin_token,
    mint_issuer_token,
    reserved_audience,
    segment,
)
from agentcaps.stores.redis import Stores
from tests.conftest import SCOPE, FakeClock


@pytest.fixture
def authority(memory_stores: Stores, clock: FakeClock) -> ServiceAuthority:
    verifier = memory_stores.verifier(clock=clock, audience=SERVICE_AUDIENCE)
    return ServiceAuthority(memory_stores.keys, verifier)


@pytest.fixture
def service_minter(memory_stores: Stores, clock: FakeClock) -> Minter:
    return Minter(memory_stores.keys, clock=clock, max_ttl=86400)


def test_admin_tokens_are_platform_signed_and_cover_every_service_route(
    authority: ServiceAuthority, service_minter: Minter, memory_stores: Stores
) -> None:
    """An admin token: principal (agentcaps, name), audience agentcaps, the platform key."""
    admin = mint_admin_token(service_minter, ttl=600, name="ops")
    assert memory_stores.keys.get(admin.key_id).customer is None  # type: ignore[union-attr]
    view = agentcaps.inspect(admin.token)
    assert (view["customer"], view["user"], view["agent"]) == ("agentcaps", "ops", "admin")
    for resource, action in ((admin_resource("keys"), "admin"),
                             (customer_resource("acme", "tokens"), "mint"),
                             (customer_resource("globex", "revocations"), "revoke")):  # fmt: skip
        assert authority.authorize(admin.token, resource, action).allowed


def test_issuer_tokens_cover_their_customer_only(
    authority: ServiceAuthority, service_minter: Minter
) -> None:
    """An issuer of acme mints and revokes acme's tokens; not globex's, not admin routes."""
    issuer = mint_issuer_token(service_minter, customer="acme", ttl=600).token
    assert authority.authorize(issuer, customer_resource("acme", "tokens"), "mint").allowed
    assert authority.authorize(issuer, customer_resource("acme", "revocations"), "revoke").allowed
    with pytest.raises(NotAllowed) as denied:
        authority.authorize(issuer, customer_resource("globex", "tokens"), "mint")
    assert denied.value.reason is Reason.RESOURCE_DENIED
    with pytest.raises(NotAllowed):
        authority.authorize(issuer, admin_resource("keys"), "admin")


def test_a_customer_signed_token_is_never_a_service_token(
    authority: ServiceAuthority, memory_stores: Stores, clock: FakeClock
) -> None:
    """A token scoped exactly like an admin's but signed by a customer key is refused."""
    lookalike = memory_stores.minter(clock=clock).mint(
        **{**SCOPE, "resources": ["agentcaps/**"], "actions": ["admin"], "audience": ["agentcaps"]}
    )
    with pytest.raises(NotAllowed, match="not a service token"):
        authority.authorize(lookalike, admin_resource("keys"), "admin")


def test_no_token_and_bad_tokens_are_not_authenticated(
    authority: ServiceAuthority, service_minter: Minter, clock: FakeClock
) -> None:
    """None, garbage and expired tokens raise NotAuthenticated with the reason."""
    with pytest.raises(NotAuthenticated) as none:
        authority.authorize(None, admin_resource("keys"), "admin")
    assert none.value.reason is None
    with pytest.raises(NotAuthenticated) as garbage:
        authority.authorize("agc_zz", admin_resource("keys"), "admin")
    assert garbage.value.reason is Reason.MALFORMED
    admin = mint_admin_token(service_minter, ttl=60).token
    clock.advance(61)
    with pytest.raises(NotAuthenticated) as expired:
        authority.authorize(admin, admin_resource("keys"), "admin")
    assert expired.value.reason is Reason.EXPIRED


def test_refusal_sorts_reasons_into_401_403_and_503_errors() -> None:
    """Token faults → NotAuthenticated, request faults → NotAllowed, unknown state → StoreUnavailable."""
    assert isinstance(refusal(Decision(False, Reason.REVOKED)), NotAuthenticated)
    assert isinstance(refusal(Decision(False, Reason.BAD_SIGNATURE)), NotAuthenticated)
    assert isinstance(refusal(Decision(False, Reason.ACTION_DENIED)), NotAllowed)
    assert isinstance(refusal(Decision(False, Reason.AUDIENCE_DENIED)), NotAllowed)
    assert isinstance(refusal(Decision(False, Reason.REVOCATION_UNAVAILABLE)), StoreUnavailable)


@given(st.text(min_size=1, max_size=40), st.text(min_size=1, max_size=40))
def test_customer_segments_are_single_distinct_segments(a: str, b: str) -> None:
    """segment() never yields '/', '*', '.', '..' or '', and two names never share one."""
    sa = segment(a)
    assert "/" not in sa and "*" not in sa and sa not in ("", ".", "..") and "." not in sa
    if a != b:
        assert sa != segment(b)


def test_the_service_audience_is_reserved() -> None:
    """An agent token's audience may not name `agentcaps`."""
    reserved_audience(["crm"])
    reserved_audience(None)
    with pytest.raises(InvalidArgument):
        reserved_audience(["crm", "agentcaps"])
