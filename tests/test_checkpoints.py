import pytest
import torch

from expflow.errors import CheckpointError
from expflow.package.checkpoints import CheckpointStore, RetentionPolicy

POLICY = RetentionPolicy(fast_keep=2, slow_every=3, slow_keep=2, persistent_keep=None)


def state(step):
    return {"model": {"w": torch.tensor([float(step)])}, "step": step}


def save_range(store, numbers, hold=(4,)):
    for n in numbers:
        store.save(state(n * 10), step=n * 10, epoch=n, hold=n in hold)


def expected_files(steps):
    return sorted(f"step-{s:08d}.pt" for s in steps)


def test_tracks_after_ten_saves(tmp_path):
    store = CheckpointStore(tmp_path / "ck", POLICY)
    save_range(store, range(1, 11))
    # fast: 9, 10; slow (every 3rd: 3, 6, 9) keeps 6, 9; persistent: 4
    assert store.files_on_disk() == expected_files([40, 60, 90, 100])
    tracks = {c.step: set(c.tracks) for c in store.list()}
    assert tracks == {40: {"persistent"}, 60: {"slow"}, 90: {"fast", "slow"}, 100: {"fast"}}


def test_tracks_after_continue_from_an_earlier_checkpoint(tmp_path):
    store = CheckpointStore(tmp_path / "ck", POLICY)
    save_range(store, range(1, 8))  # killed after the 7th save ...
    # fast: 6, 7; slow: 3, 6; persistent: 4
    assert store.files_on_disk() == expected_files([30, 40, 60, 70])
    store.truncate_after(60)  # ... and continued from the one at step 60
    assert store.files_on_disk() == expected_files([30, 40, 60])
    save_range(store, range(7, 11))
    assert store.files_on_disk() == expected_files([40, 60, 90, 100])


def test_file_deleted_only_when_every_track_dropped_it(tmp_path):
    store = CheckpointStore(tmp_path / "ck", RetentionPolicy(fast_keep=1, slow_every=2, slow_keep=1))
    save_range(store, [1, 2, 3], hold=())
    # 2 is still in the slow track after fast dropped it
    assert store.files_on_disk() == expected_files([20, 30])
    save_range(store, [4], hold=())
    assert store.files_on_disk() == expected_files([40])


def test_persistent_keep_limits_held(tmp_path):
    store = CheckpointStore(tmp_path / "ck", RetentionPolicy(fast_keep=1, slow_every=0, slow_keep=0, persistent_keep=1))
    save_range(store, range(1, 6), hold=(2, 4))
    assert store.files_on_disk() == expected_files([40, 50])


def test_load_verifies_checksum(tmp_path):
    store = CheckpointStore(tmp_path / "ck", POLICY)
    info = store.save(state(10), step=10, epoch=1)
    assert store.load(info)["model"]["w"].item() == 10.0
    path = store.dir / info.file
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 0xFF
    path.write_bytes(bytes(data))
    with pytest.raises(CheckpointError, match="corrupt checkpoint"):
        store.load(info)


def test_find_names_valid_steps(tmp_path):
    store = CheckpointStore(tmp_path / "ck", POLICY)
    save_range(store, [1, 2], hold=())
    with pytest.raises(CheckpointError, match="valid steps: 10, 20"):
        store.find(15)
    assert store.find(None).step == 20


@pytest.mark.parametrize("field, value", [("fast_keep", "2"), ("slow_every", 1.5), ("slow_keep", True),
                                          ("persistent_keep", "all")])
def test_policy_of_the_wrong_type_is_a_checkpoint_error(field, value):
    with pytest.raises(CheckpointError, match=f"checkpoint.{field} must be an integer"):
        RetentionPolicy(**{field: value})


def test_damaged_index_is_one_error_naming_the_key_and_is_never_overwritten(tmp_path):
    import json

    store = CheckpointStore(tmp_path / "ck", POLICY)
    save_range(store, [1, 2], hold=())
    index = json.loads(store.index_path.read_text())
    index["checkpoints"]["2"]["epoch"] = "2"
    store.index_path.write_text(json.dumps(index))
    damaged = store.index_path.read_bytes()
    with pytest.raises(CheckpointError, match=r"index.json: invalid checkpoint index: key 'checkpoints.2.epoch'"):
        store.list()
    # A save or a truncation on a damaged index fails: it never replaces the index by a new one.
    with pytest.raises(CheckpointError, match="checkpoints.2.epoch"):
        store.save(state(30), step=30, epoch=3)
    with pytest.raises(CheckpointError, match="checkpoints.2.epoch"):
        store.truncate_after(10)
    assert store.index_path.read_bytes() == damaged
    assert store.files_on_disk() == expected_files([10, 20])
