"""Networks trained here, remembered: the per-user trust store, and the one decision of which network a
command runs once it is taken into account.

The rule stays: no code is imported because a file names it. A network file the user typed on the command
line, `cifar train --model FILE.py:NAME`, is the user's own command: train records the file's absolute
path, NAME and SHA-256 in `$XDG_CONFIG_HOME/cifar-cli/trusted-networks.json` (~/.config by default), like
direnv's allow list. A checkpoint (or settings file) naming a user network, with no --model given, is then
loaded without it only when the store holds an entry with the source hash and NAME the checkpoint recorded
AND the file at that entry's path still hashes to it: the code imported is that file, the one the user
trained, never the path the checkpoint names. Anything else (unknown, changed, a checkpoint from elsewhere)
is refused as before, naming the --model to pass. Nothing a checkpoint says ever adds an entry.

Networks named as package.module:NAME are not remembered: which file `import package.module` reaches depends
on sys.path and the current folder, so a name trusted once could import another file later.
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from cifar_cli.errors import CifarError, shell_command
from cifar_cli.files import read_input, write_atomic
from cifar_cli.models import ModelSpec, choose_network, source_file

STORE = Path("cifar-cli") / "trusted-networks.json"  # under the user's config folder
MAX_STORE_BYTES = 4 * 2**20  # tens of thousands of entries
MAX_SOURCE_BYTES = 64 * 2**20  # a network's source file; a bigger "source" is no network file of ours


def store_path() -> Path:
    """The trust store: under $XDG_CONFIG_HOME when it is an absolute path (the XDG rule), else ~/.config."""
    base = os.environ.get("XDG_CONFIG_HOME", "")
    return (Path(base) if os.path.isabs(base) else Path("~/.config").expanduser()) / STORE


@dataclass(frozen=True)
class Entry:
    """A network file `cifar train --model` imported at the user's command: where, which NAME, what content."""

    path: str  # absolute
    name: str  # the class or function named after the colon
    sha256: str


def read_store(path: Path | None = None) -> tuple[list[Entry], str | None]:
    """The entries of the trust store and, for a damaged store (treated as empty), a warning line."""
    path = path or store_path()
    if not os.path.lexists(path):
        return [], None
    try:
        rows = json.loads(read_input(path, MAX_STORE_BYTES, "the trust store"))
        if not isinstance(rows, dict) or not isinstance(rows.get("networks"), list):
            raise ValueError("no list of networks")
        return [_entry(row) for row in rows["networks"]], None
    except CifarError as e:
        why = str(e)
    except (ValueError, TypeError, RecursionError) as e:  # UnicodeDecodeError is a ValueError
        why = f"{path} is not a trust store: {str(e).splitlines()[0] if str(e) else type(e).__name__}"
    return [], f"warning: {why}; treating it as empty (no network is trusted)"


def _entry(row: Any) -> Entry:
    if not isinstance(row, dict) or not all(isinstance(row.get(k), str) for k in ("path", "name", "sha256")):
        raise ValueError("an entry is not a path, a name and a sha256")
    if not (os.path.isabs(row["path"]) and row["name"].isidentifier() and len(row["sha256"]) == 64):
        raise ValueError(f"the entry for {row['path'][:200]!r} is malformed")
    return Entry(row["path"], row["name"], row["sha256"])


def remember(spec: ModelSpec, path: Path | None = None) -> list[str]:
    """Record a user network file that train imported because the user typed it (a spec from resolve_model);
    presets, package modules and specs read from files are not recorded. Returns the lines to tell the user:
    that it is remembered, and warnings (a damaged store is kept beside the new one, as .damaged; a store
    that cannot be written costs the run nothing but a warning)."""
    file = source_file(spec.name)
    if spec.is_preset or not spec.typed or file is None or not spec.source_sha256:
        return []
    path = path or store_path()
    entries, warning = read_store(path)
    entry = Entry(str(file), spec.name.rpartition(":")[2], spec.source_sha256)
    if entry in entries:
        return [warning] if warning else []
    try:
        path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
        if warning:
            os.replace(path, path.with_name(path.name + ".damaged"))
            warning += f"; it is kept as {path.name}.damaged"
        write_atomic(path, (json.dumps({"networks": [asdict(e) for e in [*entries, entry]]}, indent=1)
                            + "\n").encode())
    except (OSError, CifarError) as e:
        return [*([warning] if warning else []), f"warning: cannot record {file} in the trust store {path} "
                f"({getattr(e, 'strerror', None) or e}); checkpoints of this run will need --model"]
    return [*([warning] if warning else []),
            f"remembered {shown(file)}:{entry.name} as trained here (sha256 {entry.sha256[:12]}..., in {path}): "
            "its checkpoints run without --model while the file is unchanged"]


def _sha256_of(path: Path) -> str | None:
    import hashlib

    try:
        return hashlib.sha256(read_input(path, MAX_SOURCE_BYTES, "network file")).hexdigest()
    except CifarError:
        return None


def shown(path: Path) -> str:
    """A path as the user would type it here: relative to the current folder when under it."""
    try:
        return str(path.relative_to(Path.cwd()))
    except ValueError:
        return str(path)


def trusted_model(recorded: ModelSpec, path: Path | None = None) -> tuple[str | None, list[str]]:
    """The --model text that imports the file trained here whose content `recorded` names (its source hash,
    its NAME), if the trust store has one that still holds that content; and the lines to tell the user."""
    if recorded.is_preset or not recorded.source_sha256:
        return None, []
    name = recorded.name.rpartition(":")[2]
    entries, warning = read_store(path)
    said = [warning] if warning else []
    for entry in entries:
        same = (entry.sha256, entry.name) == (recorded.source_sha256, name)
        if same and _sha256_of(Path(entry.path)) == entry.sha256:
            said.append(f"network {shown(Path(entry.path))}:{name}: trained here, source unchanged "
                        f"(sha256 {entry.sha256[:12]}...)")
            return f"{entry.path}:{name}", said
    return None, said


def recorded_as_named(name: str) -> ModelSpec:
    """A user network a settings file names as text (FILE.py:NAME), as a record for trusted_model to look up:
    the hash of the file that name points at now. Nothing is imported."""
    file = source_file(name)
    return ModelSpec(name, {}, "", (_sha256_of(file) if file is not None else None) or "")


def network_for(typed: str | None, recorded: ModelSpec | None, tell: Callable[[str], None],
                where: object = "the checkpoint", seed: int | None = None) -> ModelSpec:
    """models.choose_network, with networks trained here remembered: a user network `recorded` in a file,
    with no --model typed, is imported from the trusted file that holds its recorded source (trusted_model),
    else refused as choose_network refuses it. What the user should know (a trusted network used, a damaged
    store) goes to `tell` first, one line each, so that it is said even when the network is refused."""
    trusted = None
    if typed is None and recorded is not None and not recorded.is_preset:
        trusted, said = trusted_model(recorded)
        for line in said:
            tell(line)
    spec = choose_network(typed or trusted, recorded, where, seed)
    if trusted is not None and recorded is not None and spec.source_sha256 != recorded.source_sha256:
        raise CifarError(f"{trusted.rpartition(':')[0]} changed while it was being imported; pass "
                         f"{shell_command(['--model', recorded.name])} to run the file as it is now")
    return spec
