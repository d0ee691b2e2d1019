"""enwik8 loading: the 90/5/5 split of the zip's member, the raw file or a directory, proportional
splits of smaller files, memory mapping, and the errors; stream batches for segment memory."""
import re
import sys
import zipfile
from pathlib import Path

import pytest
import torch

from fastattn.data import DataConfig, load_corpus
from fastattn.data.enwik8 import default_dir, load_enwik8, split_sizes
from fastattn.data.streams import StreamBatches, stream_blocks


def make_enwik8(tmp_path, n=2000, zipped=True, seed=0):
    """A small file in enwik8's format (bytes of XML-ish text), as enwik8.zip or the raw file."""
    g = torch.Generator().manual_seed(seed)
    data = bytes(torch.randint(0, 256, (n,), generator=g, dtype=torch.uint8).tolist())
    if not zipped:
        (tmp_path / "enwik8").write_bytes(data)
        return tmp_path / "enwik8", data
    path = tmp_path / "enwik8.zip"
    with zipfile.ZipFile(path, "w", compression=zipfile.ZIP_DEFLATED) as zf:
        zf.writestr("enwik8", data)
    return path, data


def test_split_sizes_and_contents_of_a_small_zip(tmp_path):
    path, data = make_enwik8(tmp_path, n=2000)
    train, valid, test = load_enwik8(path)
    assert (len(train), len(valid), len(test)) == (1800, 100, 100)  # 90 / 5 / 5 %
    assert train.dtype == valid.dtype == test.dtype == torch.uint8
    assert bytes(train.tolist()) == data[:1800] and bytes(valid.tolist()) == data[1800:1900]
    assert bytes(test.tolist()) == data[1900:]
    assert (tmp_path / "enwik8").stat().st_size == 2000  # extracted once, next to the zip
    again = load_enwik8(tmp_path)  # the directory: finds the extracted file
    assert all(torch.equal(a, b) for a, b in zip(again, (train, valid, test)))


def test_raw_file_odd_size_and_the_standard_sizes():
    assert split_sizes(100_000_000) == (90_000_000, 5_000_000, 5_000_000)
    assert split_sizes(2019) == (1819, 100, 100)
    with pytest.raises(ValueError, match="too small"):
        split_sizes(19)


def test_raw_file_and_directory(tmp_path):
    path, data = make_enwik8(tmp_path, n=4321, zipped=False)
    train, valid, test = load_enwik8(path)
    assert len(valid) == len(test) == 216 and len(train) == 4321 - 432
    assert bytes(torch.cat([train, valid, test]).tolist()) == data
    assert torch.equal(load_enwik8(tmp_path)[1], valid)


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads /proc/self/status")
def test_full_size_file_is_memory_mapped(tmp_path):
    """A sparse 100M-byte file: the standard split, and loading it does not read it into RAM."""
    path = tmp_path / "enwik8"
    with open(path, "wb") as f:
        f.truncate(100_000_000)

    def rss_kb():
        return int(re.search(r"VmRSS:\s+(\d+)", Path("/proc/self/status").read_text()).group(1))
    before = rss_kb()
    train, valid, test = load_enwik8(path)
    assert (len(train), len(valid), len(test)) == (90_000_000, 5_000_000, 5_000_000)
    assert rss_kb() - before < 20_000  # a copy would add ~98,000 kB
    assert int(test[-1]) == 0 and rss_kb() - before < 20_000  # touching a byte maps one page


def test_missing_file_says_where_to_put_it(tmp_path, monkeypatch):
    with pytest.raises(FileNotFoundError, match=r"enwik8\.zip.*put enwik8\.zip"):
        load_enwik8(tmp_path / "nothing" / "enwik8.zip")
    monkeypatch.setenv("FASTATTN_DATA", str(tmp_path))
    assert default_dir() == tmp_path / "enwik8"
    with pytest.raises(FileNotFoundError, match=re.escape(str(tmp_path / "enwik8" / "enwik8.zip"))):
        load_enwik8()


def test_zip_without_the_member(tmp_path):
    path = tmp_path / "enwik8.zip"
    with zipfile.ZipFile(path, "w") as zf:
        zf.writestr("other.txt", b"x" * 100)
    with pytest.raises(ValueError, match="no member named 'enwik8'"):
        load_enwik8(path)


def test_corpus_source_enwik8(tmp_path):
    path, data = make_enwik8(tmp_path, n=3000)
    d = load_corpus(DataConfig(source="enwik8", paths=[str(path)]))
    assert d.tokenizer.vocab_size == 256 and d.val_bytes_per_token == 1.0
    assert (len(d.train), len(d.val), len(d.test)) == (2700, 150, 150)
    assert bytes(d.test.tolist()) == data[2850:]


def test_stream_batches_continue_each_stream_and_resume():
    tokens = torch.arange(1000)
    it = StreamBatches(tokens, batch_size=3, seq_len=10)
    x0, y0 = it.next()
    assert it.first_block and torch.equal(y0, x0 + 1)
    x1, _ = it.next()
    assert not it.first_block and torch.equal(x1[:, 0], x0[:, -1] + 1)  # row b continues row b
    assert torch.equal(x0[:, 0], torch.tensor([0, 333, 666]))  # three equal streams
    state = it.state_dict()
    want = it.next()
    again = StreamBatches(tokens, batch_size=3, seq_len=10)
    again.load_state_dict(state)
    assert all(torch.equal(a, b) for a, b in zip(want, again.next()))
    for _ in range(it.steps_per_epoch - 3):
        it.next()
    it.next()
    assert it.first_block and it.epoch == 1  # streams start over
    r1 = StreamBatches(tokens, 3, 10, rank=1, world_size=2).next()[0]
    assert torch.equal(r1, next(stream_blocks(tokens, 6, 10))[0][3:])
    with pytest.raises(ValueError, match="too few"):
        StreamBatches(torch.arange(20), batch_size=3, seq_len=10)
