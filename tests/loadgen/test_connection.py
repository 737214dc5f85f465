"""Credentials, secrets and TLS trust, against real servers on 127.0.0.1.

The HTTPS server is ``tests/servers/misbehaving.py`` behind a self-signed
certificate generated for the test with the ``openssl`` command.
"""

from __future__ import annotations

import shutil
import ssl
import subprocess
import sys
from pathlib import Path

import pytest

from loadgen.client import Target
from loadgen.config import ConfigError, RunConfig
from loadgen.connection import Connection
from loadgen.control import ControlError, models
from loadgen.records import Prompt
from loadgen.redaction import mask_secrets, mask_url, secret_values, split_credentials
from loadgen.workload.verify import verify_with_server
from tests.conftest import REPO_ROOT
from tests.loadgen.conftest import send_all
from tests.servers.misbehaving import MODEL, MisbehavingServer


def prompts(n: int, out: int = 6) -> list[Prompt]:
    return [Prompt(i, 4, out, text=f"hello {i}") for i in range(n)]


# ---------------------------------------------------------------- secrets and URLs


def test_split_and_mask_credentials_in_a_url() -> None:
    assert split_credentials("http://bob:s%40cret@10.0.0.5:8000/v1") == ("http://10.0.0.5:8000/v1", ("bob", "s@cret"))
    assert split_credentials("https://h:1") == ("https://h:1", None)
    assert mask_url("http://bob:pw@h:1/x") == "http://***@h:1/x"
    assert mask_url("http://h:1/x") == "http://h:1/x"
    secrets = secret_values("sk-1", ("bob", "pw"))
    # the Basic token of bob:pw is Ym9iOnB3
    assert mask_secrets("key sk-1, auth Basic Ym9iOnB3, pw", secrets) == "key ***, auth Basic ***, ***"


def test_config_takes_credentials_out_of_the_url() -> None:
    cfg = RunConfig.from_flat(base_url="http://bob:s%40cret@127.0.0.1:8000")
    assert cfg.target.base_url == "http://127.0.0.1:8000"
    assert cfg.target.basic_auth == ("bob", "s@cret")
    stored = str(cfg.to_dict())
    assert "s@cret" not in stored and "bob" not in stored
    assert cfg.connection().authorization(None) == "Basic Ym9iOnNAY3JldA=="
    with pytest.raises(ConfigError, match="--api-key"):
        RunConfig.from_flat(base_url="http://bob:pw@127.0.0.1:8000", api_key="sk-x")


def test_basic_credentials_reach_the_server_and_an_echo_of_them_is_masked() -> None:
    with MisbehavingServer() as srv:
        srv.set("echo_auth", good_first=2)
        conn = Connection(basic_auth=("bob", "pw-9d8c"))
        assert [m.id for m in models(srv.base_url, connection=conn)] == [MODEL]
        recs = send_all(Target(srv.base_url, "vllm", MODEL, connection=conn), prompts(3), limit=1)
    assert srv.seen_auth == ["Basic Ym9iOnB3LTlkOGM="] * 3  # the credentials went as a Basic header
    assert [r.error for r in recs] == [None, None, "http_401"]
    assert "Basic ***" in recs[2].error_detail and "Ym9iOnB3LTlkOGM" not in recs[2].error_detail


# ---------------------------------------------------------------- output that decodes to nothing


def test_tokens_without_visible_text_are_output_timed_from_the_first_token() -> None:
    with MisbehavingServer() as srv:
        srv.set("invisible", good_first=0)
        (rec,) = send_all(Target(srv.base_url, "vllm", MODEL), prompts(1))  # vllm: running usage per chunk
        srv.set("usage_only", good_first=0)
        (rec_openai,) = send_all(Target(srv.base_url, "openai", MODEL), prompts(1))  # usage only at the end
    # six events, one token each; tokens 1, 3 and 5 carry no text
    assert rec.error is None and rec.output_tokens == 6
    assert list(rec.chunk_tokens) == [1] * 6 and len(rec.chunk_ns) == 6
    assert rec.first_ns == rec.chunk_ns[0]  # the first token, although it was invisible
    assert rec.invisible_tokens == 3
    # no visible text at all, and no running usage: the final usage says 6 tokens came
    assert rec_openai.error is None and rec_openai.output_tokens == 6
    assert rec_openai.invisible_tokens == 6 and list(rec_openai.chunk_tokens) == [6]


# ---------------------------------------------------------------- TLS


@pytest.fixture(scope="module")
def tls_files(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    if shutil.which("openssl") is None:
        pytest.skip("needs the openssl command to make a self-signed certificate")
    folder = tmp_path_factory.mktemp("tls")
    cert, key = folder / "cert.pem", folder / "key.pem"
    subprocess.run(
        ["openssl", "req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes",
         "-keyout", str(key), "-out", str(cert), "-days", "2", "-subj", "/CN=127.0.0.1",
         "-addext", "subjectAltName=IP:127.0.0.1"],
        check=True, capture_output=True, timeout=60,
    )
    return cert, key


@pytest.fixture
def tls_server(tls_files: tuple[Path, Path]):
    cert, key = tls_files
    ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    ctx.load_cert_chain(cert, key)
    with MisbehavingServer(ssl_context=ctx) as srv:
        yield srv


def test_self_signed_server_is_refused_with_the_way_forward(tls_server: MisbehavingServer) -> None:
    (rec,) = send_all(Target(tls_server.base_url, "vllm", MODEL), prompts(1))
    assert rec.error == "connect"
    for needle in ("certificate verification failed", "--ca-cert FILE", "--insecure"):
        assert needle in rec.error_detail, rec.error_detail
    with pytest.raises(ControlError) as err:
        models(tls_server.base_url)
    assert err.value.kind == "tls"
    assert "certificate verification failed" in str(err.value) and "--ca-cert" in str(err.value)
    assert "is the server running" not in str(err.value)
    res = verify_with_server(tls_server.base_url, MODEL, prompts(1))
    assert "certificate verification failed" in res.message


@pytest.mark.parametrize("how", ["ca_cert", "insecure"])
def test_trusted_or_unverified_https_streams(tls_server: MisbehavingServer, tls_files, how: str) -> None:
    conn = Connection(ca_cert=str(tls_files[0])) if how == "ca_cert" else Connection(insecure=True)
    assert [m.id for m in models(tls_server.base_url, connection=conn)] == [MODEL]
    recs = send_all(Target(tls_server.base_url, "vllm", MODEL, connection=conn), prompts(3))
    assert [r.error for r in recs] == [None] * 3 and [r.output_tokens for r in recs] == [6] * 3
    res = verify_with_server(tls_server.base_url, MODEL, prompts(1), connection=conn)
    assert res.ok and not res.supported and "no /tokenize" in res.message  # reached over TLS; it has no /tokenize


def cli(*args: str, timeout: float = 120) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "loadgen.cli", *args], cwd=REPO_ROOT, capture_output=True,
                          text=True, timeout=timeout)


def test_cli_against_a_self_signed_server_says_what_to_do(tls_server: MisbehavingServer, tmp_path: Path) -> None:
    r = cli("--base-url", tls_server.base_url, "--tokenizer", "deepseek-r1", "--output-dir", str(tmp_path))
    lines = r.stderr.strip().splitlines()
    assert r.returncode == 2 and len(lines) == 1, r.stderr
    assert "certificate verification failed" in lines[0] and "--ca-cert FILE" in lines[0] and "--insecure" in lines[0]


@pytest.mark.parametrize("how", ["ca_cert", "insecure"])
def test_cli_runs_against_https_with_ca_cert_or_insecure(tls_server: MisbehavingServer, tls_files, tmp_path: Path,
                                                         how: str) -> None:
    flag = ["--ca-cert", str(tls_files[0])] if how == "ca_cert" else ["--insecure"]
    r = cli("--base-url", tls_server.base_url, *flag, "--backend", "vllm", "--num-prompts", "3", "--input-len", "8",
            "--output-len", "6", "--tokenizer", "deepseek-r1", "--no-progress", "--output-dir", str(tmp_path))
    assert r.returncode == 0, r.stderr
    (path,) = tmp_path.glob("*.json")
    res = __import__("json").loads(path.read_text())
    assert res["completed"] == 3
    # the /metrics scrape reached the same https server with the same trust (it has no such page: a 404)
    assert "HTTP 404" in res["server_metrics"]["message"] and "CERTIFICATE" not in res["server_metrics"]["message"]
    assert res["config"]["insecure"] is (how == "insecure")
    assert ("WARNING: --insecure" in r.stderr) is (how == "insecure")


def test_cli_with_credentials_in_the_base_url(tmp_path: Path) -> None:
    with MisbehavingServer() as srv:
        url = srv.base_url.replace("http://", "http://bob:pw-51e2@")
        r = cli("--base-url", url, "--backend", "vllm", "--num-prompts", "2", "--input-len", "8", "--output-len", "6",
                "--tokenizer", "deepseek-r1", "--no-progress", "--output-dir", str(tmp_path))
    assert r.returncode == 0, r.stderr
    assert set(srv.seen_auth) == {"Basic Ym9iOnB3LTUxZTI="}
    assert "pw-51e2" not in r.stdout + r.stderr
    for path in tmp_path.iterdir():
        assert "pw-51e2" not in path.read_text(errors="replace")
