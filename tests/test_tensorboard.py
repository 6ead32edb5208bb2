"""cmcd_jax.tensorboard: event files that TensorBoard's own (TensorFlow-free) reader accepts."""

import subprocess
import sys

import pytest

from cmcd_jax import tensorboard as tb

event_file_loader = pytest.importorskip(
    "tensorboard.backend.event_processing.event_file_loader")


def read_events(path) -> list:
    """Every Event proto of one file as written, parsed by TensorBoard (which stops at a bad
    CRC)."""
    return list(event_file_loader.LegacyEventFileLoader(str(path)).Load())


def scalars_of(events) -> list[tuple[str, int, float]]:
    return [(v.tag, e.step, v.simple_value) for e in events for v in e.summary.value]


@pytest.mark.parametrize("data, expected", [
    (b"", 0x00000000),
    (b"a", 0xC1D04330),
    (b"123456789", 0xE3069283),
    (bytes(32), 0x8A9136AA),
    (b"\xff" * 32, 0x62A8AB43),
    (bytes(range(32)), 0x46DD794E),
])
def test_crc32c_known_vectors(data, expected):
    assert tb.crc32c(data) == expected


def test_masked_crc_matches_tensorboard():
    from tensorboard.compat.tensorflow_stub import pywrap_tensorflow

    for data in (b"", b"123456789", bytes(range(256)) * 3):
        assert tb.masked_crc32c(data) == pywrap_tensorflow.masked_crc32c(data)


def test_tensorboard_reads_written_scalars(tmp_path):
    with tb.EventWriter(tmp_path) as writer:
        writer.scalar("loss", 2.5, 1)
        writer.scalar("loss", 0.125, 10)
        writer.scalars({"loss": -1.0, "examples_per_sec": 1e6}, 2**40)
    [path] = tmp_path.iterdir()
    assert path == writer.path
    assert path.name.startswith("events.out.tfevents.")
    events = read_events(path)
    assert events[0].file_version == "brain.Event:2"
    assert scalars_of(events) == [("loss", 1, 2.5), ("loss", 10, 0.125), ("loss", 2**40, -1.0),
                                  ("examples_per_sec", 2**40, 1e6)]
    assert all(e.wall_time > 1e9 for e in events)


def test_event_accumulator_sees_scalars(tmp_path):
    from tensorboard.backend.event_processing import event_accumulator

    with tb.EventWriter(tmp_path) as writer:
        for step in range(1, 4):
            writer.scalar("distill/cmc/loss", 1.0 / step, step)
    acc = event_accumulator.EventAccumulator(str(tmp_path))
    acc.Reload()
    assert acc.Tags()["scalars"] == ["distill/cmc/loss"]
    events = acc.Scalars("distill/cmc/loss")
    assert [e.step for e in events] == [1, 2, 3]
    assert [e.value for e in events] == pytest.approx([1.0, 0.5, 1.0 / 3])


def test_second_writer_appends_readable_events(tmp_path):
    with tb.EventWriter(tmp_path) as writer:
        writer.scalar("loss", 1.0, 1)
    with tb.EventWriter(tmp_path) as writer:  # A resumed run (same second: same file).
        writer.scalar("loss", 0.5, 2)
    events = [e for path in sorted(tmp_path.iterdir()) for e in read_events(path)]
    assert scalars_of(events) == [("loss", 1, 1.0), ("loss", 2, 0.5)]


def test_flush_makes_events_readable_before_close(tmp_path):
    writer = tb.EventWriter(tmp_path)
    writer.scalar("loss", 3.0, 7)
    writer.flush()
    assert scalars_of(read_events(writer.path)) == [("loss", 7, 3.0)]
    writer.close()


def test_corrupted_byte_fails_crc_check(tmp_path):
    with tb.EventWriter(tmp_path) as writer:
        writer.scalar("loss", 1.0, 1)
        writer.scalar("loss", 2.0, 2)
    data = bytearray(writer.path.read_bytes())
    data[-6] ^= 0x01  # Inside the last record's data.
    writer.path.write_bytes(bytes(data))
    assert scalars_of(read_events(writer.path)) == [("loss", 1, 1.0)]


def test_import_pulls_in_neither_tensorflow_nor_tensorboard():
    code = ("import sys, cmcd_jax.tensorboard; "
            "print(sorted(m for m in sys.modules if m.split('.')[0] in "
            "('tensorflow', 'tensorboard')))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         check=True).stdout
    assert out.strip() == "[]"
