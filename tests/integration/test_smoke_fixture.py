from tests.conftest import real_stores


def test_real_server_fixture_serves_stores(redis_server, clock):
    """A real redis-server starts and the stores mint and verify on it."""
    stores = real_stores(redis_server, clock)
    token = stores.minter(clock=clock).mint(customer="acme", user="alice", agent="planner", resources=["crm/**"], actions=["read"], purposes=["sync"], ttl=60)
    assert stores.verifier(clock=clock).verify(token, resource="crm/x", action="read").allowed
    stores.close()
