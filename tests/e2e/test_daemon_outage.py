"""With policyd gone every check is denied, the broker stays up, and access returns with the daemon."""

from __future__ import annotations

from harness import Device, wait_for

NOT_AUTHORIZED = 0x87


def test_checks_are_denied_while_policyd_is_down_and_broker_stays_up(broker, daemon):
    dev = Device(broker, "Device123").connect()
    other = Device(broker, "Device124").connect()   # connected, but nothing of it asked or cached yet
    try:
        assert dev.publish("/device/Device123/t", b"before") == 0

        daemon.stop()
        # Answers the shim cached before the outage are served until they expire (issue 5,
        # on_error deny); every check it has no answer for is denied.
        assert dev.publish("/device/Device123/t", b"during") == 0
        assert other.publish("/device/Device124/t", b"during") == NOT_AUTHORIZED
        # its rule's own filter came with its first answer; any other subscription is asked
        assert dev.subscribe("/device/Device123/#") == 1
        assert dev.subscribe("/device/Device123/sub/#") == NOT_AUTHORIZED
        for _ in range(20):
            assert other.publish("/device/Device124/t", b"during") == NOT_AUTHORIZED
        assert broker.alive

        daemon.start()
        wait_for(lambda: other.publish("/device/Device124/t", b"after") == 0, 10, "access to return")
        assert dev.subscribe("/device/Device123/sub/#") == 1
        assert broker.alive
        assert "policyd" in broker.log()
    finally:
        dev.close()
        other.close()


def test_broker_log_names_the_failure(broker, daemon):
    daemon.stop()
    try:
        dev = Device(broker, "Device999").connect()
        assert dev.publish("/device/Device999/t", b"x") == NOT_AUTHORIZED
        dev.close()
        log = broker.log()
        assert "policyd:" in log and ("unavailable" in log.lower() or "deadline" in log.lower()), log[-2000:]
    finally:
        daemon.start()
