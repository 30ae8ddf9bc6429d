from lfsserve.urls import TrustedProxies, external_base

PROXY = TrustedProxies(["10.0.0.0/8", "::1"])
FWD = {"X-Forwarded-Proto": "https", "X-Forwarded-Host": "hg.example.com, inner", "X-Forwarded-Prefix": "/hg/"}


def base(peer, headers, base_url=""):
    return external_base(scheme="http", host="backend:8080", peer=peer, headers=headers,
                         base_url=base_url, proxies=PROXY)


def test_untrusted_peer_headers_ignored():
    assert base("192.0.2.1", FWD) == "http://backend:8080"


def test_trusted_peer_x_forwarded():
    assert base("10.1.2.3", FWD) == "https://hg.example.com/hg"
    assert base("::1", FWD) == "https://hg.example.com/hg"


def test_forwarded_header_preferred():
    h = {"Forwarded": 'for=1.2.3.4;proto=https;host="h.example:8443", for=5.6.7.8', "X-Forwarded-Prefix": "/x"}
    assert base("10.0.0.1", h) == "https://h.example:8443/x"


def test_base_url_wins():
    assert base("10.0.0.1", FWD, base_url="https://other/p/") == "https://other/p"


def test_hostile_values_dropped():
    h = {"X-Forwarded-Host": "evil.com/<script>", "X-Forwarded-Proto": "javascript", "X-Forwarded-Prefix": "no-slash"}
    assert base("10.0.0.1", h) == "http://backend:8080"
