"""Shared fixtures: tiny randomly initialised Hugging Face models (llama, gpt2, gpt-neox,
bert) with a small BPE tokenizer trained on the demo corpus, saved as real model folders."""

from __future__ import annotations

import os
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")


def _use_session_cache() -> None:
    """Give this test session (and the CLIs it runs) its own LatentLab cache folder, so the
    feature tables tests write never land in the user's cache, nor stale ones get read
    from it. What is slow to make and never depends on a test (the converted SmolLM2,
    numba's compiled kernels) is linked from the user's cache."""
    import atexit
    import shutil
    import tempfile

    from engine.cache import cache_root
    user = cache_root()
    session = Path(tempfile.mkdtemp(prefix="latentlab-test-cache-"))
    atexit.register(shutil.rmtree, session, True)
    for entry in user.glob("*") if user.is_dir() else ():
        if entry.is_dir() and entry.name != "feature-tables" and ".tmp" not in entry.name:
            (session / entry.name).symlink_to(entry, target_is_directory=True)
    os.environ["LATENTLAB_CACHE"] = str(session)


_use_session_cache()


def _train_tokenizer(kind: str):
    """A byte-level BPE tokenizer (vocab ~400) trained on the demo corpus; ``kind`` picks
    its special-token template: llama adds <s>, bert wraps in [CLS] ... [SEP], gpt2 none."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers
    from transformers import PreTrainedTokenizerFast

    from engine.sources.text import DemoCorpus
    specials = ["[PAD]", "[CLS]", "[SEP]", "<s>", "</s>"]
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    texts = [e.text for e in DemoCorpus()][:30]
    tok.train_from_iterator(texts, trainers.BpeTrainer(vocab_size=400, special_tokens=specials,
                                                       initial_alphabet=pre_tokenizers.ByteLevel.alphabet()))
    if kind == "llama":
        tok.post_processor = processors.TemplateProcessing(single="<s> $A", special_tokens=[("<s>", 3)])
    elif kind == "bert":
        tok.post_processor = processors.TemplateProcessing(
            single="[CLS] $A [SEP]", special_tokens=[("[CLS]", 1), ("[SEP]", 2)])
    return PreTrainedTokenizerFast(tokenizer_object=tok, pad_token="[PAD]", bos_token="<s>",
                                   eos_token="</s>", cls_token="[CLS]", sep_token="[SEP]")


def _config(family: str, vocab: int):
    import transformers as tf
    if family == "llama":
        return tf.LlamaConfig(vocab_size=vocab, hidden_size=32, intermediate_size=64, num_hidden_layers=3,
                              num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=256,
                              architectures=["LlamaForCausalLM"])
    if family == "gpt2":
        return tf.GPT2Config(vocab_size=vocab, n_embd=32, n_layer=3, n_head=4, n_positions=256,
                             architectures=["GPT2LMHeadModel"])
    if family == "gpt_neox":
        return tf.GPTNeoXConfig(vocab_size=vocab, hidden_size=32, intermediate_size=64, num_hidden_layers=3,
                                num_attention_heads=4, max_position_embeddings=256,
                                architectures=["GPTNeoXForCausalLM"])
    return tf.BertConfig(vocab_size=vocab, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                         num_attention_heads=4, max_position_embeddings=256, architectures=["BertModel"])


def build_tiny_model(family: str, folder: Path) -> Path:
    """Save a randomly initialised tiny ``family`` model and its tokenizer into ``folder``."""
    import torch
    import transformers as tf
    tok = _train_tokenizer("bert" if family == "bert" else ("llama" if family == "llama" else "gpt2"))
    cfg = _config(family, len(tok))
    torch.manual_seed(0)
    cls = tf.BertModel if family == "bert" else tf.AutoModelForCausalLM
    model = cls(cfg) if family == "bert" else cls.from_config(cfg)
    model.save_pretrained(folder)
    tok.save_pretrained(folder)
    return folder


@pytest.fixture(scope="session")
def tiny_models(tmp_path_factory) -> dict[str, Path]:
    """Folders of tiny llama, gpt2, gpt-neox (causal) and bert (encoder) models."""
    root = tmp_path_factory.mktemp("tiny_models")
    return {f: build_tiny_model(f, root / f) for f in ("llama", "gpt2", "gpt_neox", "bert")}


@pytest.fixture(scope="session")
def tiny_llama(tiny_models) -> Path:
    return tiny_models["llama"]


@pytest.fixture(scope="session")
def llama(tiny_llama):
    """The tiny llama folder loaded as a causal-LM adapter (shared by the SAE tests)."""
    from engine.models import load_model
    return load_model(str(tiny_llama))


def small_demo_spec(tiny_llama: Path, **changes):
    """The demo pipeline shrunk for tests: the tiny llama, 3000 tokens, a small TopK SAE; one
    hook point captured (``hooks``) and no first slice (3000 rows are less than two slices)
    unless ``changes`` ask for more."""
    from engine.demo import DemoSpec
    hook = changes.get("hook", "blocks.1.hook_resid_post")
    spec = dict(model=str(tiny_llama), hook=hook, hooks=[hook], max_tokens=3000, ctx_len=64,
                expansion=4, k=8, sae_batch=256, sae_epochs=3, sae_name="topk-small", umap=False,
                zoo=False)
    return DemoSpec(**{**spec, **changes})


@pytest.fixture(scope="session")
def small_workspace(tiny_llama, tmp_path_factory):
    """A complete workspace (store with a 'topic' label, TopK SAE, feature statistics, PCA
    layouts of rows and latents) built by the real demo pipeline on the tiny llama."""
    import torch

    from engine.demo import build_demo
    from engine.jobs import JobContext
    root = tmp_path_factory.mktemp("workspace") / "small"
    return build_demo(JobContext(device=torch.device("cpu")), root, small_demo_spec(tiny_llama))


@pytest.fixture(scope="session")
def small_stats(small_workspace):
    """The small workspace's feature statistics (its SAE over its store)."""
    from engine.features.stats import load_feature_stats
    from engine.store.activations import ActivationStore
    with ActivationStore.open(small_workspace.store) as store:
        return load_feature_stats(store, small_workspace.sae_id)


def open_browser(qtbot, bridge, ws, store=None, sae=None, stats_id=None, model=None,
                 size: tuple[int, int] = (1200, 800)):
    """A feature browser on its own, on ``ws``'s store, hook point, SAE and statistics (or
    the given ones), once its statistics are loaded; returns (AppState, FeatureBrowser)."""
    from desktop_app.state import AppState
    from views.features.view import FeatureBrowser
    state = AppState(bridge)
    browser = FeatureBrowser(state)
    qtbot.addWidget(browser)
    browser.resize(*size)
    browser.show()
    with state.batch():
        if model is not None:
            state.set_model(model)
        state.set_store(store or ws.store)
        state.set_hook(ws.hook)
        state.set_sae(sae or ws.sae)
        state.set_stats(stats_id or ws.sae_id)
    qtbot.waitUntil(lambda: browser.data_ is not None, timeout=30000)
    return state, browser


def wait_until(qtbot, predicate, timeout: float = 60.0) -> None:
    """Process Qt events until ``predicate()`` holds (``timeout`` seconds at most)."""
    qtbot.waitUntil(predicate, timeout=int(timeout * 1000))


@pytest.fixture
def bridge(qapp):
    """An engine bridge on the CPU (the app's engine thread), stopped afterwards."""
    from desktop_app.bridge import EngineBridge
    b = EngineBridge(device="cpu")
    yield b
    b.shutdown()


@pytest.fixture
def open_window(qtbot, tmp_path):
    """A factory of real main windows (``views``: default every view, as ``main.py``) with
    their own settings file; each is closed and its engine stopped afterwards."""
    from PySide6.QtCore import QSettings

    from desktop_app.app import make_window
    from main import gui_views
    opened = []

    def open_(views=None, size: tuple[int, int] | None = (1400, 900)):
        settings = QSettings(str(tmp_path / f"settings{len(opened)}.ini"), QSettings.Format.IniFormat)
        win = make_window(gui_views() if views is None else views, device="cpu", settings=settings)
        qtbot.addWidget(win)
        if size is not None:
            win.resize(*size)
        win.show()
        opened.append(win)
        return win
    yield open_
    for win in opened:
        win.bridge.shutdown()
        win.close()


@pytest.fixture
def window(open_window):
    """The real main window with every view."""
    return open_window()


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """``perf`` tests (wall-clock rates and times) run only when a ``-m`` expression names
    them (``./run.sh test -m perf``), whatever else ``-m`` selects or drops."""
    if "perf" in (config.option.markexpr or ""):
        return
    perf = [item for item in items if item.get_closest_marker("perf")]
    if perf:
        config.hook.pytest_deselected(items=perf)
        items[:] = [item for item in items if not item.get_closest_marker("perf")]


@pytest.fixture(scope="session")
def digits_workspace(tmp_path_factory):
    """A tiny digits-zoo CNN (a workspace's models/) and its capture of digits:test (stores/,
    hook blocks.1.hook_post, label 'digit')."""
    import torch

    from engine.capture import capture
    from engine.jobs import JobContext
    from engine.models.digits_zoo import train_zoo
    cpu = JobContext(device=torch.device("cpu"))
    root = tmp_path_factory.mktemp("digits")
    train_zoo(cpu, str(root / "models"), arch="cnn", widths=(4,), depths=(2,), seeds=(0,), epochs=2)
    (folder,) = (root / "models").iterdir()
    store = root / "stores" / "digits.h5"
    store.parent.mkdir()
    capture(cpu, model=str(folder), source="digits:test", hooks=["blocks.1.hook_post"], out=store)
    return folder, store


def run_main(*args: str, cwd=None):
    """``main.py ARGS`` run in this process (the same parser and jobs, without the seconds of
    an interpreter start and torch import per call): a CompletedProcess with its exit code and
    what it printed. ``cwd``: the folder it runs in."""
    import contextlib
    import io
    import os
    import subprocess

    import main
    out, err = io.StringIO(), io.StringIO()
    here = os.getcwd()
    try:
        if cwd is not None:
            os.chdir(cwd)
        with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
            try:
                code = main.main(list(args))
            except SystemExit as exc:  # argparse's refusals
                code = exc.code if isinstance(exc.code, int) else 2
    finally:
        os.chdir(here)
    return subprocess.CompletedProcess(list(args), code, out.getvalue(), err.getvalue())
