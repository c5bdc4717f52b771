"""rasa_gpt3.client: which backend the factories pick, the embedded server's life, and one-line error descriptions."""

from __future__ import annotations

import asyncio
import socket
import subprocess
import sys
from pathlib import Path

import httpx
import openai
import pytest

from rasa_gpt3.client import describe_api_error, local_base_url, make_async_client, make_client
from rasa_gpt3.local.embedded import stop_server
from rasa_gpt3.settings import Settings

REPO = Path(__file__).resolve().parents[2]


def test_without_a_key_the_embedded_backend_is_started_once_per_state_dir(local_settings):
    client = make_client(local_settings)
    assert client.api_key == "local" and str(client.base_url).startswith("http://127.0.0.1:")
    assert client.models.list().data
    assert str(make_client(local_settings, timeout=2, max_retries=0).base_url) == str(client.base_url)
    assert local_base_url(local_settings.local_state_dir) == str(client.base_url).rstrip("/")
    assert (local_settings.project_dir / ".rasa_gpt3" / "local" / "jobs").is_dir()
    elsewhere = local_settings.with_(state_dir=local_settings.project_dir / "elsewhere")
    assert str(make_client(elsewhere).base_url) != str(client.base_url)
    stop_server(elsewhere.local_state_dir)


def test_with_a_key_the_remote_api_is_used_and_no_server_starts(tmp_path, monkeypatch):
    monkeypatch.setenv("OPENAI_API_KEY", "sk-test-not-real")
    monkeypatch.setenv("OPENAI_BASE_URL", "https://example.invalid/v1")
    settings = Settings.from_env(tmp_path)
    client = make_client(settings, timeout=3, max_retries=1)
    assert client.api_key == "sk-test-not-real" and str(client.base_url) == "https://example.invalid/v1/"
    assert client.timeout == 3 and client.max_retries == 1
    assert not (tmp_path / ".rasa_gpt3").exists()
    monkeypatch.setenv("RASA_GPT3_LOCAL", "1")
    forced = Settings.from_env(tmp_path)
    assert make_client(forced).api_key == "local"
    stop_server(forced.local_state_dir)


def test_the_embedded_backend_works_from_inside_a_running_event_loop(local_settings):
    async def inside_loop():
        # as in Rasa's Sanic loop: the sync client blocks, but the server has its own thread and loop
        sync_models = make_client(local_settings).models.list().data
        client = make_async_client(local_settings)
        assert make_async_client(local_settings) is client  # one per loop and configuration
        assert make_async_client(local_settings, timeout=1) is not client
        page = await client.models.list()
        return client, sync_models, page.data

    first, sync_models, async_models = asyncio.run(inside_loop())
    assert sync_models and async_models
    second, _, _ = asyncio.run(inside_loop())
    assert second is not first  # a new loop gets its own client


def _status_error(status, body, headers=None):
    request = httpx.Request("POST", "https://api.example.com/v1/chat/completions")
    response = httpx.Response(status, json=body, request=request, headers=headers)
    return openai.OpenAI(api_key="x", base_url="https://api.example.com/v1")._make_status_error_from_response(response)


def test_describe_api_error_is_one_line_without_key_or_text():
    auth = _status_error(
        401,
        {
            "error": {
                "message": "Incorrect API key provided: sk-abcd1234efgh5678. See docs",
                "type": "invalid_request_error",
                "code": "invalid_api_key",
            }
        },
    )
    line = describe_api_error(auth)
    assert "sk-abcd" not in line and "\n" not in line and "401" in line and "API key" in line
    limited = describe_api_error(
        _status_error(429, {"error": {"message": "Rate limit reached\nfor requests", "code": "rate_limit_exceeded"}})
    )
    assert "\n" not in limited and "429" in limited and "rate" in limited
    assert "500" in describe_api_error(_status_error(500, {"error": {"message": "boom"}}))
    leaked = describe_api_error(_status_error(400, {"error": {"message": "bad key sk-proj-XYZ123456789abc"}}))
    assert "XYZ123" not in leaked
    request = httpx.Request("POST", "https://api.example.com/v1/chat/completions")
    assert "api.example.com" in describe_api_error(openai.APIConnectionError(request=request))
    assert "timeout" in describe_api_error(openai.APITimeoutError(request=request))


def test_describe_api_error_on_real_failures_of_the_local_backend(local_backend):
    client = local_backend.make_client(
        max_retries=0, timeout=0.3, default_headers={"X-Rasa-GPT3-Fault": "hang=5,path=/v1/chat"}
    )
    secret = "my secret user message"
    with pytest.raises(openai.APITimeoutError) as error:
        client.chat.completions.create(
            model="ft:gpt-4o-mini:local::abcd1234", messages=[{"role": "user", "content": secret}]
        )
    line = describe_api_error(error.value)
    assert "127.0.0.1" in line and secret not in line
    with pytest.raises(openai.NotFoundError) as error:
        local_backend.client.chat.completions.create(
            model="ft:gpt-4o-mini:local::abcd1234", messages=[{"role": "user", "content": secret}]
        )
    line = describe_api_error(error.value)
    assert "404" in line and secret not in line


def _free_port():
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def test_local_serve_runs_standalone_with_a_token(tmp_path):
    port = _free_port()
    process = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "rasa_gpt3.cli",
            "local",
            "serve",
            "--port",
            str(port),
            "--state",
            str(tmp_path / "s"),
            "--token",
            "t0ken",
        ],
        cwd=REPO,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        line = process.stdout.readline()
        assert f"http://127.0.0.1:{port}/v1" in line
        usage = process.stdout.readline()
        assert "OPENAI_API_KEY=" in usage and "t0ken" not in usage  # a secret is never printed
        client = openai.OpenAI(api_key="t0ken", base_url=f"http://127.0.0.1:{port}/v1", max_retries=0)
        assert client.models.list().data
        with pytest.raises(openai.AuthenticationError):
            openai.OpenAI(api_key="wrong", base_url=f"http://127.0.0.1:{port}/v1", max_retries=0).models.list()
        # the fault header is off in a standalone server: no client can make it misbehave
        faulty = client.with_options(default_headers={"X-Rasa-GPT3-Fault": "status=500"})
        assert faulty.models.list().data
        assert (tmp_path / "s" / "files").is_dir()
    finally:
        process.terminate()
        out, err = process.communicate(timeout=10)
    assert "t0ken" not in out + err


def test_local_serve_bad_input_is_one_line_and_non_zero(tmp_path):
    bad = subprocess.run(
        [sys.executable, "-m", "rasa_gpt3.cli", "local", "serve", "--faults", "explode"],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert bad.returncode == 1 and bad.stderr.startswith("error: --faults: unknown fault")
    assert "Traceback" not in bad.stderr
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        busy = subprocess.run(
            [
                sys.executable,
                "-m",
                "rasa_gpt3.cli",
                "local",
                "serve",
                "--port",
                str(port),
                "--state",
                str(tmp_path / "s"),
            ],
            capture_output=True,
            text=True,
            timeout=60,
        )
    assert busy.returncode == 1 and busy.stderr.startswith("error: cannot listen on 127.0.0.1")
    assert len(busy.stderr.strip().splitlines()) == 1
    (tmp_path / "a-file").write_text("")
    no_dir = subprocess.run(
        [sys.executable, "-m", "rasa_gpt3.cli", "local", "serve", "--state", str(tmp_path / "a-file" / "state")],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert no_dir.returncode == 1 and no_dir.stderr.startswith("error: cannot use ")
    assert "Traceback" not in no_dir.stderr
