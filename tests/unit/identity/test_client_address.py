from services.identity.entrypoints.http_api import client_address

PROXY = "10.0.0.5"  # the load balancer the service sees as its peer


def test_behind_one_proxy_the_client_is_the_entry_it_appended_not_the_one_the_client_sent() -> None:
    spoofed = ["203.0.113.1, 198.51.100.23"]  # the client sent "203.0.113.1"; our proxy appended its peer
    assert client_address(PROXY, spoofed, 1) == "198.51.100.23"


def test_behind_two_proxies_the_client_is_the_entry_the_outer_one_appended() -> None:
    chain = ["6.6.6.6, 198.51.100.23, 172.16.0.9"]  # client's own, outer proxy's, inner proxy's
    assert client_address(PROXY, chain, 2) == "198.51.100.23"


def test_repeated_headers_are_read_as_one_list() -> None:
    assert client_address(PROXY, ["6.6.6.6", "198.51.100.23"], 1) == "198.51.100.23"


def test_fewer_entries_than_proxies_take_the_furthest_one() -> None:
    assert client_address(PROXY, ["198.51.100.23"], 2) == "198.51.100.23"


def test_no_header_or_a_malformed_entry_falls_back_to_the_peer() -> None:
    assert client_address(PROXY, [], 1) == PROXY
    assert client_address(PROXY, [" , "], 1) == PROXY
    assert client_address(PROXY, ["198.51.100.23, not-an-address"], 1) == PROXY


def test_addresses_are_written_in_one_form_whatever_their_spelling() -> None:
    assert client_address(PROXY, ["2001:DB8:0:0::1"], 1) == "2001:db8::1"
