"""Revocation over HTTP: a token revokes itself and nothing else; admins and issuers revoke more."""

from __future__ import annotations

import pytest

import agentcaps
from agentcaps import signature, wire
from agentcaps.caveats import Delegate
from tests.conftest import SCOPE
from tests.http.conftest import Api, assert_error

REQUEST = {"resource": "crm/contacts/42", "action": "read"}


def reason(api: Api, token: str) -> str:
    return str(api.post("/v1/verify", {"token": token, **REQUEST}).json()["reason"])


def test_a_token_revokes_itself_with_no_other_credential(api: Api) -> None:
    """POST /v1/revocations {"token": T} with T as bearer → 201, and T is revoked."""
    token = api.agent_token()
    response = api.post("/v1/revocations", {"token": token, "reason": "done"}, token)
    assert response.status_code == 201
    stored = response.json()
    assert stored["kind"] == "token" and stored["reason"] == "done"
    assert "planner" in stored["by"] and token not in response.text
    assert reason(api, token) == "revoked"


def test_a_tokens_branches_revoke_themselves_a_bounded_number_of_times(
    api: Api, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Delegating offline and revoking the new branch costs a holder nothing: one token's tree gets a bounded number.

    A sub-agent that spends the places under its own branch cannot spend its
    siblings', nor stop its orchestrator from revoking it; a branch revoked
    again takes no second place.
    """
    from agentcaps.http import revocations

    monkeypatch.setattr(revocations, "MAX_SELF_REVOCATIONS", 5)
    parent = api.agent_token()
    rogue = agentcaps.attenuate(parent, delegate_to="rogue")
    good = agentcaps.attenuate(parent, delegate_to="good")
    for _ in range(5):
        branch = agentcaps.attenuate(rogue, delegate_to="x")
        for _ in range(2):  # again: no second place
            assert api.post("/v1/revocations", {"token": branch}, branch).status_code == 201
    branch = agentcaps.attenuate(rogue, delegate_to="x")
    for _ in range(2):
        body = assert_error(api.post("/v1/revocations", {"token": branch}, branch), 429)
        assert body["error"] == "too_many_revocations" and "issuer or an admin" in body["detail"]
    assert reason(api, branch) == "ok"  # not revoked
    # The sibling's workers have places of their own, and so do the rogue's
    # own siblings one level down.
    worker = agentcaps.attenuate(good, delegate_to="worker")
    assert api.post("/v1/revocations", {"token": worker}, worker).status_code == 201
    lead = agentcaps.attenuate(parent, delegate_to="lead")
    bad_worker = agentcaps.attenuate(lead, delegate_to="bad")
    good_worker = agentcaps.attenuate(lead, delegate_to="fine")
    for _ in range(5):
        spent = agentcaps.attenuate(bad_worker, delegate_to="x")
        assert api.post("/v1/revocations", {"token": spent}, spent).status_code == 201
    assert api.post("/v1/revocations", {"token": good_worker}, good_worker).status_code == 201
    # First-level branches are the first holder's own: the rogue spent none of theirs.
    assert api.post("/v1/revocations", {"token": rogue}, rogue).status_code == 201
    assert api.post("/v1/revocations", {"token": good}, good).status_code == 201
    assert reason(api, branch) == "revoked" and reason(api, good) == "revoked"
    assert reason(api, parent) == "ok"
    # And the first holder can always revoke the whole token.
    assert api.post("/v1/revocations", {"token": parent}, parent).status_code == 201
    assert reason(api, parent) == "revoked"


def test_deeper_self_revocations_are_bounded_for_the_whole_token(
    api: Api, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Places under each first-level branch, and a total for the token: a first holder making branches freely is bounded too."""
    from agentcaps.http import revocations

    monkeypatch.setattr(revocations, "MAX_SELF_REVOCATIONS", 2)
    monkeypatch.setattr(revocations, "MAX_SELF_REVOCATIONS_DEEP", 3)
    parent = api.agent_token()
    answers = []
    for n in range(3):
        lead = agentcaps.attenuate(parent, delegate_to=f"lead{n}")
        for _ in range(2):
            worker = agentcaps.attenuate(lead, delegate_to="w")
            answers.append(api.post("/v1/revocations", {"token": worker}, worker).status_code)
    assert answers == [201, 201, 201, 429, 429, 429]
    # A first-level branch refused: the message names who still can.
    monkeypatch.setattr(revocations, "MAX_SELF_REVOCATIONS_DEEP", 100)
    for n in range(3):
        lead = agentcaps.attenuate(parent, delegate_to=f"next{n}")
        response = api.post("/v1/revocations", {"token": lead}, lead)
    body = assert_error(response, 429)
    assert "first holder can still revoke the whole token" in body["detail"]


def test_a_token_revokes_itself_only_while_it_is_in_force(api: Api) -> None:
    """An expired copy revokes nothing (a narrowed copy found in a log cannot kill its parent); nor does a token not yet valid."""
    parent = api.agent_token()
    expired = agentcaps.attenuate(
        parent, resources=["crm/contacts/42"], expires_at=int(api.clock()) + 1
    )
    later = api.agent_token(not_before=int(api.clock()) + 600)
    api.clock.advance(5)
    for copy, why in ((expired, "expired"), (later, "not_yet_valid")):
        response = api.post("/v1/revocations", {"token": copy}, copy)
        assert assert_error(response, 401)["reason"] == why
        assert "invalid_token" in response.headers["www-authenticate"]
    assert reason(api, parent) == "ok"
    # An admin may still revoke a token that is no longer in force.
    assert api.post("/v1/revocations", {"token": expired}, api.admin).status_code == 201
    assert reason(api, parent) == "revoked"


def test_a_copy_narrowed_without_a_delegation_cannot_revoke_its_original(api: Api) -> None:
    """What AgentcapsAuth.narrow sends to an API: that API cannot kill the agent's whole token with it."""
    parent = api.agent_token()
    child = agentcaps.attenuate(parent, delegate_to="fetcher")
    for copy in (
        agentcaps.attenuate(
            parent,
            resources=["crm/contacts/42"],
            actions=["read"],
            expires_at=int(api.clock()) + 30,
        ),
        agentcaps.attenuate(parent, audience=["gateway"]),
    ):
        response = api.post("/v1/revocations", {"token": copy}, copy)
        assert assert_error(response, 403)["reason"] == "resource_denied"
        assert "delegate_to" in response.json()["detail"]
    # The same one level down: a copy narrowed from the delegated token
    # would revoke that token's branch.
    narrowed_child = agentcaps.attenuate(child, resources=["crm/contacts/42"])
    response = api.post("/v1/revocations", {"token": narrowed_child}, narrowed_child)
    assert assert_error(response, 403)["reason"] == "resource_denied"
    assert (reason(api, parent), reason(api, child)) == ("ok", "ok")
    # A copy handed on with a delegation of its own revokes its own branch only.
    handed = agentcaps.attenuate(
        child, resources=["crm/contacts/42"], delegate_to="tool", max_delegations=0
    )
    assert api.post("/v1/revocations", {"token": handed}, handed).json()["kind"] == "branch"
    assert (reason(api, parent), reason(api, child), reason(api, handed)) == ("ok", "ok", "revoked")
    assert api.post("/v1/revocations", {"token": child}, child).json()["kind"] == "branch"
    assert (reason(api, parent), reason(api, child)) == ("ok", "revoked")


def test_a_delegated_token_revokes_its_branch_not_its_parent(api: Api) -> None:
    """A delegated token revoking itself revokes its delegation branch; the parent stays allowed."""
    parent = api.agent_token()
    child = agentcaps.attenuate(parent, delegate_to="fetcher")
    grandchild = agentcaps.attenuate(child, delegate_to="summarizer")
    stored = api.post("/v1/revocations", {"token": child}, child).json()
    assert stored["kind"] == "branch"
    assert (reason(api, child), reason(api, grandchild), reason(api, parent)) == (
        "revoked",
        "revoked",
        "ok",
    )


def test_a_token_can_revoke_nothing_but_itself(api: Api) -> None:
    """An agent token cannot revoke another token, its customer, its user, an agent or a key."""
    token = api.agent_token()
    other = api.agent_token(agent="writer")
    child = agentcaps.attenuate(token, delegate_to="fetcher")
    attempts = [
        {"token": other},
        {"token": child},  # derived from it, but not it
        {"customer": "acme"},
        {"customer": "acme", "user": "alice"},
        {"agent": "writer"},
        {"token_id": agentcaps.inspect(other)["token_id"]},
        {"key_id": agentcaps.inspect(other)["key_id"]},
    ]
    for body in attempts:
        assert_error(api.post("/v1/revocations", body, token), 403)
    assert (reason(api, token), reason(api, other), reason(api, child)) == ("ok", "ok", "ok")
    # A parent cannot revoke its child's branch on its own either; the child can.
    assert api.post("/v1/revocations", {"token": child}, child).status_code == 201


def test_an_issuer_revokes_its_customers_tokens_not_anothers(api: Api) -> None:
    """An issuer of acme may revoke acme's tokens by token, user or customer; not globex's."""
    issuer = api.issuer("acme")
    acme = api.agent_token()
    globex = api.agent_token(customer="globex")
    assert_error(api.post("/v1/revocations", {"token": globex}, issuer), 403)
    assert_error(api.post("/v1/revocations", {"customer": "globex"}, issuer), 403)
    assert api.post("/v1/revocations", {"token": acme}, issuer).status_code == 201
    assert (reason(api, acme), reason(api, globex)) == ("revoked", "ok")


def test_a_token_minted_in_the_second_of_a_revocation_is_not_born_revoked(api: Api) -> None:
    """Revoke a customer, a user or an agent, then mint for them in the same second: the new token works.

    A revocation takes what was issued up to and including its second, so
    the mint waits for the next second (the test clock moves when it waits);
    a revocation made after the mint still takes the new token.
    """
    now = int(api.clock())
    for body in ({"customer": "acme", "user": "alice"}, {"customer": "acme"}, {"agent": "planner"}):
        assert api.post("/v1/revocations", body, api.admin).status_code == 201
    minted = api.post("/v1/tokens", {**SCOPE, "ttl": 600}, api.admin).json()
    assert minted["issued_at"] == now + 1 == int(api.clock()) and minted["expires_at"] == now + 601
    assert reason(api, minted["token"]) == "ok"
    # The same for a customer's new issuer token after that customer's revocation.
    issuer = api.post("/v1/issuers", {"customer": "acme", "ttl": 600}, api.admin).json()["token"]
    assert api.post("/v1/tokens", {**SCOPE, "ttl": 60}, issuer).status_code == 201
    # Never dated ahead: a revocation made after the mint, in its second, takes it.
    assert api.post("/v1/revocations", {"customer": "acme"}, api.admin).status_code == 201
    assert reason(api, minted["token"]) == "revoked"
    # With nothing revoked this second, a token is dated now, at once.
    api.clock.advance(5)
    at = int(api.clock())
    later = api.post("/v1/tokens", {**SCOPE, "user": "bob", "ttl": 60}, api.admin).json()
    assert later["issued_at"] == at == int(api.clock())


def test_each_kind_of_revocation_takes_effect(api: Api) -> None:
    """token_id, delegation_id, customer, user, agent and key_id revocations each deny their tokens."""
    admin = api.admin
    by_id = api.agent_token()
    delegated = agentcaps.attenuate(api.agent_token(), delegate_to="fetcher")
    user_tok = api.agent_token(user="bob")
    agent_tok = api.agent_token(agent="crawler")
    customer_tok = api.agent_token(customer="initech")
    key_tok = api.agent_token(customer="hooli")
    bystander = api.agent_token(customer="umbrella")
    bodies = [
        {"token_id": agentcaps.inspect(by_id)["token_id"]},
        {"delegation_id": agentcaps.inspect(delegated)["delegation_ids"][-1]},
        {"customer": "acme", "user": "bob"},
        {"agent": "crawler"},
        {"customer": "initech"},
        {"key_id": agentcaps.inspect(key_tok)["key_id"]},
    ]
    for body in bodies:
        response = api.post("/v1/revocations", {**body, "reason": "test"}, admin)
        assert response.status_code == 201, response.text
        assert response.json()["kind"] in (
            "token",
            "delegation",
            "user",
            "agent",
            "customer",
            "key",
        )
    for token in (by_id, delegated, user_tok, agent_tok, customer_tok):
        assert reason(api, token) == "revoked"
    assert reason(api, key_tok) == "key_revoked"
    assert reason(api, bystander) == "ok"
    listed = api.get("/v1/revocations", admin).json()["revocations"]
    assert sorted(r["kind"] for r in listed) == sorted(
        ["token", "delegation", "user", "agent", "customer", "key"]
    )


def test_a_revocation_names_exactly_one_target(api: Api) -> None:
    """Zero or two targets, or a user without a customer, are 422 invalid_request."""
    bodies = (
        {},
        {"agent": "a", "token_id": "ab" * 16},
        {"customer": "c", "key_id": "k1"},
        {"user": "alice"},
        {"reason": "x"},
    )
    for body in bodies:
        assert_error(api.post("/v1/revocations", body, api.admin), 422, "invalid_request")


def test_revoking_a_forged_token_is_422_and_an_unknown_key_404(api: Api) -> None:
    """A body token that is not authentic cannot be revoked (422); an unknown key id is 404."""
    token = api.agent_token()
    forged = token[:-3] + ("AAA" if not token.endswith("AAA") else "BBB")
    assert_error(api.post("/v1/revocations", {"token": forged}, forged), 422, "invalid_token")
    assert_error(api.post("/v1/revocations", {"key_id": "knope"}, api.admin), 404, "unknown_key")


def test_ids_must_be_lowercase_hex(api: Api) -> None:
    """Token and delegation ids are 32 lowercase hex characters; anything else is 422."""
    for value in ("AB" * 16, "ab" * 15, "zz" * 16):
        assert_error(api.post("/v1/revocations", {"token_id": value}, api.admin), 422)


def test_a_token_pasted_into_a_reason_is_never_shown_back(api: Api) -> None:
    """The reason is stored, answered and listed with the token masked, as the audit event has it."""
    leaked = api.agent_token()
    posted = api.post(
        "/v1/revocations", {"token": leaked, "reason": f"pasted: {leaked}"}, api.admin
    )
    assert posted.status_code == 201 and posted.json()["reason"] == "pasted: [token]"
    listed = api.get("/v1/revocations", api.admin)
    assert leaked not in listed.text and "pasted: [token]" in listed.text


def test_a_token_cannot_revoke_another_tokens_branch_by_naming_its_delegation_id(api: Api) -> None:
    """A holder may append a delegate caveat with any id; revoking itself takes only its own branch."""
    victim = agentcaps.attenuate(api.agent_token(), delegate_to="fetcher")
    [victim_branch] = agentcaps.inspect(victim)["delegation_ids"]  # type: ignore[misc]
    other = api.agent_token(customer="globex", user="mallory")
    raw = agentcaps.decode_unverified(other).raw
    forged_caveat = Delegate("x", bytes.fromhex(victim_branch)).encode()
    attacker = wire.encode_token(
        raw._replace(
            cids=raw.cids + (forged_caveat,),
            signature=signature.extend(raw.signature, forged_caveat),
        )
    )
    stored = api.post("/v1/revocations", {"token": attacker}, attacker)
    assert stored.status_code == 201 and stored.json()["kind"] == "branch"
    assert reason(api, attacker) == "revoked"
    assert reason(api, victim) == "ok"
