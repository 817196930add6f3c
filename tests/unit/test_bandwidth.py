"""Rate strings and the token bucket (sync/bandwidth.py)."""

from __future__ import annotations

import threading
import time

import pytest
from hypothesis import given
from hypothesis import strategies as st

from officegrid.sync.bandwidth import TokenBucket, parse_rate


@pytest.mark.parametrize(("text", "rate"), [
    ("2MB/s", 2_000_000), ("2MB", 2_000_000), ("1.5 MB/s", 1_500_000), ("500kB/s", 500_000),
    ("500KB/s", 500_000), ("1GB/s", 1e9), ("100B/s", 100), ("100", 100),
    ("512KiB/s", 512 * 1024), ("2MiB", 2 * 1024 ** 2), ("1GiB/s", 1024 ** 3),
    ("8kbit/s", 1000), ("10Mbit/s", 1_250_000), ("10 mbit", 1_250_000), ("1Gbit/sec", 1.25e8),
    # Review R1: a capital B before "ps" is bytes ("MBps" was read as megabits, 8x too slow).
    ("2MBps", 2_000_000), ("10KBps", 10_000), ("100Bps", 100), ("8Mbps", 1_000_000),
])
def test_parse_rate_units(text, rate):
    assert parse_rate(text) == pytest.approx(rate)


@pytest.mark.parametrize(("text", "needle"), [
    ("fast", "bad bandwidth 'fast'"), ("2XB/s", "unknown unit 'XB'"), ("0MB/s", "more than 0"),
    ("-1MB/s", "bad bandwidth '-1MB/s'"), ("2MB/h", "bad bandwidth '2MB/h'"), ("", "bad bandwidth"),
    ("2Mb/s", "ambiguous bandwidth '2Mb/s'"), ("2mb/s", "write MB/s for bytes or Mbit/s"),
])
def test_parse_rate_refuses_with_a_clear_error(text, needle):
    with pytest.raises(ValueError) as exc:
        parse_rate(text)
    assert needle in str(exc.value)


class FakeClock:
    def __init__(self) -> None:
        self.now = 0.0
        self.slept = 0.0

    def __call__(self) -> float:
        return self.now

    def sleep(self, s: float) -> None:
        self.slept += s
        self.now += s


@given(rate=st.floats(1e3, 1e8), pieces=st.lists(st.integers(1, 1 << 20), min_size=1,
                                                  max_size=50))
def test_bucket_never_lets_more_than_rate_times_time_plus_burst(rate, pieces):
    clock = FakeClock()
    bucket = TokenBucket(rate, clock=clock, sleep=clock.sleep)
    total = 0
    for n in pieces:
        bucket.consume(n)
        total += n
        # Everything consumed so far had to be paid for by time elapsed plus the initial burst.
        assert total <= rate * clock.now + bucket.burst + 1e-6 * total
    assert clock.now >= (total - bucket.burst) / rate - 1e-9


def test_bucket_is_shared_fairly_by_threads_in_real_time():
    rate = 400_000.0
    bucket = TokenBucket(rate, burst=20_000)
    done = []

    def pull():
        for _ in range(20):
            bucket.consume(10_000)
        done.append(1)

    start = time.monotonic()
    threads = [threading.Thread(target=pull) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(30)
    elapsed = time.monotonic() - start
    assert len(done) == 4
    # 800 kB at 400 kB/s with 20 kB of burst: at least ~1.95 s (a lower bound only).
    assert elapsed >= (800_000 - 20_000) / rate * 0.98


def test_set_rate_applies_to_later_consumes():
    clock = FakeClock()
    bucket = TokenBucket(1000.0, burst=1000, clock=clock, sleep=clock.sleep)
    bucket.consume(1000)  # the burst
    bucket.consume(1000)
    assert clock.now == pytest.approx(1.0)
    bucket.set_rate(10_000.0)
    bucket.consume(10_000)
    assert clock.now == pytest.approx(2.0, rel=1e-3)
    with pytest.raises(ValueError, match="rate must be > 0"):
        bucket.set_rate(0)


@pytest.mark.parametrize(("cls", "section", "key", "value", "needle"), [
    ("WorkerSettings", "worker", "max_bandwidth", "2 parsecs", "bad bandwidth '2 parsecs'"),
    ("WorkerSettings", "worker", "transfer_window", "mnday 20:00-06:00", "bad day 'mnday'"),
    ("ServerSettings", "server", "transfer_max_bandwidth", "50MX/s", "unknown unit 'MX'"),
])
def test_settings_refuse_bad_rates_and_windows_naming_the_key(tmp_path, monkeypatch, cls,
                                                              section, key, value, needle):
    from officegrid import config

    monkeypatch.setenv(f"OFFICEGRID_{key.upper()}", value)
    with pytest.raises(config.ConfigError) as exc:
        config.load(getattr(config, cls), section, config_file=tmp_path / "none.toml")
    assert f"{section}.{key}" in str(exc.value) and needle in str(exc.value)


def test_settings_accept_good_rates_and_windows(tmp_path):
    from officegrid import config

    s = config.load(config.WorkerSettings, "worker", {"max_bandwidth": "2MB/s",
                                                      "transfer_window": "mon-fri 20:00-06:00"},
                    config_file=tmp_path / "none.toml")
    assert parse_rate(s.max_bandwidth) == 2e6 and s.transfer_window == "mon-fri 20:00-06:00"


@given(items=st.lists(st.tuples(st.integers(0, 2 ** 64 - 1), st.integers(0, 1),
                                st.binary(max_size=300)), max_size=8),
       cuts=st.lists(st.integers(1, 200), min_size=1, max_size=20))
def test_fetch_answer_yields_each_blob_once_it_is_complete(items, cuts):
    from officegrid import protocol as p

    triples = [(f"{n:064x}", kind, frame) for n, kind, frame in items]
    body = p.encode_fetch_answer([p.encode_fetch_item(*t) for t in triples])
    pieces, pos, i = [], 0, 0
    while pos < len(body):
        pieces.append(body[pos:pos + cuts[i % len(cuts)]])
        pos += len(pieces[-1])
        i += 1
    got = []
    for item in p.iter_fetch_answer(iter(pieces), out_piece=64):
        got.append(item)
        assert got == triples[:len(got)]  # only complete items, in order
    assert got == triples
    # Cut anywhere (even between two items): an error, never a silent short answer.
    for cut in {1, len(body) // 2, len(body) - 1}:
        with pytest.raises(ValueError):
            list(p.iter_fetch_answer([body[:cut]]))


def test_fetch_answer_bomb_is_refused_without_inflating_it():
    import zstandard

    from officegrid import protocol as p

    # A tiny answer whose one item claims 1 GiB of zeros (zstd RLE blocks).
    header = b"a" * 64 + bytes((p.FETCH_RAW,)) + (1 << 30).to_bytes(8, "big")
    cobj = zstandard.ZstdCompressor(level=19).compressobj()
    bomb = cobj.compress(header)
    for _ in range(16):
        bomb += cobj.compress(bytes(1 << 20))
    bomb += cobj.flush()
    assert len(bomb) < 64 * 1024
    with pytest.raises(ValueError, match="claims"):
        list(p.iter_fetch_answer([bomb]))


def test_site_pacer_shares_the_cap_by_the_slots_held():
    import asyncio

    from officegrid.server.transfer_pacer import SitePacer, pieces_of

    held = {"n": 2}

    async def count() -> int:
        return held["n"]

    async def run() -> tuple[float, float]:
        pacer = SitePacer(1_000_000.0, count)
        assert await pacer.share() == 500_000.0
        start = time.monotonic()
        sent = 0
        async for piece in pacer.pace(pieces_of(b"x" * 400_000)):
            sent += len(piece)
        return sent, time.monotonic() - start

    sent, elapsed = asyncio.run(run())
    assert sent == 400_000
    # 400 kB at half of 1 MB/s, minus a quarter-second burst: at least 0.55 s.
    assert elapsed >= (400_000 - 125_000) / 500_000


def test_site_pacer_keeps_the_last_count_when_the_store_fails():
    """Review R1: an error reading the slot count aborted every paced transfer under way."""
    import asyncio

    from officegrid.server.transfer_pacer import SitePacer, pieces_of

    clock = FakeClock()
    calls = {"n": 0}

    async def count() -> int:
        calls["n"] += 1
        if calls["n"] == 2:
            raise OSError("database is locked")
        return 4

    async def run() -> list[float]:
        pacer = SitePacer(4e9, count, clock=clock)
        shares = [await pacer.share()]
        clock.now += 1.0
        shares.append(await pacer.share())  # the store fails: the last count stands
        clock.now += 1.0
        shares.append(await pacer.share())
        sent = 0
        async for piece in pacer.pace(pieces_of(b"x" * 200_000)):
            sent += len(piece)
        return [*shares, sent]

    assert asyncio.run(run()) == [1e9, 1e9, 1e9, 200_000]
    assert calls["n"] == 3
