"""The Hugging Face Hub: what is cached, downloading what is not, and saying clearly why a download cannot be.

One place for everything finetty knows about the Hub and its cache. The
cache is huggingface_hub's own (``$HF_HUB_CACHE``, ``$HF_HOME/hub``), read and
filled through its API (``snapshot_download``, ``scan_cache_dir``), never by
walking its folders by hand; downloads honour ``HF_TOKEN``, ``HF_ENDPOINT`` and
``HF_HUB_OFFLINE``. This module lives in the data room because both datasets
(here) and models (the room above) are fetched through it.

Three rules:

- Looking at the cache never touches the network (``local_files_only``), so a
  recipe's validation cannot hang on a slow Hub; only :func:`download` goes online.
- The environment is read at each call, not at import: huggingface_hub reads
  ``HF_ENDPOINT``, ``HF_HOME`` and ``HF_HUB_OFFLINE`` once at its own import, and
  a long-lived process (the app, a test session) may change them later.
- huggingface_hub is imported inside functions (about 0.2 s): the app's start-up
  and ``finetty --help`` stay free of it.
"""

from __future__ import annotations

import io
import os
import re
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from finetty.core.errors import InputError

#: What a model download fetches: safetensors weights, configs, tokenizers, chat templates, the card.
#: Pickled weights (.bin, .pt, .pth, .ckpt) are never fetched: finetty loads safetensors only.
MODEL_PATTERNS = ("*.safetensors", "*.json", "*.txt", "*.model", "*.tiktoken", "*.jinja", "*.md")
#: With ``trust_remote_code: true`` the repository's Python code comes too (it is run to build the model).
CODE_PATTERNS = ("*.py",)
#: What a dataset download fetches: the data files finetty reads, and the card.
DATA_PATTERNS = ("*.jsonl", "*.json", "*.csv", "*.parquet", "*.txt", "*.md")
KINDS = ("model", "dataset")

_REPO_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]*/[A-Za-z0-9][A-Za-z0-9_.-]*$")

#: ``progress(fields)`` receives ``{"files_done", "files_total", "bytes_done", "bytes_total"}`` as a download goes.
Progress = Callable[[dict], None]


@dataclass(frozen=True)
class HubRef:
    """One repository to fetch: ``kind`` (model or dataset), ``repo_id`` (``org/name``), an optional revision."""

    kind: str
    repo_id: str
    revision: str | None = None
    code: bool = False
    """fetch the repository's Python files too (a model with trust_remote_code)"""

    @property
    def patterns(self) -> list[str]:
        if self.kind == "dataset":
            return list(DATA_PATTERNS)
        return list(MODEL_PATTERNS + (CODE_PATTERNS if self.code else ()))

    def describe(self) -> str:
        return self.repo_id + (f"@{self.revision}" if self.revision else "")


def parse_id(spec: object) -> tuple[str, str | None] | None:
    """``("org/name", revision or None)`` when ``spec`` is a hub id (``org/name`` or ``org/name@revision``)."""
    if not isinstance(spec, str):
        return None
    repo_id, _, revision = spec.strip().partition("@")
    if not _REPO_ID.fullmatch(repo_id) or ".." in repo_id or (_ and not revision):
        return None
    return repo_id, revision or None


def cache_dir() -> Path:
    """The hub cache, from the environment as it is now: ``$HF_HUB_CACHE``, else ``$HF_HOME/hub``."""
    if os.environ.get("HF_HUB_CACHE"):
        return Path(os.environ["HF_HUB_CACHE"]).expanduser()
    return Path(os.environ.get("HF_HOME") or Path.home() / ".cache/huggingface").expanduser() / "hub"


def offline() -> bool:
    return os.environ.get("HF_HUB_OFFLINE", "").strip().upper() in ("1", "ON", "YES", "TRUE")


def endpoint() -> str:
    return (os.environ.get("HF_ENDPOINT") or "https://huggingface.co").rstrip("/")


def _token() -> str | None:
    return os.environ.get("HF_TOKEN") or None  # None: huggingface_hub's stored login, if any


def cached(ref: HubRef) -> Path | None:
    """The complete snapshot of ``ref`` in the cache, or None; never goes online.

    An interrupted download leaves a snapshot that huggingface_hub's tree listing
    shows incomplete: that counts as not cached, so the next download resumes it."""
    from huggingface_hub import snapshot_download
    from huggingface_hub.errors import LocalEntryNotFoundError

    try:
        folder = snapshot_download(ref.repo_id, repo_type=ref.kind, revision=ref.revision, cache_dir=cache_dir(),
                                   local_files_only=True, allow_patterns=ref.patterns)
    except (LocalEntryNotFoundError, OSError, ValueError):
        return None
    folder = Path(folder)
    return folder if folder.is_dir() and any(folder.iterdir()) else None


def cached_repos(kind: str) -> list[str]:
    """Repo ids of ``kind`` (model or dataset) with a snapshot in the cache (models: with a config.json)."""
    if not cache_dir().is_dir():
        return []  # (a machine that never downloaded: no import of huggingface_hub at the app's start)
    from huggingface_hub import scan_cache_dir
    from huggingface_hub.errors import CacheNotFound

    try:
        info = scan_cache_dir(cache_dir())
    except (CacheNotFound, OSError):
        return []
    found = set()
    for repo in info.repos:
        if repo.repo_type != kind:
            continue
        if kind == "model" and not any(f.file_name == "config.json" for r in repo.revisions for f in r.files):
            continue
        if repo.revisions:
            found.add(repo.repo_id)
    return sorted(found)


def repo_id_of(folder: Path) -> str | None:
    """``org/name`` when ``folder`` is a snapshot in a hub cache (``.../models--org--name/snapshots/<rev>``)."""
    parts = Path(folder).parts
    for index in range(len(parts) - 1):
        kind, sep, name = parts[index].partition("--")
        if sep and kind in ("models", "datasets") and "--" in name and parts[index + 1] == "snapshots":
            return name.replace("--", "/", 1)
    return None


def snapshot_facts(kind: str, spec: str, inside: Path) -> dict:
    """The fields of a run's ``download`` event for the hub ``spec`` whose snapshot holds ``inside``: the
    repo, the commit it resolved to, how many files and bytes the run takes from the cache."""
    inside = Path(inside)
    folder = next((p for p in (inside, *inside.parents) if p.parent.name == "snapshots"), inside)
    files = [p for p in folder.rglob("*") if p.is_file()]
    repo_id, revision = parse_id(spec) or (spec, None)
    return {"kind": kind, "repo": repo_id, "revision": revision or "main", "commit": folder.name,
            "files": len(files), "bytes": sum(p.stat().st_size for p in files)}


def _tqdm_class(progress: Progress):
    """A tqdm that draws nothing and tells ``progress`` what snapshot_download's bars count.

    snapshot_download opens a files bar (``Fetching N files``) and a bytes bar
    (``Downloading bytes``, its total growing as each file starts); both are read."""
    from tqdm.std import tqdm as base

    state = {"files_done": 0, "files_total": 0, "bytes_done": 0, "bytes_total": 0}

    class Reporting(base):
        def __init__(self, *args, **kwargs):
            kwargs.pop("name", None)
            kwargs.update(file=io.StringIO(), disable=False, mininterval=0, miniters=1)
            super().__init__(*args, **kwargs)
            desc = str(kwargs.get("desc") or "")
            self._role = "files" if desc.startswith("Fetching") else "bytes" if desc.startswith("Downloading") else None
            self._tell()

        def update(self, n=1):
            shown = super().update(n)
            self._tell()
            return shown

        def refresh(self, *args, **kwargs):
            shown = super().refresh(*args, **kwargs)
            self._tell()
            return shown

        def _tell(self) -> None:
            if getattr(self, "_role", None) is None:
                return
            state[f"{self._role}_done"] = int(self.n)
            state[f"{self._role}_total"] = int(self.total or 0)
            progress(dict(state))

    return Reporting


def require_online(ref: HubRef, source: str | Path | None = None, place: str | None = None) -> None:
    """Refuse, before anything is drawn or asked, to download ``ref`` while ``HF_HUB_OFFLINE`` is set."""
    if offline():
        raise InputError(source, place or f"{ref.kind} {ref.repo_id}", f"{ref.describe()!r} is not in the local "
                         f"Hugging Face cache ({cache_dir()}), and HF_HUB_OFFLINE is set, so it cannot be downloaded",
                         f"unset HF_HUB_OFFLINE to download it, or run `finetty pull {ref.describe()}` where the "
                         "Hub can be reached and copy the cache here")


def download(ref: HubRef, progress: Progress | None = None, source: str | Path | None = None,
             place: str | None = None) -> Path:
    """Fetch what ``ref`` lacks into the cache and return its snapshot folder; bad cases raise InputError.

    A cached, complete snapshot returns at once without going online. An
    interrupted earlier download resumes: huggingface_hub keeps the partial
    file (``blobs/*.incomplete``) and asks for the rest with a Range request.
    ``source`` and ``place`` (the recipe and its key) name where the id came from."""
    folder = cached(ref)
    if folder is not None:
        return folder
    where = place or f"{ref.kind} {ref.repo_id}"
    require_online(ref, source, where)
    from huggingface_hub import snapshot_download

    kwargs = dict(repo_type=ref.kind, revision=ref.revision, cache_dir=cache_dir(), allow_patterns=ref.patterns,
                  token=_token(), endpoint=endpoint(), max_workers=4)
    if progress is not None:
        kwargs["tqdm_class"] = _tqdm_class(progress)
    try:
        return Path(snapshot_download(ref.repo_id, **kwargs))
    except Exception as exc:
        raise _explain(exc, ref, source, where) from None


def _explain(exc: Exception, ref: HubRef, source, place: str) -> Exception:
    """The InputError a person can act on, for what huggingface_hub raised; anything else as it was."""
    from huggingface_hub import errors

    site = endpoint()
    name = ref.describe()
    if isinstance(exc, errors.GatedRepoError):
        return InputError(source, place, f"{name!r} is a gated {ref.kind}: its licence must be accepted on the Hub "
                          "before it can be downloaded",
                          f"open {site}/{'datasets/' if ref.kind == 'dataset' else ''}{ref.repo_id} signed in, "
                          "accept the licence, then set HF_TOKEN to a read token of that account "
                          f"({site}/settings/tokens)")
    if isinstance(exc, errors.RevisionNotFoundError):
        return InputError(source, place, f"{ref.repo_id!r} has no revision {ref.revision!r} on {site}",
                          "give a branch, tag or commit of the repository after '@', or drop it for main")
    if isinstance(exc, errors.RepositoryNotFoundError):
        return InputError(source, place, f"{ref.repo_id!r} is not a {ref.kind} on {site}, or it is private and "
                          "HF_TOKEN gives no access to it", "check the id, or set HF_TOKEN to a token that can "
                          f"read it ({site}/settings/tokens)")
    if isinstance(exc, errors.HfHubHTTPError) and getattr(exc.response, "status_code", None) in (401, 403):
        return InputError(source, place, f"{site} refused {name!r} ({exc.response.status_code}: not authorised)",
                          "set HF_TOKEN to a token that can read it")
    if isinstance(exc, (errors.LocalEntryNotFoundError, errors.HfHubHTTPError, OSError)):
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        return InputError(source, place, f"{name!r} could not be downloaded from {site}: {first}",
                          "check the network and HF_ENDPOINT, then run the command again (what was fetched "
                          "is kept and the download resumes)")
    return exc


def recipe_refs(model: object, dataset: object, base_dir: Path, code: bool = False) -> list[tuple[HubRef, str]]:
    """``(ref, place)`` for each hub repository a recipe's ``model`` and ``dataset`` name (a local path wins).

    ``dataset`` is as a recipe gives it: a name or path, a mapping with ``path:``, or a list of those."""
    def hub_ref(kind: str, spec: object, place: str) -> list[tuple[HubRef, str]]:
        parsed = parse_id(spec)
        if parsed is None or (Path(base_dir) / str(spec)).expanduser().exists():
            return []
        return [(HubRef(kind, *parsed, code=code and kind == "model"), place)]

    found = hub_ref("model", model, "key model")
    entries = dataset if isinstance(dataset, list) else [dataset]
    for index, entry in enumerate(entries):
        place = f"key dataset[{index}]" if isinstance(dataset, list) else "key dataset"
        found += hub_ref("dataset", entry.get("path") if isinstance(entry, dict) else entry, place)
    return found


def push(folder: Path, repo_id: str, private: bool = False, message: str | None = None) -> str:
    """Upload ``folder`` (an export: weights, config, tokenizer, model card) to model repo ``repo_id``,
    creating it first (``private`` if asked); the repo's URL. Refusals raise InputError naming ``--push-to-hub``."""
    where = "--push-to-hub"
    if parse_id(repo_id) is None or "@" in repo_id:
        raise InputError(where, repo_id, "is not a hub repo id", "give org/name (your user name or an organisation)")
    if offline():
        raise InputError(where, repo_id, "cannot be pushed while HF_HUB_OFFLINE is set", "unset HF_HUB_OFFLINE")
    from huggingface_hub import HfApi, errors

    api = HfApi(endpoint=endpoint(), token=_token())
    try:
        url = api.create_repo(repo_id, repo_type="model", private=private, exist_ok=True)
        api.upload_folder(folder_path=str(folder), repo_id=repo_id, repo_type="model",
                          commit_message=message or "Upload with finetty export")
    except errors.HfHubHTTPError as exc:
        status = getattr(exc.response, "status_code", None)
        if status in (401, 403):
            raise InputError(where, repo_id, f"{endpoint()} refused the upload ({status}: not authorised)",
                             f"set HF_TOKEN to a token with write access to {repo_id.split('/')[0]} "
                             f"({endpoint()}/settings/tokens)") from None
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise InputError(where, repo_id, f"the upload to {endpoint()} failed: {first}",
                         "check the repo id and the network, then push again") from None
    except OSError as exc:
        raise InputError(where, repo_id, f"{endpoint()} could not be reached: {exc}",
                         "check the network and HF_ENDPOINT, then push again") from None
    return str(url)


# -- a dataset repository's files ----------------------------------------------------------------------

_SPLIT_WORD = r"(?:^|[/_.-]){split}(?:$|[/_.-])"


def dataset_files(folder: Path, suffixes, subset: str | None = None, split: str = "train") -> list[Path]:
    """The data files of a downloaded dataset repository for ``subset`` (a folder in it) and ``split``.

    Hub datasets keep one split per file or folder, named by it (``train.jsonl``,
    ``data/train-00000-of-00001.parquet``, ``train/part-0.jsonl``): the files whose
    path names ``split`` are taken. A repository whose files name no split at all
    is one ``train`` split. The card (README.md) is never data."""
    folder = Path(folder)
    root = folder / subset if subset else folder
    files = sorted(p for p in root.rglob("*") if p.is_file() and p.suffix.lower() in suffixes
                   and p.name.lower() != "readme.md" and not any(part.startswith(".") for part in
                                                                   p.relative_to(folder).parts))
    named = [p for p in files if re.search(_SPLIT_WORD.format(split=re.escape(split)),
                                           p.relative_to(root).as_posix().lower())]
    if named:
        return named
    splits = ("train", "test", "validation", "valid", "dev", "eval")
    if split == "train" and not any(re.search(_SPLIT_WORD.format(split=s), p.relative_to(root).as_posix().lower())
                                    for p in files for s in splits):
        return files
    return []
