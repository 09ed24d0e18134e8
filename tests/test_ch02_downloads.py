"""Network hygiene: one offline switch, bounded downloads, one sentence when they fail — and nothing waits forever.

The hostile case is a server that accepts the connection and then never says a word: a TCP probe calls
it "online", and a download without a time limit (tiktoken's, through ``requests``) waits for it forever.
The fixture below is such a server on 127.0.0.1.
"""

from __future__ import annotations

import http.server
import re
import socket
import threading
import time
from pathlib import Path

import pytest

from attention_lab import data
from attention_lab.data import DownloadError

PACKAGE = Path(data.__file__).resolve().parent
SLACK_S = 4.0  # thread hand-offs on a busy 2-core machine; a hang would be minutes, not seconds
PROXY_VARIABLES = ["http_proxy", "https_proxy", "all_proxy", "no_proxy",
                   "HTTP_PROXY", "HTTPS_PROXY", "ALL_PROXY", "NO_PROXY"]


@pytest.fixture(autouse=True)
def no_proxies(monkeypatch):
    """Requests to 127.0.0.1 go straight there, whatever proxies the machine running the tests has."""
    for name in PROXY_VARIABLES:
        monkeypatch.delenv(name, raising=False)


@pytest.fixture
def online(monkeypatch, tmp_path):
    """Online as far as the switch goes; downloads land in a fresh cache folder."""
    monkeypatch.setenv("ATTENTION_LAB_OFFLINE", "0")
    monkeypatch.setenv("ATTENTION_LAB_CACHE_DIR", str(tmp_path / "cache"))
    return tmp_path / "cache"


@pytest.fixture
def silent_server():
    """A server on 127.0.0.1 that accepts every connection and never answers. Yields (port, accepted sockets)."""
    server = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    server.bind(("127.0.0.1", 0))
    server.listen(16)
    server.settimeout(0.1)
    accepted: list[socket.socket] = []
    stop = threading.Event()

    def accept_forever() -> None:
        while not stop.is_set():
            try:
                connection, _ = server.accept()
            except socket.timeout:
                continue
            except OSError:
                return
            accepted.append(connection)  # held open, never read from or written to

    thread = threading.Thread(target=accept_forever, daemon=True)
    thread.start()
    yield server.getsockname()[1], accepted
    stop.set()
    thread.join()
    for connection in accepted:  # hung-up clients (the worker threads) now fail and end
        connection.close()
    server.close()


@pytest.fixture
def answering_server(tmp_path):
    """A plain HTTP server on 127.0.0.1 serving ``tmp_path / "served"``. Yields its base URL."""
    folder = tmp_path / "served"
    folder.mkdir()

    class Handler(http.server.SimpleHTTPRequestHandler):
        def __init__(self, *args, **kwargs):
            super().__init__(*args, directory=str(folder), **kwargs)

        def log_message(self, *args) -> None:  # quiet
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_address[1]}", folder
    server.shutdown()
    server.server_close()


def closed_port() -> int:
    """A local port with nothing listening (connections are refused at once)."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


# --- the switch ------------------------------------------------------------------------------------------------

@pytest.mark.parametrize("value", ["1", "true", "TRUE", "yes", "Yes", "on", " 1 "])
def test_switch_values_meaning_offline(monkeypatch, value):
    monkeypatch.setenv("ATTENTION_LAB_OFFLINE", value)
    assert data.offline_requested() is True
    assert data.is_offline() is True  # no probe needed


@pytest.mark.parametrize("value", ["", "0", "false", "False", "no", "off", "  "])
def test_switch_values_meaning_online(monkeypatch, value):
    monkeypatch.setenv("ATTENTION_LAB_OFFLINE", value)
    assert data.offline_requested() is False


def test_switch_unset_means_online_and_typos_are_refused(monkeypatch):
    monkeypatch.delenv("ATTENTION_LAB_OFFLINE", raising=False)
    assert data.offline_requested() is False
    monkeypatch.setenv("ATTENTION_LAB_OFFLINE", "offline please")
    with pytest.raises(ValueError, match="ATTENTION_LAB_OFFLINE must be one of"):
        data.offline_requested()


def test_the_switch_is_read_in_one_place_and_downloads_live_in_one_module():
    """No module but data.py reads the switch or opens a connection itself (so none can skip the time limits)."""
    reads_switch = re.compile(r"""environ[^\n]{0,20}ATTENTION_LAB_OFFLINE""")
    opens_network = re.compile(r"urlopen\(|urlretrieve\(|create_connection\(|get_encoding\(|requests\.(get|post)\(")
    for path in sorted(PACKAGE.rglob("*.py")):
        if path.name == "data.py" and path.parent == PACKAGE:
            continue
        text = path.read_text(encoding="utf-8")
        assert not reads_switch.search(text), f"{path.relative_to(PACKAGE)} reads ATTENTION_LAB_OFFLINE itself"
        assert not opens_network.search(text), f"{path.relative_to(PACKAGE)} downloads outside attention_lab.data"
    source = (PACKAGE / "data.py").read_text(encoding="utf-8")
    assert source.count("os.environ.get(OFFLINE_VARIABLE") == 1


def test_offline_switch_stops_every_download(monkeypatch, tmp_path):
    monkeypatch.setenv("ATTENTION_LAB_OFFLINE", "1")
    monkeypatch.setenv("ATTENTION_LAB_CACHE_DIR", str(tmp_path))
    with pytest.raises(DownloadError, match="ATTENTION_LAB_OFFLINE is set"):
        data.download("http://127.0.0.1:9/x", tmp_path / "x")
    with pytest.raises(DownloadError, match="ATTENTION_LAB_OFFLINE is set"):
        data.load_gpt2_encoding()
    with pytest.raises(ValueError, match="use name='synthetic' offline"):
        data.load_corpus("shakespeare")
    (tmp_path / data.SHAKESPEARE_FILE).write_text("First Citizen:\n", encoding="utf-8")
    assert data.load_corpus("shakespeare") == "First Citizen:\n"  # a cached copy is read offline too


# --- bounded downloads -----------------------------------------------------------------------------------------

def test_download_from_a_server_that_never_answers_gives_up(online, silent_server, tmp_path):
    port, accepted = silent_server
    target = tmp_path / "out" / "file.txt"
    start = time.monotonic()
    with pytest.raises(DownloadError) as failure:
        data.download(f"http://127.0.0.1:{port}/file.txt", target, timeout=1.0, what="the test file")
    assert time.monotonic() - start < 1.0 + SLACK_S
    assert accepted, "the server must have accepted the connection (the case a TCP probe calls online)"
    message = str(failure.value)
    assert message.startswith("Could not download the test file from http://127.0.0.1:")
    assert "(TimeoutError: not finished within 1 s)" in message
    assert message.count(". ") == 0 and message.endswith(".") and "\n" not in message  # one sentence
    assert not target.exists()


def test_shakespeare_from_a_server_that_never_answers_gives_up(online, silent_server, monkeypatch):
    port, accepted = silent_server
    monkeypatch.setattr(data, "SHAKESPEARE_URL", f"http://127.0.0.1:{port}/input.txt")
    start = time.monotonic()
    with pytest.raises(DownloadError, match="Could not download the tiny-Shakespeare text"):
        data.load_corpus("shakespeare", timeout=1.0)
    assert time.monotonic() - start < 1.0 + SLACK_S and accepted
    assert not (online / data.SHAKESPEARE_FILE).exists()  # nothing half-written is left to be read later


def test_shakespeare_downloads_once_into_the_cache(online, answering_server, monkeypatch):
    base, folder = answering_server
    (folder / "input.txt").write_text("First Citizen:\nBefore we proceed any further, hear me speak.\n", encoding="utf-8")
    monkeypatch.setattr(data, "SHAKESPEARE_URL", f"{base}/input.txt")
    text = data.load_corpus("shakespeare", timeout=5.0)
    assert text.startswith("First Citizen:") and (online / data.SHAKESPEARE_FILE).read_text(encoding="utf-8") == text
    (folder / "input.txt").unlink()  # the second call reads the cache
    assert data.load_corpus("shakespeare") == text
    assert list(online.iterdir()) == [online / data.SHAKESPEARE_FILE]  # no temporary files left


def test_refused_and_missing_downloads_say_so_in_one_sentence(online, answering_server, tmp_path):
    base, _ = answering_server
    with pytest.raises(DownloadError, match=r"HTTPError: HTTP Error 404"):
        data.download(f"{base}/missing.txt", tmp_path / "m.txt", timeout=5.0)
    with pytest.raises(DownloadError, match="Could not download the file from http://127.0.0.1"):
        data.download(f"http://127.0.0.1:{closed_port()}/x", tmp_path / "x", timeout=5.0)
    with pytest.raises(ValueError, match="timeout must be a positive number"):
        data.download(f"{base}/x", tmp_path / "x", timeout=0)


def test_tiktoken_through_a_server_that_never_answers_gives_up(online, silent_server, monkeypatch, tmp_path, capsys):
    """The real tiktoken download, sent (as a proxy) to the silent server: bounded, then the announced fallback."""
    pytest.importorskip("tiktoken")
    port, accepted = silent_server
    monkeypatch.setenv("HTTPS_PROXY", f"http://127.0.0.1:{port}")
    monkeypatch.setenv("TIKTOKEN_CACHE_DIR", str(tmp_path / "tiktoken"))  # nothing cached: it must download
    monkeypatch.setattr(data, "_gpt2_attempt", None)
    start = time.monotonic()
    with pytest.raises(DownloadError) as failure:
        data.load_gpt2_encoding(timeout=1.0)
    assert time.monotonic() - start < 1.0 + SLACK_S
    assert accepted, "tiktoken's request must have reached the silent server"
    assert str(failure.value).startswith("tiktoken could not load GPT-2's BPE files from "
                                         "openaipublic.blob.core.windows.net (TimeoutError: no answer within 1 s)")
    start = time.monotonic()
    tokenizer = data.get_tokenizer("the cat sat.", timeout=1.0)  # 'auto': falls back, says so in one line
    assert time.monotonic() - start < 1.0 + SLACK_S
    assert isinstance(tokenizer, data.CharTokenizer)
    assert "tiktoken could not load GPT-2's BPE files" in capsys.readouterr().out
    with pytest.raises(ValueError, match="kind='bpe' needs tiktoken's GPT-2 encoding"):
        data.get_tokenizer("the cat sat.", kind="bpe", timeout=0.5)


def test_a_load_still_running_is_waited_on_not_started_twice(online, monkeypatch):
    tiktoken = pytest.importorskip("tiktoken")
    release, calls = threading.Event(), []
    sentinel = object()

    def slow_get_encoding(name: str):
        calls.append(name)
        release.wait(30)
        return sentinel

    monkeypatch.setattr(tiktoken, "get_encoding", slow_get_encoding)
    monkeypatch.setattr(data, "_gpt2_attempt", None)
    for _ in range(2):
        start = time.monotonic()
        with pytest.raises(DownloadError, match="no answer within 0.3 s"):
            data.load_gpt2_encoding(timeout=0.3)
        assert time.monotonic() - start < 0.3 + SLACK_S
    assert calls == ["gpt2"]
    release.set()
    assert data.load_gpt2_encoding(timeout=5.0) is sentinel and calls == ["gpt2"]


def test_a_failed_load_is_tried_again(online, monkeypatch):
    tiktoken = pytest.importorskip("tiktoken")
    calls = []

    def failing_get_encoding(name: str):
        calls.append(name)
        raise ConnectionError("Name or service not known")

    monkeypatch.setattr(tiktoken, "get_encoding", failing_get_encoding)
    monkeypatch.setattr(data, "_gpt2_attempt", None)
    for _ in range(2):
        with pytest.raises(DownloadError, match=r"\(ConnectionError: Name or service not known\)"):
            data.load_gpt2_encoding(timeout=5.0)
    assert calls == ["gpt2", "gpt2"]


# --- the probe and the cache folder ----------------------------------------------------------------------------

def test_probe_is_bounded_and_only_a_hint(online, silent_server, monkeypatch):
    port, _ = silent_server
    monkeypatch.setattr(data, "PROBE_ADDRESS", ("127.0.0.1", port))
    assert data.is_offline(timeout=1.0) is False  # it accepts, so the probe says online (downloads still time out)
    monkeypatch.setattr(data, "PROBE_ADDRESS", ("127.0.0.1", closed_port()))
    start = time.monotonic()
    assert data.is_offline(timeout=1.0) is True
    assert time.monotonic() - start < 1.0 + SLACK_S


def test_cache_dir_is_outside_the_package(monkeypatch, tmp_path):
    monkeypatch.setenv("ATTENTION_LAB_CACHE_DIR", str(tmp_path / "mine"))
    assert data.cache_dir() == tmp_path / "mine"
    monkeypatch.delenv("ATTENTION_LAB_CACHE_DIR")
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    assert data.cache_dir() == tmp_path / "xdg" / "attention_lab"
    monkeypatch.delenv("XDG_CACHE_HOME")
    assert data.cache_dir() == Path.home() / ".cache" / "attention_lab"
    assert PACKAGE not in data.cache_dir().parents
