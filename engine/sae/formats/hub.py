"""SAEs named by a release rather than a folder, found in the local Hugging Face cache (this
machine has no network): ``saelens:RELEASE/SAE_ID`` (SAELens's pretrained_saes.yaml maps the
release to a Hugging Face repo and the id to a folder in it; the table is read from sae_lens
installed here or in its side environment) and ``hf:OWNER/REPO/PATH`` (a
folder of a cached repo). The cache is $HF_HUB_CACHE, else $HF_HOME/hub, else
~/.cache/huggingface/hub; its layout is models--OWNER--REPO/snapshots/REVISION/..., the
revision that refs/main names first."""

from __future__ import annotations

import importlib.util
import os
from pathlib import Path
from typing import Any

from engine.sae.saelens import SAEFileError

RELEASES_FILE = "pretrained_saes.yaml"  # in the sae_lens package
PREFIXES = ("saelens:", "hf:")


def hub_cache() -> Path:
    """The local Hugging Face hub cache folder."""
    if os.environ.get("HF_HUB_CACHE"):
        return Path(os.environ["HF_HUB_CACHE"]).expanduser()
    home = Path(os.environ["HF_HOME"]).expanduser() if os.environ.get("HF_HOME") else Path.home() / ".cache" / "huggingface"
    return home / "hub"


def resolve_sae_path(source: str | Path) -> Path:
    """``source`` as a folder: a path as it is, a release id looked up in the local cache."""
    text = str(source)
    if isinstance(source, Path) or not text.startswith(PREFIXES):
        return Path(source)
    if text.startswith("hf:"):
        repo, _, sub = _split_repo(text.removeprefix("hf:"), text)
        return cached_folder(repo, sub, text)
    release, _, sae_id = text.removeprefix("saelens:").partition("/")
    if not release or not sae_id:
        raise SAEFileError(f"{text!r} is not a SAELens release id: write saelens:RELEASE/SAE_ID")
    repo, sub = saelens_release(release, sae_id, text)
    return cached_folder(repo, sub, text)


def _split_repo(rest: str, text: str) -> tuple[str, str, str]:
    parts = rest.strip("/").split("/")
    if len(parts) < 2 or not all(parts[:2]):
        raise SAEFileError(f"{text!r} is not a Hugging Face folder: write hf:OWNER/REPO[/PATH]")
    return "/".join(parts[:2]), "", "/".join(parts[2:])


def saelens_release(release: str, sae_id: str, text: str, table: Path | None = None) -> tuple[str, str]:
    """(repo id, folder in it) of SAELens's ``release``/``sae_id`` from its pretrained_saes.yaml."""
    table = table or releases_file()
    if table is None:
        raise SAEFileError(f"cannot resolve {text!r}: SAELens's release table ({RELEASES_FILE}) comes with the "
                           f"sae-lens package, which is not installed here; name the folder instead "
                           f"(hf:OWNER/REPO/PATH or a path)")
    import yaml  # transformers' dependency, so always here

    loader = getattr(yaml, "CSafeLoader", yaml.SafeLoader)  # the C parser: ~20x faster on SAELens's 2 MB table
    releases: dict[str, Any] = yaml.load(table.read_text(), Loader=loader) or {}
    entry = releases.get(release)
    if not isinstance(entry, dict):
        raise SAEFileError(f"{text!r}: SAELens has no release {release!r} (see {table})")
    if entry.get("conversion_func"):
        raise SAEFileError(f"{text!r}: release {release!r} is stored in its authors' own layout, which SAELens "
                           f"converts ({entry['conversion_func']!r}) and LatentLab does not read")
    for sae in entry.get("saes") or []:
        if isinstance(sae, dict) and sae.get("id") == sae_id:
            return str(entry["repo_id"]), str(sae.get("path") or sae_id)
    ids = [str(s.get("id")) for s in entry.get("saes") or [] if isinstance(s, dict)]
    raise SAEFileError(f"{text!r}: release {release!r} has no SAE {sae_id!r}; it has {', '.join(ids[:6])}"
                       f"{', ...' if len(ids) > 6 else ''}")


def releases_file() -> Path | None:
    """SAELens's release table: from sae_lens in this environment, else from the SAELens side
    environment ($LATENTLAB_SAELENS_PYTHON, else .venv-saelens, which ./run.sh test makes)."""
    spec = importlib.util.find_spec("sae_lens")
    if spec is not None and spec.submodule_search_locations:
        path = Path(next(iter(spec.submodule_search_locations))) / RELEASES_FILE
        if path.is_file():
            return path
    python = os.environ.get("LATENTLAB_SAELENS_PYTHON")
    venv = Path(python).parent.parent if python else Path(__file__).resolve().parents[3] / ".venv-saelens"
    found = sorted(venv.glob(f"lib*/python3*/site-packages/sae_lens/{RELEASES_FILE}"))
    return found[-1] if found else None


def cached_folder(repo: str, sub: str, text: str) -> Path:
    """The folder ``sub`` of ``repo`` in the local cache, else an SAEFileError saying how to get it."""
    cache = hub_cache()
    snapshots = cache / f"models--{repo.replace('/', '--')}" / "snapshots"
    revisions = sorted(snapshots.iterdir()) if snapshots.is_dir() else []
    ref = snapshots.parent / "refs" / "main"
    if ref.is_file():
        main = snapshots / ref.read_text().strip()
        revisions = [main] + [r for r in revisions if r != main]
    for revision in revisions:
        folder = revision / sub if sub else revision
        if folder.is_dir():
            return folder
    where = f"the folder {sub!r} of {repo}" if sub else repo
    raise SAEFileError(f"{text!r} is {where}, which is not in the local Hugging Face cache ({cache}); on a "
                       f"machine with network run: huggingface-cli download {repo}"
                       f"{f' --include {sub}/*' if sub else ''} and copy the cache here (or set HF_HUB_CACHE), "
                       f"or pass the downloaded folder")
