"""Reader and writer: typed metadata, zero-copy views, byte-identical round trips, splits."""

from __future__ import annotations

import filecmp

import numpy as np
import pytest
from gguf import GGUFReader
from gguf import GGUFValueType as V

from engine.errors import Cancelled, DiskSpaceError, GGUFError
from engine.gguf import (
    GGUFFile,
    SplitPolicy,
    TensorSpec,
    metadata_value,
    open_gguf,
    write_gguf,
    write_gguf_sync,
)
from engine.progress import CancelToken
from tests.gguf_samples import sample_metadata, sample_tensors, write_sample


def test_sample_reads_back_typed(tmp_path):
    path = write_sample(tmp_path / "s.gguf")
    with GGUFFile(path) as f:
        meta = sample_metadata()
        assert list(f.metadata) == list(meta)
        for key, mv in meta.items():
            got = f.metadata[key]
            assert got.type == mv.type and got.item_type == mv.item_type, key
            assert got.to_python() == mv.to_python(), key
        assert f.get("some.u64") == 2**64 - 1
        assert f.get("general.name") == "tiny ünïcode ✓"
        for spec, arr in sample_tensors():
            t = f.tensor(spec.name)
            assert t.dims == spec.dims and t.type == spec.type and t.nbytes == spec.nbytes
            assert bytes(f.raw(spec.name)) == arr.tobytes()
            assert t.file_offset % 32 == 0
        emb = f.array("token_embd.weight")
        assert emb.shape == (4, 64) and emb.dtype == np.float32
        np.testing.assert_array_equal(emb, sample_tensors()[0][1])
        assert not emb.flags.writeable and not emb.flags.owndata  # a view of the mapping
        with pytest.raises(GGUFError, match="block-quantized"):
            f.array("blk.0.ffn_up.weight")
        with pytest.raises(GGUFError, match="no tensor named"):
            f.tensor("nope")


def test_sample_agrees_with_gguf_py(tmp_path):
    path = write_sample(tmp_path / "s.gguf")
    ref = GGUFReader(path)
    with GGUFFile(path) as f:
        assert [t.name for t in ref.tensors] == [t.name for t in f.tensors]
        for rt in ref.tensors:
            t = f.tensor(rt.name)
            assert tuple(int(x) for x in rt.shape) == t.dims
            assert int(rt.tensor_type) == t.type
            assert rt.data_offset == t.file_offset and rt.n_bytes == t.nbytes
        assert ref.fields["general.name"].contents() == f.get("general.name")
        assert ref.fields["tokenizer.ggml.tokens"].contents() == f.get("tokenizer.ggml.tokens")


def test_round_trip_is_byte_identical(tmp_path):
    src = write_sample(tmp_path / "a.gguf")
    with open_gguf(src) as m:
        specs = [TensorSpec(t.name, t.type, t.dims) for t in m.tensors]
        write_gguf_sync(tmp_path / "b.gguf", m.metadata, specs, lambda s: m.raw(s.name))
    assert filecmp.cmp(src, tmp_path / "b.gguf", shallow=False)


def test_default_model_round_trip_is_byte_identical(default_model, tmp_path):
    with open_gguf(default_model) as m:
        specs = [TensorSpec(t.name, t.type, t.dims) for t in m.tensors]
        out = write_gguf_sync(tmp_path / "copy.gguf", m.metadata, specs, lambda s: m.raw(s.name))
    assert filecmp.cmp(default_model, out[0], shallow=False)


def test_split_by_tensor_count_and_rejoin(tmp_path):
    src = write_sample(tmp_path / "a.gguf")
    with open_gguf(src) as m:
        specs = [TensorSpec(t.name, t.type, t.dims) for t in m.tensors]
        shards = write_gguf_sync(
            tmp_path / "split" / "m.gguf",
            m.metadata,
            specs,
            lambda s: m.raw(s.name),
            split=SplitPolicy(max_tensors=1),
        )
        assert [p.name for p in shards] == [f"m-0000{i}-of-00003.gguf" for i in (1, 2, 3)]
        for opened_from in shards:  # any shard opens the whole model
            with open_gguf(opened_from) as joined:
                assert joined.paths == shards
                assert [t.name for t in joined.tensors] == specs_names(specs)
                assert [t.shard for t in joined.tensors] == [0, 1, 2]
                for t in m.tensors:
                    assert bytes(joined.raw(t.name)) == bytes(m.raw(t.name))
                assert joined.get("general.name") == m.get("general.name")
                assert joined.get("split.count") == 3
        with GGUFFile(shards[1]) as second:
            assert set(second.metadata) == {"split.no", "split.count", "split.tensors.count"}
            assert second.metadata["split.no"].type == V.UINT16
            assert second.metadata["split.tensors.count"].type == V.INT32
        # re-join into one file: identical to the source apart from the split.* keys
        with open_gguf(shards[0]) as joined:
            meta = {k: v for k, v in joined.metadata.items() if not k.startswith("split.")}
            out = write_gguf_sync(tmp_path / "joined.gguf", meta, specs, lambda s: joined.raw(s.name))
    assert filecmp.cmp(src, out[0], shallow=False)


def specs_names(specs):
    return [s.name for s in specs]


def test_split_by_size(tmp_path):
    src = write_sample(tmp_path / "a.gguf")
    with open_gguf(src) as m:
        specs = [TensorSpec(t.name, t.type, t.dims) for t in m.tensors]
        shards = write_gguf_sync(
            tmp_path / "m.gguf",
            m.metadata,
            specs,
            lambda s: m.raw(s.name),
            split=SplitPolicy(max_bytes=1100),
        )
    # 1024 + 128 > 1100 → shard 1 holds only the F32 tensor; F16 (128) + Q8_0 (136) fit together
    assert len(shards) == 2
    with open_gguf(shards[0]) as joined:
        assert [t.shard for t in joined.tensors] == [0, 1, 1]


def test_split_problems_are_reported(tmp_path):
    src = write_sample(tmp_path / "a.gguf")
    with open_gguf(src) as m:
        specs = [TensorSpec(t.name, t.type, t.dims) for t in m.tensors]
        shards = write_gguf_sync(
            tmp_path / "m.gguf", m.metadata, specs, lambda s: m.raw(s.name), split=SplitPolicy(max_tensors=1)
        )
    shards[2].unlink()
    with pytest.raises(GGUFError, match="shard 3 of 3 is missing"):
        open_gguf(shards[0])
    renamed = tmp_path / "renamed.gguf"
    shards[0].rename(renamed)
    with pytest.raises(GGUFError, match="name does not follow"):
        open_gguf(renamed)


def test_writer_streams_progress_and_leaves_nothing_on_cancel(tmp_path):
    tensors = sample_tensors()
    data = {s.name: a for s, a in tensors}
    token = CancelToken()
    target = tmp_path / "out.gguf"
    gen = write_gguf(target, sample_metadata(), [s for s, _ in tensors], lambda s: data[s.name], cancel=token)
    first = next(gen)
    assert first.stage == "write" and 0 < first.done <= first.total
    token.cancel()
    with pytest.raises(Cancelled):
        list(gen)
    assert list(tmp_path.iterdir()) == []


def test_writer_leaves_nothing_when_data_is_wrong(tmp_path):
    tensors = sample_tensors()
    with pytest.raises(GGUFError, match="expected 1024"):
        write_gguf_sync(tmp_path / "x.gguf", {}, [s for s, _ in tensors], lambda s: b"\0" * 3)
    assert list(tmp_path.iterdir()) == []


def test_abandoned_writer_cleans_up(tmp_path):
    tensors = sample_tensors()
    data = {s.name: a for s, a in tensors}
    gen = write_gguf(tmp_path / "x.gguf", {}, [s for s, _ in tensors], lambda s: data[s.name])
    next(gen)
    assert len(list(tmp_path.iterdir())) == 1  # the temporary
    gen.close()
    assert list(tmp_path.iterdir()) == []


def test_writer_checks_disk_space_first(tmp_path, monkeypatch):
    import shutil as _shutil

    real = _shutil.disk_usage
    monkeypatch.setattr("engine.gguf.writer.shutil.disk_usage", lambda p: real(p)._replace(free=1000))
    tensors = sample_tensors()
    with pytest.raises(DiskSpaceError, match="not enough disk space"):
        write_gguf_sync(tmp_path / "x.gguf", {}, [s for s, _ in tensors], lambda s: None)
    assert list(tmp_path.iterdir()) == []


def test_writer_validates_specs(tmp_path):
    with pytest.raises(GGUFError, match="not a multiple"):
        write_gguf_sync(tmp_path / "x.gguf", {}, [TensorSpec("w", 8, (33, 2))], lambda s: b"")
    with pytest.raises(GGUFError, match="duplicate tensor name"):
        spec = TensorSpec("w", 0, (4,))
        write_gguf_sync(tmp_path / "x.gguf", {}, [spec, spec], lambda s: bytes(16))
    with pytest.raises(GGUFError, match="longer than 63"):
        write_gguf_sync(tmp_path / "x.gguf", {}, [TensorSpec("w" * 64, 0, (4,))], lambda s: bytes(16))


def test_metadata_value_inference():
    assert metadata_value(True).type == V.BOOL
    assert metadata_value(7).type == V.INT32
    assert metadata_value(2**40).type == V.INT64
    assert metadata_value(2**63).type == V.UINT64
    assert metadata_value(1.5).type == V.FLOAT32
    assert metadata_value("x").type == V.STRING
    s = metadata_value(["a", "b"])
    assert (s.type, s.item_type, s.value) == (V.ARRAY, V.STRING, ["a", "b"])
    f = metadata_value([1, 2.5])
    assert f.item_type == V.FLOAT32
    with pytest.raises(GGUFError, match="cannot store"):
        metadata_value(object())


def test_alignment_is_respected(tmp_path):
    tensors = sample_tensors()
    data = {s.name: a for s, a in tensors}
    meta = {"general.alignment": metadata_value(64, V.UINT32)}
    path = write_gguf_sync(tmp_path / "x.gguf", meta, [s for s, _ in tensors], lambda s: data[s.name])[0]
    with GGUFFile(path) as f:
        assert f.alignment == 64
        assert all(t.file_offset % 64 == 0 for t in f.tensors)
        assert f.file_size % 64 == 0


def test_release_drops_pages_but_never_data(tmp_path):
    """Weights repacked at load let go of their mapped pages; reading them again still works."""
    from engine.gguf import open_gguf

    path = write_sample(tmp_path / "r.gguf")
    with open_gguf(path) as m:
        for t in m.tensors:
            before = np.array(m.raw(t.name))
            m.release(t.name)
            m.release(t.name, 4096, 8192)
            m.release(t.name, 1, 10)
            np.testing.assert_array_equal(m.raw(t.name), before)
