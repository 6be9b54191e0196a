"""save_pretrained is atomic: a kill at any moment leaves the old save or the new one, never a mix; what else the
folder holds survives; the model's processor is saved with it, so the folder feeds pipeline as it is."""

import os
import shutil
import signal
import threading

import pytest
import torch
from tqdm import tqdm
from transformers.utils.logging import disable_progress_bar

from modeling_deem import DeemForConditionalGeneration
from modeling_deem.atomic_save import atomic_directory
from modeling_deem.tiny import tiny_config

SHARD = "150KB"  # the tiny model in about a dozen shards


def tiny(seed: int) -> DeemForConditionalGeneration:
    torch.manual_seed(seed)
    return DeemForConditionalGeneration(tiny_config())


def weights(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.clone() for k, v in model.state_dict().items()}


def which(folder, candidates: dict[str, dict[str, torch.Tensor]]) -> str:
    loaded = DeemForConditionalGeneration.from_pretrained(folder).state_dict()
    for name, state in candidates.items():
        if all(torch.equal(loaded[k], v) for k, v in state.items()):
            return name
    raise AssertionError(f"{folder} holds neither save: a mix")


def killed_while_saving(model, target, kill_point: tuple[str, int]) -> int:
    """Save `model` over `target` in a forked child that SIGKILLs itself at `kill_point`: ("shard", k) as it is
    about to write its k-th weight file, ("swap", 0) just before the staging folder is swapped in. Whatever the
    machine's load, the kill lands exactly there. Returns the child's wait status."""
    import transformers.modeling_utils as modeling_utils

    import modeling_deem.atomic_save as atomic_save

    child = os.fork()
    if child == 0:
        try:
            # tqdm's write lock is a semaphore shared across fork: a child killed holding it would hang us.
            tqdm.set_lock(threading.RLock())
            disable_progress_bar()
            kind, count = kill_point
            written = []

            def die_at_shard(*args, **kwargs):
                if len(written) == count:
                    os.kill(os.getpid(), signal.SIGKILL)
                written.append(1)
                return save_shard(*args, **kwargs)

            save_shard = modeling_utils.safe_save_file
            if kind == "shard":
                modeling_utils.safe_save_file = die_at_shard
            else:
                atomic_save._replace = lambda *args: os.kill(os.getpid(), signal.SIGKILL)
            model.save_pretrained(target, max_shard_size=SHARD)
        finally:
            os._exit(0)
    _, status = os.waitpid(child, 0)
    return status


def test_a_save_killed_at_any_moment_leaves_the_old_or_the_new_save(tmp_path):
    old, new = tiny(0), tiny(1)
    candidates = {"old": weights(old), "new": weights(new)}
    target = tmp_path / "model"
    for kill_point in [("shard", 0), ("shard", 1), ("shard", 4), ("swap", 0)]:
        old.save_pretrained(target, max_shard_size=SHARD)
        status = killed_while_saving(new, target, kill_point)
        assert os.WIFSIGNALED(status) and os.WTERMSIG(status) == signal.SIGKILL, kill_point
        assert which(target, candidates) == "old", kill_point  # never a mix of the two saves' shards
        for leftover in tmp_path.glob(".model.saving-*"):  # a killed save's staging folder
            shutil.rmtree(leftover)
    new.save_pretrained(target, max_shard_size=SHARD)
    assert which(target, candidates) == "new"


def test_a_save_over_a_training_folder_keeps_its_other_content_and_drops_old_shards(tmp_path):
    tiny(0).save_pretrained(tmp_path, max_shard_size=SHARD)
    assert len(list(tmp_path.glob("model-*.safetensors"))) > 1
    (tmp_path / "checkpoint-2").mkdir()
    (tmp_path / "checkpoint-2" / "trainer_state.json").write_text("{}")
    (tmp_path / "notes.txt").write_text("kept")
    model = tiny(1)
    model.save_pretrained(tmp_path)  # one file this time
    assert not list(tmp_path.glob("model-*.safetensors")) and not (tmp_path / "model.safetensors.index.json").exists()
    assert (tmp_path / "notes.txt").read_text() == "kept"
    assert (tmp_path / "checkpoint-2" / "trainer_state.json").read_text() == "{}"
    assert which(tmp_path, {"new": weights(model)}) == "new"
    assert not list(tmp_path.parent.glob(f".{tmp_path.name}.*"))  # no staging folder left behind


def test_an_error_during_the_save_leaves_the_old_save_untouched(tmp_path):
    old = tiny(0)
    old.save_pretrained(tmp_path / "model")
    before = sorted(p.name for p in (tmp_path / "model").iterdir())
    with pytest.raises(RuntimeError, match="disk full"):
        with atomic_directory(tmp_path / "model") as staging:
            (staging / "model.safetensors").write_bytes(b"partial")
            raise RuntimeError("disk full")
    assert sorted(p.name for p in (tmp_path / "model").iterdir()) == before
    assert which(tmp_path / "model", {"old": weights(old)}) == "old"
    assert [p.name for p in tmp_path.iterdir()] == ["model"]


def test_a_save_keeps_the_folders_mode_or_gives_a_new_one_the_umasks(tmp_path):
    old_umask = os.umask(0o027)
    try:
        with atomic_directory(tmp_path / "new") as staging:
            (staging / "config.json").write_text("{}")
        assert (tmp_path / "new").stat().st_mode & 0o777 == 0o750  # not mkdtemp's 0o700
        (tmp_path / "shared").mkdir()
        os.chmod(tmp_path / "shared", 0o775)
        for _ in range(2):  # a new save, then one over it
            with atomic_directory(tmp_path / "shared") as staging:
                (staging / "config.json").write_text("{}")
            assert (tmp_path / "shared").stat().st_mode & 0o777 == 0o775
    finally:
        os.umask(old_umask)


def test_a_target_spelled_with_dots_saves_and_the_working_folder_is_refused(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "model" / "sub").mkdir(parents=True)
    model = tiny(0)
    model.save_pretrained("model/sub/..")  # the folder `model`, not a staging folder inside it
    assert (tmp_path / "model" / "config.json").exists()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["model"]
    assert which(tmp_path / "model", {"saved": weights(model)}) == "saved"
    monkeypatch.chdir(tmp_path / "model" / "sub")
    for target in (".", "..", str(tmp_path / "model" / "sub")):
        with pytest.raises(ValueError, match="working directory"):
            model.save_pretrained(target)
    assert not [p for folder in (tmp_path, tmp_path / "model") for p in folder.iterdir() if p.name.startswith(".")]


def test_saving_into_a_file_is_refused(tmp_path):
    (tmp_path / "model").write_text("not a folder")
    with pytest.raises(ValueError, match="is a file"):
        tiny(0).save_pretrained(tmp_path / "model")


def test_save_pretrained_alone_feeds_pipeline(tmp_path):
    from transformers import pipeline

    from processing import DeemProcessor
    from trainers import make_shapes_dataset

    ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    model = tiny(0)
    model.processor = DeemProcessor.from_pretrained(os.path.join(ROOT, "hub_configs", "deem-tiny"))
    model.save_pretrained(tmp_path / "a")
    assert (tmp_path / "a" / "processor_config.json").exists()
    reloaded = DeemForConditionalGeneration.from_pretrained(tmp_path / "a")
    assert reloaded.processor is not None
    reloaded.save_pretrained(tmp_path / "b")  # the loaded model knows its processor: saved again
    answer = pipeline("image-text-to-text", model=str(tmp_path / "b"), trust_remote_code=True)
    image = make_shapes_dataset(num_rows=1, seed=0)[0]["images"][0]
    out = answer(text=[{"role": "user", "content": [{"type": "image", "image": image},
                                                    {"type": "text", "text": "What is it?"}]}],
                 max_new_tokens=2, generate_kwargs={"do_sample": False})
    assert isinstance(out[0]["generated_text"], (str, list))


def test_saving_without_a_processor_says_so(tmp_path, caplog):
    from transformers.utils import logging

    logging.enable_propagation()
    model = tiny(0)
    model.save_pretrained(tmp_path)
    assert "without a processor" in caplog.text
