"""What a training run writes under its version directory, and the built-in base models' names.

Torch-free: the web process, the worker's supervisor and the sweep use these names without loading the training
core. The trainer writes exactly these; nothing else spells them.

    <output_dir>/training.log             written live from the first step
    <output_dir>/policy/                  plain Hugging Face model directory (written as .policy.tmp, then renamed)
    <output_dir>/reward_model/            adapter, reward_head.pt, config.json (written as .reward_model.tmp)
    <output_dir>/training_results.json    written last: its presence marks a finished run
"""
LOG_FILE = "training.log"
POLICY_DIR = "policy"
REWARD_MODEL_DIR = "reward_model"
RESULTS_FILE = "training_results.json"


def tmp_name(name: str) -> str:
    """The temporary name a directory is written under before it is renamed into place."""
    return f".{name}.tmp"


# What a run that did not finish may leave behind besides training.log (removed by whoever notices it died).
UNFINISHED_OUTPUTS = (POLICY_DIR, REWARD_MODEL_DIR, tmp_name(POLICY_DIR), tmp_name(REWARD_MODEL_DIR))

# Built locally and offline by base_models.py (a name here never reaches the Hugging Face hub).
N3_TINY = "n3-tiny"
N3_TINY_RANDOM = "n3-tiny-random"
BUILTIN_MODELS = (N3_TINY, N3_TINY_RANDOM)
BUILTIN_CONTEXT = 512  # their positions (n_positions); base_models.CONTEXT builds them with it
BUILTIN_WIDTHS = {N3_TINY: 128, N3_TINY_RANDOM: 64}  # their hidden sizes (n_embd): base_models.RECIPES builds them
BASE_SUBDIR = "_base"  # they are built into MODELS_DIR/_base/<name>/
