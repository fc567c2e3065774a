"""The embedding cache: an LRU in memory bounded in MB, ``.npy`` files on disk, a damaged file read as a miss."""

import numpy as np

from pointsam_engine.sam.cache import EmbeddingCache, embedding_key

QUARTER_MB = 2**18 // 4  # float32 values in 0.25 MB


def _block(value: float) -> np.ndarray:
    return np.full(QUARTER_MB, value, np.float32)


def test_keys_name_every_part_and_ignore_their_order():
    key = embedding_key(raster="a.tif", window=(0, 0, 256, 256), model="tiny@1")
    assert key == embedding_key(model="tiny@1", window=(0, 0, 256, 256), raster="a.tif")
    assert key != embedding_key(raster="a.tif", window=(0, 0, 256, 256), model="tiny@2")
    assert len(key) == 64 and int(key, 16) >= 0


def test_memory_evicts_the_least_recently_used_beyond_its_size():
    cache = EmbeddingCache(memory_mb=1)  # room for four quarter-MB blocks
    for name in "abcd":
        cache.put(name, _block(ord(name)))
    assert cache.get("a")[0] == ord("a")  # "a" is now the most recently used
    cache.put("e", _block(5))
    assert cache.get("b") is None, "the least recently used went"
    assert all(cache.get(name) is not None for name in "acde")
    assert cache.hits == 5 and cache.misses == 1


def test_an_embedding_larger_than_the_memory_is_not_kept_and_evicts_nothing():
    cache = EmbeddingCache(memory_mb=1)
    cache.put("small", _block(1))
    cache.put("huge", np.zeros(5 * QUARTER_MB, np.float32))
    assert cache.get("huge") is None and cache.get("small") is not None


def test_embeddings_persist_as_npy_files_another_cache_reads(tmp_path):
    key = embedding_key(chip=1)
    array = np.arange(12, dtype=np.float32).reshape(1, 3, 2, 2)
    EmbeddingCache(memory_mb=1, cache_dir=tmp_path).put(key, array)
    path = tmp_path / key[:2] / f"{key}.npy"
    assert path.is_file() and sorted(p.name for p in path.parent.iterdir()) == [path.name], "no temporary file stays"
    np.testing.assert_array_equal(np.load(path), array)
    fresh = EmbeddingCache(memory_mb=1, cache_dir=tmp_path)
    np.testing.assert_array_equal(fresh.get(key), array)
    assert fresh.disk_hits == 1 and fresh.get(key) is not None and fresh.hits == 1, "read once, then from memory"


def test_a_damaged_file_is_a_miss_and_the_next_put_replaces_it(tmp_path):
    key = embedding_key(chip=2)
    path = tmp_path / key[:2] / f"{key}.npy"
    path.parent.mkdir()
    path.write_bytes(b"\x93NUMPY truncated")
    cache = EmbeddingCache(memory_mb=1, cache_dir=tmp_path)
    assert cache.get(key) is None and cache.misses == 1 and cache.disk_hits == 0
    cache.put(key, _block(7))
    assert EmbeddingCache(memory_mb=1, cache_dir=tmp_path).get(key)[0] == 7


def test_a_cache_folder_that_cannot_be_written_keeps_the_embedding_in_memory(tmp_path):
    blocked = tmp_path / "not-a-folder"
    blocked.write_text("a file where the cache folder should be")
    cache = EmbeddingCache(memory_mb=1, cache_dir=blocked)
    cache.put("k", _block(3))  # the run goes on
    assert cache.get("k")[0] == 3 and blocked.read_text().startswith("a file")
