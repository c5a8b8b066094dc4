"""Log formatting, the decision log (filter, sampling, escaping, rotation) and metrics plumbing."""

from __future__ import annotations

import io
import json
import logging
import os
import threading

import pytest

from policyd.server import logs, metrics


def decision_log(tmp_path, **kw) -> tuple[logs.DecisionLog, "os.PathLike"]:
    path = tmp_path / "decisions.jsonl"
    return logs.DecisionLog(logs.DecisionLogOptions(str(path), **kw)), path


def record(dlog, result="deny", username=b"Device999", topic=b"/device/Device123/t", **kw):
    dlog.record(result=result, access="write", username=username, client_id=b"c1", topic=topic,
                rule="default-deny", generation=7, **kw)


def read_lines(path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines()]


def test_decision_log_line_has_every_field(tmp_path):
    dlog, path = decision_log(tmp_path)
    record(dlog)
    dlog.close()
    [entry] = read_lines(path)
    assert entry == {**entry, "result": "deny", "access": "write", "identity": "Device999", "client_id": "c1",
                     "topic": "/device/Device123/t", "rule": "default-deny", "generation": 7}
    assert entry["time"].endswith("+00:00") and "dry_run" not in entry


def test_anonymous_identity_is_null(tmp_path):
    dlog, path = decision_log(tmp_path)
    record(dlog, username=None)
    dlog.close()
    assert read_lines(path)[0]["identity"] is None


def test_hostile_values_are_escaped_onto_one_ascii_line(tmp_path):
    dlog, path = decision_log(tmp_path)
    hostile = b"evil\n{\"result\": \"allow\"}\x1b[31m\xff\xfe\xc2\x9b"
    record(dlog, username=hostile, topic=b"a" * 5000)
    dlog.close()
    raw = path.read_bytes()
    assert raw.count(b"\n") == 1 and raw.isascii() and b"\x1b" not in raw
    [entry] = read_lines(path)
    assert entry["result"] == "deny"
    assert entry["identity"] == "evil\n{\"result\": \"allow\"}\x1b[31m\\xff\\xfe\x9b"
    assert len(entry["topic"]) == logs.VALUE_LIMIT + 1 and entry["topic"].endswith("…")


def test_filter_deny_keeps_denials_and_errors_only(tmp_path):
    dlog, path = decision_log(tmp_path, only_denials=True)
    for result in ("allow", "deny", "allow", "error"):
        record(dlog, result=result)
    dlog.close()
    assert [e["result"] for e in read_lines(path)] == ["deny", "error"]


def test_sampling_logs_one_in_n_allows_and_every_denial(tmp_path):
    dlog, path = decision_log(tmp_path, sample_allows=4)
    for _ in range(12):
        record(dlog, result="allow")
    for _ in range(3):
        record(dlog, result="deny")
    dlog.close()
    results = [e["result"] for e in read_lines(path)]
    assert results.count("allow") == 3 and results.count("deny") == 3


def test_sample_below_one_is_refused(tmp_path):
    with pytest.raises(ValueError):
        decision_log(tmp_path, sample_allows=0)


def test_dry_run_lines_say_what_was_answered(tmp_path):
    dlog, path = decision_log(tmp_path)
    record(dlog, result="deny", dry_run=True)
    dlog.close()
    [entry] = read_lines(path)
    assert (entry["result"], entry["answered"], entry["dry_run"]) == ("deny", "allow", True)


def test_file_is_reopened_after_logrotate_moves_it(tmp_path):
    dlog, path = decision_log(tmp_path)
    record(dlog, topic=b"before")
    _wait_written(dlog, 1)
    os.rename(path, tmp_path / "decisions.jsonl.1")
    record(dlog, topic=b"after")
    dlog.close()
    assert [e["topic"] for e in read_lines(tmp_path / "decisions.jsonl.1")] == ["before"]
    assert [e["topic"] for e in read_lines(path)] == ["after"]


class StuckStream(io.StringIO):
    """A destination that blocks its writer until released, like a hung disk."""

    def __init__(self):
        super().__init__()
        self.release = threading.Event()

    def write(self, text):
        self.release.wait(10)
        return super().write(text)


def test_full_queue_drops_and_counts_instead_of_blocking():
    stream = StuckStream()
    dlog = logs.DecisionLog(logs.DecisionLogOptions("-"), stream=stream, queue_size=2)
    for _ in range(6):  # one is taken by the stuck writer, two wait, three are dropped
        record(dlog)
    assert dlog.dropped >= 3
    stream.release.set()
    dlog.close()
    assert dlog.written + dlog.dropped == 6


def test_a_bad_entry_is_counted_and_the_writer_keeps_going(tmp_path):
    dlog, path = decision_log(tmp_path)
    dlog._queue.put(("not", "an", "entry"))
    record(dlog)
    dlog.close()
    assert dlog.dropped == 1 and len(read_lines(path)) == 1


def test_stdout_destination(capsys):
    dlog = logs.DecisionLog(logs.DecisionLogOptions("-"), stream=io.StringIO())
    record(dlog)
    dlog.close()
    assert json.loads(dlog._handler.stream.getvalue())["result"] == "deny"


def test_json_formatter_writes_one_object_per_line():
    stream = io.StringIO()
    logs.configure_logging("info", "json", stream=stream)
    try:
        logging.getLogger("policyd.test").warning("reload rejected: %s", "bad\nthing")
        logging.getLogger("policyd.test").debug("not at info level")
    finally:
        logging.getLogger().handlers.clear()
    [line] = stream.getvalue().splitlines()
    entry = json.loads(line)
    assert (entry["level"], entry["logger"], entry["message"]) == ("warning", "policyd.test", "reload rejected: bad\nthing")


def _wait_written(dlog, n: int) -> None:
    import time

    deadline = time.monotonic() + 5
    while dlog.written < n and time.monotonic() < deadline:
        time.sleep(0.01)
    assert dlog.written >= n


@pytest.mark.parametrize("text, expected", [("9100", ("127.0.0.1", 9100)), (":9100", ("127.0.0.1", 9100)),
                                            ("0.0.0.0:9100", ("0.0.0.0", 9100)), ("[::1]:9100", ("::1", 9100))])
def test_metrics_listen_parsing(text, expected):
    assert metrics.parse_listen(text) == expected


@pytest.mark.parametrize("text", ["host:", "host:http", "127.0.0.1:70000"])
def test_metrics_listen_rejects_nonsense(text):
    with pytest.raises(ValueError):
        metrics.parse_listen(text)


def test_shim_rows_keep_the_newest_report_per_broker():
    snapshot = {("b1", "unix:"): {"stats": {"checks": 5}, "last_seen": 100.0},
                ("b1", "ipv4:127.0.0.1:5555"): {"stats": {"checks": 9}, "last_seen": 200.0},
                ("b0", "unix:"): {"stats": {}, "last_seen": 50.0}}
    assert metrics.shim_rows(snapshot) == [("b0", {}, 50.0, None), ("b1", {"checks": 9}, 200.0, None)]
    assert metrics.shim_rows(None) == [] and metrics.shim_rows({}) == []


def test_shim_connected_means_reported_recently():
    assert metrics.is_connected(1000.0, None, 1000.0 + metrics.SHIM_STALE_AFTER_S - 1)
    assert not metrics.is_connected(1000.0, None, 1000.0 + metrics.SHIM_STALE_AFTER_S + 1)
    assert not metrics.is_connected(0.0, None, 5.0)


def test_readyz_is_503_until_a_policy_is_loaded(tmp_path):
    import urllib.error
    import urllib.request

    from policyd.server.service import Counters
    from policyd.server.store import PolicyStore

    rules = tmp_path / "rules.yaml"
    rules.write_text("superusers: [admin]\n")
    store = PolicyStore(str(rules))
    server = metrics.MetricsServer("127.0.0.1:0", metrics.Metrics(store, Counters()),
                                   ready=lambda: store.status().generation > 0).start()

    def get(path):
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{server.port}{path}", timeout=5) as r:
                return r.status, r.read().decode()
        except urllib.error.HTTPError as exc:
            return exc.code, exc.read().decode()

    try:
        assert get("/readyz")[0] == 503 and get("/healthz")[0] == 200
        assert "policyd_policy_generation 0.0" in get("/metrics")[1]
        assert store.reload("test").ok
        assert get("/readyz")[0] == 200
        body = get("/metrics")[1]
        assert "policyd_policy_identities 1.0" in body and "policyd_reloads_total 1.0" in body
    finally:
        server.stop()
