"""What the terminal shows: the project's own output, not its libraries' chatter.

By default the libraries' logs below ERROR, their progress bars and their Python warnings are
silenced (transformers' weight-loading reports and bars, datasets' bars, vLLM's engine logs, torch
and peft warnings), so a run prints one rich progress display per stage and its summary.
`bdpo --verbose` (any command) leaves them all as the libraries set them.
"""

from __future__ import annotations

import logging
import os
import sys
import warnings

# Libraries whose loggers and warnings are silenced; prefixes of logger and module names.
THIRD_PARTY = ("transformers", "datasets", "huggingface_hub", "accelerate", "peft", "torch", "vllm", "trl",
               "sentence_transformers", "urllib3", "filelock", "matplotlib", "PIL")


def quiet_third_party(verbose: bool = False) -> None:
    """Silence the libraries' logs (below ERROR), progress bars and warnings, unless `verbose`.

    Call it before the libraries are imported where possible: vLLM reads its level from the
    environment at import time (and passes it on to its worker processes).
    """
    if verbose:
        return
    os.environ.setdefault("VLLM_LOGGING_LEVEL", "ERROR")
    os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
    os.environ.setdefault("DATASETS_VERBOSITY", "error")
    os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")  # transformers' bars follow this switch
    os.environ.setdefault("TQDM_DISABLE", "1")  # bars of libraries that use plain tqdm
    for name in THIRD_PARTY:
        logging.getLogger(name).setLevel(logging.ERROR)
    pattern = "|".join(THIRD_PARTY)
    warnings.filterwarnings("ignore", module=rf"({pattern})(\.|$)")
    # Already imported (a test, a notebook): transformers keeps its own switch for its bars.
    hf_logging = sys.modules.get("transformers.utils.logging")
    if hf_logging is not None:
        hf_logging.set_verbosity_error()
        hf_logging.disable_progress_bar()
