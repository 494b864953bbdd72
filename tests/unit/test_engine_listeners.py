"""The Engine API's listeners: addresses, plaintext only on loopback, a certificate docker verifies."""

from __future__ import annotations

import datetime as dt
import ipaddress

import pytest
from cryptography import x509

from minisw.manager.ca import RootCA
from minisw.manager.engineapi import default_engine_api_addr, parse_listener
from minisw.manager.errors import InvalidArgument
from minisw.proto.pki import MANAGER_OU, new_key_and_csr


def test_default_address_is_control_port_plus_three() -> None:
    assert default_engine_api_addr("127.77.0.11:4242") == "127.77.0.11:4245"


def test_plaintext_only_on_loopback() -> None:
    assert parse_listener("127.0.0.1:2375", plaintext=True).plaintext
    assert parse_listener("unix:///run/minisw.sock").socket_path == "/run/minisw.sock"
    with pytest.raises(InvalidArgument, match=r"plaintext Engine API on 10\.0\.0\.5 refused"):
        parse_listener("10.0.0.5:2375", plaintext=True)
    with pytest.raises(InvalidArgument, match="expected HOST:PORT"):
        parse_listener("nowhere")


def test_a_certificate_names_the_addresses_it_is_signed_for() -> None:
    root = RootCA.create()
    _, csr = new_key_and_csr()
    pem = root.sign(csr, "node1", MANAGER_OU, "c1", dt.timedelta(days=1), addresses=["127.77.0.11", "localhost"])
    names = x509.load_pem_x509_certificate(pem).extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert ipaddress.ip_address("127.77.0.11") in names.get_values_for_type(x509.IPAddress)
    assert {"node1", "swarm-manager", "localhost"} <= set(names.get_values_for_type(x509.DNSName))
