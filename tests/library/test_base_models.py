"""The built-in offline base models (n3-tiny, n3-tiny-random) and the clear failure for anything not loadable.

No Django needed. n3-tiny-random is built into fresh temporary directories (about a second each). n3-tiny is built
once per MODELS_DIR (tests/settings.py points it at a per-machine temp directory shared with the training tests),
so its slow build (about 1.5 minutes on 2 cores) happens once per machine, not once per test run.
"""
import hashlib
import json
import math
import os
import re
import threading
import time
from pathlib import Path

import huggingface_hub
import pytest
import torch
from peft import get_peft_model
from transformers import AutoModelForCausalLM, AutoTokenizer, GPT2LMHeadModel

from n3_server.rlhf.base_models import (
    BASE_SUBDIR,
    BUILD_MARKER,
    BUILD_VERSION,
    BUILTIN_MODELS,
    EOS,
    N3_TINY,
    N3_TINY_RANDOM,
    build_base_model,
    corpus_loss,
    is_complete_build,
    load_causal_lm,
    load_tokenizer,
    resolve_base_model,
)
from n3_server.rlhf.corpus import corpus_examples
from n3_server.rlhf.errors import BaseModelUnavailable, TrainingCancelled
from n3_server.rlhf.modeling import lora_config_for


def weights_digest(model) -> str:
    digest = hashlib.sha256()
    for name, tensor in sorted(model.state_dict().items()):
        digest.update(name.encode())
        digest.update(tensor.numpy().tobytes())
    return digest.hexdigest()


@pytest.fixture(scope="module")
def random_models_dir(tmp_path_factory) -> Path:
    """One n3-tiny-random build shared by the tests that only read it."""
    models_dir = tmp_path_factory.mktemp("models")
    build_base_model(N3_TINY_RANDOM, models_dir)
    return models_dir


@pytest.fixture(scope="module")
def n3_tiny(tmp_path_factory):
    """(model, tokenizer, build marker) of n3-tiny, built once per MODELS_DIR."""
    models_dir = Path(os.environ.get("MODELS_DIR") or tmp_path_factory.mktemp("models"))
    path = Path(resolve_base_model(N3_TINY, models_dir=models_dir))
    marker = json.loads((path / BUILD_MARKER).read_text())
    return load_causal_lm(N3_TINY, models_dir=models_dir), load_tokenizer(N3_TINY, models_dir=models_dir), marker


# -- the corpus --------------------------------------------------------------------------------------------------------
def test_corpus_is_deterministic_and_split_without_overlap():
    assert corpus_examples(50, seed=3) == corpus_examples(50, seed=3) != corpus_examples(50, seed=4)
    train, heldout = corpus_examples(split="train"), corpus_examples(split="heldout")
    assert len(train) > 1000 and 0.05 < len(heldout) / (len(train) + len(heldout)) < 0.15
    assert sorted(train + heldout) == sorted(corpus_examples())
    assert len({q for q, _ in corpus_examples()}) == len(corpus_examples())  # one answer per question


def test_corpus_fits_the_prompt_newline_response_format():
    for question, answer in corpus_examples():
        assert question.strip() == question and answer.strip() == answer and question and answer
        assert "\n" not in question + answer and EOS not in question + answer


def test_asking_for_more_examples_than_exist_repeats_them():
    everything = corpus_examples()
    more = corpus_examples(len(everything) + 10, seed=1)
    assert len(more) == len(everything) + 10 and set(more) == set(everything)
    with pytest.raises(ValueError):
        corpus_examples(split="validation")


# -- n3-tiny-random: building, loading, determinism --------------------------------------------------------------------
def test_builtin_names_resolve_to_a_plain_hugging_face_directory(random_models_dir):
    path = resolve_base_model(N3_TINY_RANDOM, models_dir=random_models_dir)
    assert Path(path) == random_models_dir / BASE_SUBDIR / N3_TINY_RANDOM
    # What any Hugging Face user would do with the directory: no n3 code needed.
    model = AutoModelForCausalLM.from_pretrained(path)
    tokenizer = AutoTokenizer.from_pretrained(path)
    assert isinstance(model, GPT2LMHeadModel)
    assert model.num_parameters() < 500_000  # a micro model: unit tests stay fast
    eos = tokenizer.convert_tokens_to_ids(EOS)
    assert tokenizer.eos_token == tokenizer.bos_token == tokenizer.pad_token == tokenizer.unk_token == EOS
    assert model.config.eos_token_id == model.config.bos_token_id == model.config.pad_token_id == eos
    assert model.generation_config.eos_token_id == eos and model.generation_config.pad_token_id == eos
    assert model.config.resid_pdrop == model.config.attn_pdrop == model.config.embd_pdrop == 0.1  # as GPT-2 ships
    assert 1500 < len(tokenizer) <= 4096 and model.config.vocab_size == len(tokenizer)
    assert model.config.n_positions >= 512  # the reward model reads up to 512 tokens


def test_other_names_are_returned_unchanged(tmp_path):
    assert resolve_base_model("gpt2", models_dir=tmp_path) == "gpt2"
    assert resolve_base_model(str(tmp_path / "my-model"), models_dir=tmp_path) == str(tmp_path / "my-model")
    assert not (tmp_path / BASE_SUBDIR).exists()  # nothing built for them


def test_load_functions_return_left_padded_tokenizer_and_float32_model(random_models_dir):
    tokenizer = load_tokenizer(N3_TINY_RANDOM, models_dir=random_models_dir)
    model = load_causal_lm(N3_TINY_RANDOM, models_dir=random_models_dir)
    assert tokenizer.padding_side == "left"
    assert load_tokenizer(N3_TINY_RANDOM, models_dir=random_models_dir, padding_side="right").padding_side == "right"
    assert next(model.parameters()).dtype == torch.float32 and next(model.parameters()).device.type == "cpu"
    batch = tokenizer(["Hi\n", "What is the capital of France?\n"], return_tensors="pt", padding=True)
    output = model.generate(**batch, max_new_tokens=5, do_sample=False)
    assert torch.equal(output[:, :batch["input_ids"].shape[1]], batch["input_ids"])  # continues the prompts
    assert batch["input_ids"][0, 0] == tokenizer.pad_token_id and batch["attention_mask"][0, 0] == 0  # left padding


def test_lora_targets_the_gpt2_attention_and_projection_layers(random_models_dir):
    model = load_causal_lm(N3_TINY_RANDOM, models_dir=random_models_dir)
    config = lora_config_for(model, r=4, alpha=8, dropout=0.0)
    peft_model = get_peft_model(model, config)
    adapted = {name.split(".")[-1] for name, module in peft_model.named_modules() if hasattr(module, "lora_A")}
    assert adapted == {"c_attn", "c_proj", "c_fc"} and config.fan_in_fan_out


def test_rebuilding_n3_tiny_random_gives_the_same_tokenizer_and_weights(random_models_dir, tmp_path):
    rebuilt_dir = tmp_path / "again"
    build_base_model(N3_TINY_RANDOM, rebuilt_dir)
    first, second = (load_tokenizer(N3_TINY_RANDOM, models_dir=d) for d in (random_models_dir, rebuilt_dir))
    assert first.get_vocab() == second.get_vocab()
    assert weights_digest(load_causal_lm(N3_TINY_RANDOM, models_dir=random_models_dir)) == weights_digest(
        load_causal_lm(N3_TINY_RANDOM, models_dir=rebuilt_dir))


@pytest.mark.parametrize("text", [
    "What is the capital of France?\nThe capital of France is Paris.",
    "Words it never saw: Zürich, naïve, 東京, emoji 🙂, tabs\tand  double spaces.",
    "",
])
def test_tokenizer_round_trips_any_text_without_adding_tokens(random_models_dir, text):
    tokenizer = load_tokenizer(N3_TINY_RANDOM, models_dir=random_models_dir)
    ids = tokenizer(text)["input_ids"]
    assert tokenizer.decode(ids) == text  # byte-level: nothing is lost, no unknown token
    assert tokenizer.eos_token_id not in ids  # no BOS/EOS added: the trainers add the EOS themselves


def test_eos_is_one_token(random_models_dir):
    tokenizer = load_tokenizer(N3_TINY_RANDOM, models_dir=random_models_dir)
    assert tokenizer("Yes." + EOS)["input_ids"][-1] == tokenizer.eos_token_id


# -- a build is atomic, locked and versioned ---------------------------------------------------------------------------
def test_a_partial_directory_is_rebuilt_not_loaded(random_models_dir, tmp_path):
    """A crash or a copy gone wrong left config.json but not the rest: n3 must rebuild, not load half a model."""
    target = tmp_path / BASE_SUBDIR / N3_TINY_RANDOM
    target.mkdir(parents=True)
    (target / "config.json").write_text((random_models_dir / BASE_SUBDIR / N3_TINY_RANDOM / "config.json").read_text())
    leftover = tmp_path / BASE_SUBDIR / f".{N3_TINY_RANDOM}.building-dead"  # a builder killed mid-way
    leftover.mkdir()
    assert not is_complete_build(target)

    load_causal_lm(N3_TINY_RANDOM, models_dir=tmp_path)

    assert is_complete_build(target) and (target / "model.safetensors").exists()
    assert not leftover.exists()
    assert sorted(p.name for p in (tmp_path / BASE_SUBDIR).iterdir()) == [f".{N3_TINY_RANDOM}.lock", N3_TINY_RANDOM]


def test_a_build_of_another_version_is_replaced(random_models_dir, tmp_path):
    build_base_model(N3_TINY_RANDOM, tmp_path)
    marker_path = tmp_path / BASE_SUBDIR / N3_TINY_RANDOM / BUILD_MARKER
    marker = json.loads(marker_path.read_text())
    marker_path.write_text(json.dumps({**marker, "build_version": BUILD_VERSION - 1}))

    resolve_base_model(N3_TINY_RANDOM, models_dir=tmp_path)

    assert json.loads(marker_path.read_text())["build_version"] == BUILD_VERSION


def test_concurrent_builders_build_once_and_never_expose_a_half_built_model(tmp_path):
    target = tmp_path / BASE_SUBDIR / N3_TINY_RANDOM
    building, seen_while_building, builds = threading.Event(), [], []

    def first_builder_callback(progress):
        if progress.step == 0:
            builds.append(progress.message)
            building.set()
            time.sleep(0.5)  # hold the lock while the second builder arrives
            seen_while_building.append(is_complete_build(target) or target.exists())

    def second_builder_callback(progress):
        builds.append(progress.message)

    results = {}
    first = threading.Thread(target=lambda: results.setdefault("first", resolve_base_model(
        N3_TINY_RANDOM, models_dir=tmp_path, callback=first_builder_callback)))
    first.start()
    assert building.wait(timeout=30)
    results["second"] = resolve_base_model(N3_TINY_RANDOM, models_dir=tmp_path, callback=second_builder_callback)
    first.join(timeout=60)

    assert results["first"] == results["second"] == str(target)
    assert len(builds) == 1  # the second caller waited for the lock and found the finished build
    assert seen_while_building == [False]  # during the build, the final directory did not exist at all
    assert is_complete_build(target)


def test_a_cancelled_build_leaves_nothing_behind(tmp_path):
    with pytest.raises(TrainingCancelled):
        build_base_model(N3_TINY_RANDOM, tmp_path, callback=lambda progress: True)
    assert [p.name for p in (tmp_path / BASE_SUBDIR).iterdir()] == [f".{N3_TINY_RANDOM}.lock"]


def test_progress_is_reported_as_the_base_model_phase(tmp_path):
    reports = []
    build_base_model(N3_TINY_RANDOM, tmp_path, callback=reports.append)
    assert reports and {r.phase for r in reports} == {"base_model"}
    assert reports[-1].step == reports[-1].total


def test_an_unwritable_models_dir_is_a_clear_error(tmp_path):
    blocker = tmp_path / "a-file"
    blocker.write_text("not a directory")
    with pytest.raises(BaseModelUnavailable, match="n3-tiny-random"):
        resolve_base_model(N3_TINY_RANDOM, models_dir=blocker)


# -- anything else: from_pretrained, offline, clear errors ------------------------------------------------------------
def _cached_on_this_machine(repo_id: str) -> bool:
    return isinstance(huggingface_hub.try_to_load_from_cache(repo_id, "config.json"), str)


@pytest.mark.parametrize("loader", [load_tokenizer, load_causal_lm])
@pytest.mark.parametrize("name", ["gpt2", "nobody-n3/no-such-model"])
def test_hub_ids_not_in_the_cache_fail_fast_and_point_to_n3_tiny(loader, name, tmp_path):
    if os.environ.get("N3_ALLOW_HUB") == "1" or _cached_on_this_machine(name):
        pytest.skip(f"{name} may be loadable here (hub allowed or cached)")
    started = time.perf_counter()
    with pytest.raises(BaseModelUnavailable) as raised:
        loader(name, models_dir=tmp_path)
    assert time.perf_counter() - started < 5  # no retries against an unreachable hub
    message = str(raised.value)
    assert repr(name) in message and 'base_model="n3-tiny"' in message and "N3_ALLOW_HUB=1" in message


@pytest.mark.parametrize("loader", [load_tokenizer, load_causal_lm])
def test_a_missing_local_path_fails_with_a_clear_message(loader, tmp_path):
    missing = tmp_path / "no" / "such" / "model"
    with pytest.raises(BaseModelUnavailable, match=r"there is no directory .*no/such/model.*n3-tiny"):
        loader(str(missing), models_dir=tmp_path)


@pytest.mark.parametrize("loader", [load_tokenizer, load_causal_lm])
def test_a_directory_without_a_model_fails_with_a_clear_message(loader, tmp_path):
    (tmp_path / "empty").mkdir()
    with pytest.raises(BaseModelUnavailable, match="is not a model directory .it has no config.json.*n3-tiny"):
        loader(str(tmp_path / "empty"), models_dir=tmp_path)


@pytest.mark.parametrize("loader", [load_tokenizer, load_causal_lm])
def test_a_damaged_model_directory_fails_with_a_clear_message(loader, random_models_dir, tmp_path):
    """config.json alone: no weights, no tokenizer files (transformers would build an empty tokenizer from it)."""
    damaged = tmp_path / "damaged"
    damaged.mkdir()
    (damaged / "config.json").write_text((random_models_dir / BASE_SUBDIR / N3_TINY_RANDOM / "config.json").read_text())
    with pytest.raises(BaseModelUnavailable, match="is not a loadable model directory .*n3-tiny"):
        loader(str(damaged), models_dir=tmp_path)


def test_a_local_model_directory_loads_through_from_pretrained(random_models_dir):
    path = str(random_models_dir / BASE_SUBDIR / N3_TINY_RANDOM)
    assert resolve_base_model(path) == path
    assert isinstance(load_causal_lm(path), GPT2LMHeadModel)
    assert load_tokenizer(path).pad_token == EOS


# -- n3-tiny: pretrained, writes readable answers ----------------------------------------------------------------------
def _corpus_words() -> set[str]:
    return {w.lower() for q, a in corpus_examples() for w in re.findall(r"[A-Za-z]+", q + " " + a)}


def _greedy_answers(model, tokenizer, questions: list[str]) -> tuple[list[str], list[bool]]:
    batch = tokenizer([q + "\n" for q in questions], return_tensors="pt", padding=True)
    with torch.no_grad():
        output = model.generate(**batch, max_new_tokens=40, do_sample=False)
    responses = output[:, batch["input_ids"].shape[1]:]
    ended = [(row == tokenizer.eos_token_id).any().item() for row in responses]
    return tokenizer.batch_decode(responses, skip_special_tokens=True), ended


@pytest.mark.slow
def test_n3_tiny_answers_corpus_questions_with_readable_text(n3_tiny):
    model, tokenizer, marker = n3_tiny
    assert 500_000 < model.num_parameters() < 5_000_000
    train = corpus_examples(40, seed=7, split="train")
    answers, ended = _greedy_answers(model, tokenizer, [q for q, _ in train])
    assert all(ended)  # every answer stops with EOS, as the RLHF trainers expect
    exact = sum(answer == expected for answer, (_, expected) in zip(answers, train))
    assert exact >= 30, list(zip(answers, train))  # it learnt the corpus

    known = _corpus_words()
    heldout = corpus_examples(40, seed=7, split="heldout")
    answers, _ = _greedy_answers(model, tokenizer, [q for q, _ in heldout] + ["Tell me something nice."])
    words = [w.lower() for answer in answers for w in re.findall(r"[A-Za-z]+", answer)]
    assert len(words) > 100 and sum(w in known for w in words) / len(words) > 0.95  # English, no byte garbage
    assert all(answer.strip() and answer.isprintable() for answer in answers)


@pytest.mark.slow
def test_n3_tiny_predicts_held_out_dialogues_far_better_than_chance(n3_tiny, random_models_dir):
    model, tokenizer, marker = n3_tiny
    heldout = corpus_examples(split="heldout")
    chance = math.log(len(tokenizer))  # a uniform guess over the vocabulary
    loss = corpus_loss(model, tokenizer, heldout)
    untrained = corpus_loss(load_causal_lm(N3_TINY_RANDOM, models_dir=random_models_dir), tokenizer, heldout)
    assert loss < 0.25 * chance and loss < 0.25 * untrained
    assert marker["heldout_loss"] == pytest.approx(loss, abs=1e-3)
    assert not set(heldout) & set(corpus_examples(split="train"))  # held out for real


def test_builtin_model_names_are_the_public_contract():
    assert BUILTIN_MODELS == ("n3-tiny", "n3-tiny-random") == (N3_TINY, N3_TINY_RANDOM)
