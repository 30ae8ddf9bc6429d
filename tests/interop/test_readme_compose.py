"""The README's docker compose example of several instances (nginx, two lfsserve, PostgreSQL,
MinIO), read from README.md itself so that it cannot drift: the lfsserve configuration it gives
(the image's ENV from the Dockerfile, then the compose environment) loads with lfsserve's own
loader and says what the services provide, and its nginx configuration (deploy/nginx.conf with the
README's upstream) passes `nginx -t`. No containers are started: the parts are checked one by one.
"""

from __future__ import annotations

import re
import subprocess
import urllib.parse

import pytest
import yaml

from lfsserve.config import load_config

from ..support import REPO_ROOT, require_program
from .test_readme import blocks

pytestmark = pytest.mark.interop

README = REPO_ROOT / "README.md"


def _section() -> str:
    text = README.read_text(encoding="utf-8")
    start = text.index("\n### Several instances\n")
    return text[start:text.index("\n### ", start + 1)]


def _compose() -> dict:
    (block,) = [b for lang, b in blocks(_section()) if lang == "yaml"]
    return yaml.safe_load(block)


def _upstream() -> str:
    (block,) = [b for lang, b in blocks(_section()) if lang == "nginx"]
    return block


def _image_env() -> dict[str, str]:
    """The ENV lines of the Dockerfile (the image the compose file runs)."""
    text = (REPO_ROOT / "Dockerfile").read_text().replace("\\\n", " ")
    env: dict[str, str] = {}
    for line in text.splitlines():
        if line.startswith("ENV "):
            env.update(re.findall(r"(\w+)=(\S+)", line))
    return env


def test_compose_lfsserve_configuration_loads_and_matches_the_services():
    compose = _compose()
    services = compose["services"]
    instances = [name for name, svc in services.items() if svc.get("image") == "lfsserve"]
    assert len(instances) >= 2, "the example runs several lfsserve instances"
    env = {**_image_env(), **{k: str(v) for k, v in services[instances[0]]["environment"].items()}}
    config = load_config(env=env)  # raises on an unknown LFSSERVE_ variable or a bad value

    assert (config.server.host, config.server.port) == ("0.0.0.0", 8080)
    assert config.server.trusted_proxies  # nginx's forwarded headers are believed
    # PostgreSQL: the URL names the postgres service with the user, password and database it creates
    db = urllib.parse.urlsplit(config.database.url)
    pg = services[db.hostname]
    assert pg["image"].startswith("postgres")
    assert (db.username, db.password, db.path.lstrip("/")) == (
        pg["environment"]["POSTGRES_USER"], pg["environment"]["POSTGRES_PASSWORD"], pg["environment"]["POSTGRES_DB"])
    # MinIO: the endpoint is the minio service, the credentials its root user, the bucket the one made
    st = config.storage
    assert st.backend == "s3" and st.addressing_style == "path"
    endpoint = urllib.parse.urlsplit(st.endpoint_url)
    minio = services[endpoint.hostname]
    assert minio["image"].startswith("minio/minio")
    assert (env["AWS_ACCESS_KEY_ID"], env["AWS_SECRET_ACCESS_KEY"]) == (
        minio["environment"]["MINIO_ROOT_USER"], minio["environment"]["MINIO_ROOT_PASSWORD"])
    assert f"mc mb -p m/{st.bucket}" in " ".join(services["minio-bucket"]["entrypoint"])
    # every instance the same, sharing the data volume (the repositories)
    for name in instances:
        assert services[name] == services[instances[0]]
    assert any(v.endswith(":" + str(config.root)) for v in services[instances[0]]["volumes"])
    # nginx's upstream lists exactly the instances, on lfsserve's port
    upstream = re.findall(r"server\s+([\w.-]+):(\d+);", _upstream())
    assert sorted(upstream) == sorted((name, str(config.server.port)) for name in instances)
    assert services["nginx"]["depends_on"] == instances


def test_compose_nginx_configuration_passes_nginx_t(tmp_path):
    exe = require_program("nginx", "apt-get install -y nginx-light")
    site = (REPO_ROOT / "deploy" / "nginx.conf").read_text()
    upstream = re.search(r"^upstream lfsserve \{.*?^\}\n", site, flags=re.DOTALL | re.MULTILINE)
    assert upstream is not None, "deploy/nginx.conf no longer has its upstream block"
    # the README's upstream in place of deploy/nginx.conf's, its hosts made resolvable here
    # (nginx -t resolves them; the compose services' names exist only on the compose network)
    readme = re.sub(r"server\s+[\w.-]+:(\d+);", r"server 127.0.0.1:\1;", _upstream())
    assert readme.count("server 127.0.0.1:") >= 2
    (tmp_path / "site.conf").write_text(site.replace(upstream.group(0), readme))
    temp = "\n".join(f"    {kind}_temp_path {tmp_path / kind};" for kind in
                     ("client_body", "proxy", "fastcgi", "uwsgi", "scgi"))
    (tmp_path / "nginx.conf").write_text(
        f"pid {tmp_path / 'nginx.pid'};\nerror_log {tmp_path / 'error.log'};\nevents {{}}\n"
        f"http {{\n    access_log off;\n{temp}\n    include {tmp_path / 'site.conf'};\n}}\n")
    res = subprocess.run([exe, "-t", "-p", str(tmp_path), "-c", str(tmp_path / "nginx.conf"), "-e",
                          str(tmp_path / "error.log")], capture_output=True, text=True, timeout=60)
    assert res.returncode == 0, res.stderr
    assert "test is successful" in res.stderr
