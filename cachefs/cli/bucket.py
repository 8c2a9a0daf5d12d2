"""`cachefs ls`, `du`, `prune` and `verify-store`: running a shared cache bucket
(docs/BUCKET.md). The logic is in remote/bucket.py and pack/refs.py; this module opens the
store, prints and picks exit codes."""

from __future__ import annotations

import argparse
import json
import sys
import time
from typing import Any

from ..config import parse_size
from ..errors import AccessDenied
from ..store import Store, open_store
from ..store.local import LocalStore
from .util import MISS, OK, STORE_FLAGS, Command, Failure, config_flags, human, load_config


def open_target(args: argparse.Namespace) -> tuple[Store, str]:
    """STORE[/PREFIX]: ``s3://BUCKET/PREFIX``, or ``file:///DIR`` (``#PREFIX`` for a prefix
    there). Returns the store (of the whole bucket) and the key prefix."""
    url, _, fragment = args.target.partition("#")
    if "://" not in url:
        raise Failure(f"{args.target}: give a store URL, s3://BUCKET[/PREFIX] or file:///DIR")
    config = load_config(args).replace(store=url)
    store, prefix = open_store(config)
    if fragment.strip("/"):
        prefix += fragment.strip("/") + "/"
    if isinstance(store, LocalStore) and not store.root.is_dir():
        raise Failure(f"{url}: no such directory")
    store.check()
    return store, prefix


class Counter:
    """``LABEL: done/total`` on one line of stderr, only when stderr is a terminal (counts of
    objects; util.Progress shows bytes)."""

    def __init__(self, label: str) -> None:
        self.label = label
        self.enabled = sys.stderr.isatty()
        self.shown = False

    def __call__(self, done: int, total: int) -> None:
        if self.enabled:
            of = f"/{total}" if total else ""
            print(f"\r{self.label}: {done}{of}\033[K", end="", file=sys.stderr, flush=True)
            self.shown = True

    def close(self) -> None:
        if self.shown:
            print(file=sys.stderr)


def _scan(store: Store, prefix: str, read_packs: bool = True) -> Any:
    from ..remote import bucket

    counter = Counter(f"reading {store.url}/{prefix} (objects listed, then tables read)")
    try:
        return bucket.scan(store, prefix, read_packs=read_packs, progress=counter)
    finally:
        counter.close()


def _when(t: float | None) -> str:
    return time.strftime("%Y-%m-%d %H:%M", time.gmtime(t)) if t else "-"


def _iso(t: float | None) -> str | None:
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(t)) if t else None


def _span(seconds: float) -> str:
    """A duration as people say it: 9d, 5h, 12m, 40s."""
    for unit, size in (("d", 86400), ("h", 3600), ("m", 60)):
        if seconds >= size:
            return f"{seconds / size:.0f}{unit}"
    return f"{max(seconds, 0):.0f}s"


def _kind(item: Any) -> str:
    if item.pack is not None:
        return f"pack v{item.pack.version}"
    return "pack ?" if item.kind == "pack" else item.kind


def _item_json(item: Any) -> dict[str, Any]:
    doc: dict[str, Any] = {"key": item.key, "size": item.size, "kind": item.kind,
                           "etag": item.info.etag, "last_write": _iso(item.info.mtime),
                           "last_use": _iso(item.used), "last_use_or_write": _iso(item.last_use)}
    if item.pack is not None:
        doc.update(version=item.pack.version, files=item.pack.files, frames=item.pack.frames,
                   frames_in_other_packs=item.pack.outside_frames, needs=item.pack.needs)
    if item.error:
        doc["error"] = item.error
    return doc


def _pack_note(item: Any) -> str:
    if item.error:
        return f"  (unreadable: {item.error})"
    if item.pack is None:
        return ""
    note = f"  {item.pack.files} files, {item.pack.frames} frames"
    if item.pack.needs:
        note += (f" ({item.pack.outside_frames} in other packs); needs "
                 + ", ".join(item.pack.needs))
    return note


def cmd_ls(args: argparse.Namespace) -> int:
    store, prefix = open_target(args)
    found = _scan(store, prefix)
    items = sorted(found.items.values(), key=lambda i: i.key)
    if args.json:
        print(json.dumps([_item_json(i) for i in items], indent=2))
    else:
        if items:
            print(f"{'LAST USE':16}  {'LAST WRITE':16}  {'SIZE':>10}  {'KIND':8}  KEY")
        for i in items:
            print(f"{_when(i.used):16}  {_when(i.info.mtime):16}  {human(i.size):>10}  "
                  f"{_kind(i):8}  {i.key}{_pack_note(i)}")
    if not items:
        print(f"cachefs: no keys below {store.url}/{prefix}", file=sys.stderr)
        return MISS
    return OK


def cmd_du(args: argparse.Namespace) -> int:
    from ..remote import bucket

    if args.depth < 0:
        raise Failure("--depth must be 0 or more")
    store, prefix = open_target(args)
    found = _scan(store, prefix, read_packs=False)
    rows = bucket.du(found, prefix, args.depth)
    total = found.total()
    if args.json:
        print(json.dumps({"prefix": prefix, "bytes": total, "objects": sum(r[1] for r in rows),
                          "groups": [{"prefix": g, "objects": n, "bytes": b}
                                     for g, n, b in rows]}, indent=2))
    else:
        for group, keys, size in rows if args.depth else ():
            print(f"{human(size):>10}  {keys:>7} objects  {group}")
        print(f"{human(total):>10}  {sum(r[1] for r in rows):>7} objects  total below "
              f"{store.url}/{prefix}")
    return OK if rows else MISS


def _reason(item: Any, rules: Any, now: float) -> str:
    if rules.older_than is not None and item.last_use < now - rules.older_than:
        return f"unused for {_span(now - item.last_use)}"
    if rules.max_size is None and rules.older_than is None:
        return f"not among the {rules.keep} most recently used"
    return "least recently used, over --max-size"


def cmd_prune(args: argparse.Namespace) -> int:
    from ..remote import bucket

    rules = bucket.Rules(
        older_than=bucket.parse_age(args.older_than) if args.older_than else None,
        max_size=parse_size(args.max_size) if args.max_size else None,
        keep=args.keep)
    if args.keep is not None and args.keep < 0:
        raise Failure("--keep must be 0 or more")
    if not rules:
        raise Failure("say what to prune: --older-than AGE, --max-size SIZE and/or --keep N")
    store, prefix = open_target(args)
    # The whole bucket: a pack outside PREFIX may need frames of a pack inside it.
    try:
        found = _scan(store, "")
    except AccessDenied as e:
        if not prefix:
            raise
        print(f"cachefs: cannot list the whole bucket ({e}): packs outside {prefix} that "
              "need packs inside it are not seen", file=sys.stderr)
        found = _scan(store, prefix)
    now = time.time()
    result = bucket.plan(found, prefix, rules, now)
    dry = args.dry_run or not args.yes
    if args.json:
        doc = {"dry_run": dry, "prefix": prefix, "keys": len(result.scope),
               "bytes": result.bytes_before, "bytes_freed": result.bytes_freed,
               "delete": [{"key": i.key, "size": i.size, "last_use": _iso(i.last_use),
                           "why": _reason(i, rules, now)} for i in result.delete],
               "kept_for_references": result.kept_for, "markers": len(result.markers),
               "size_goal_met": result.goal_met}
        print(json.dumps(doc, indent=2))
    else:
        _print_plan(store, prefix, result, rules, now, dry)
    if result.unknown:
        names = ", ".join(result.unknown[:5]) + (" ..." if len(result.unknown) > 5 else "")
        message = (f"{len(result.unknown)} pack(s) cannot be read, so which packs they need is "
                   f"unknown: {names} (see `cachefs ls`); delete or repair them first")
        if not dry:
            raise Failure(message + "; nothing deleted")
        print(f"cachefs: {message}: --yes would refuse", file=sys.stderr)
    if not dry and (result.delete or result.markers):
        for key in bucket.recheck(store, found, result):
            print(f"cachefs: keeping {key}: {result.kept_for[key]}, written during the "
                  "prune, needs it", file=sys.stderr)
        counter = Counter("deleting")
        try:
            bucket.execute(store, result, counter)
        finally:
            counter.close()
        if not args.json:
            print(f"cachefs: deleted {len(result.delete)} keys ({human(result.bytes_freed)}) "
                  f"and {len(result.markers)} last-use markers")
    if not result.goal_met:
        print(f"cachefs: {prefix or '/'} still holds "
              f"{human(result.bytes_before - result.bytes_freed)}, more than --max-size: "
              "the rest is recently used, kept by --keep, or needed by kept packs",
              file=sys.stderr)
        return MISS
    return OK


def _print_plan(store: Store, prefix: str, result: Any, rules: Any, now: float,
                dry: bool) -> None:
    verb = "would delete" if dry else "deleting"
    print(f"cachefs: {verb} {len(result.delete)} of {len(result.scope)} keys below "
          f"{store.url}/{prefix} ({human(result.bytes_freed)} of "
          f"{human(result.bytes_before)}), least recently used first:")
    for item in sorted(result.delete, key=lambda i: (i.last_use, i.key)):
        print(f"  delete  {item.key}  {human(item.size)}  last use {_when(item.last_use)} "
              f"({_span(now - item.last_use)} ago): {_reason(item, rules, now)}")
    for key, needer in result.kept_for.items():
        print(f"  keep    {key}: the kept pack {needer} reads frames from it")
    if dry:
        print("cachefs: dry run, nothing deleted; add --yes to delete")


def cmd_verify_store(args: argparse.Namespace) -> int:
    from ..remote import bucket

    store, prefix = open_target(args)
    found = _scan(store, prefix)
    broken = bucket.verify(store, found)
    packs = sum(1 for i in found.items.values() if i.kind == "pack")
    if args.json:
        print(json.dumps({"packs": packs, "broken": broken}, indent=2))
    elif not broken:
        print(f"cachefs: all {packs} packs below {store.url}/{prefix} are whole: every "
              "frame they read from other packs is there")
    for key, reasons in broken.items():
        for why in reasons:
            print(f"cachefs: broken pack {key}: {why}", file=sys.stderr)
    return MISS if broken else OK


#: the last line of the help of ls, du and verify-store; {miss} is what exit 1 means there
EXITS = "exit codes: 0 ok; 1 {miss}; 2 an error (bad flag, store unreachable)."


def add_commands(command: Command) -> None:
    """Register the bucket commands with the parser's ``command`` helper, in the order
    `cachefs --help` lists them."""
    _add_ls(command)
    _add_du(command)
    _add_prune(command)
    _add_verify_store(command)


def _add_ls(command: Command) -> None:
    """`cachefs ls`: what each key is and when it was last used, the facts prune decides by."""
    p = command("ls", cmd_ls, "list a store's keys: size, kind, last write, last use", """
        examples:
          cachefs ls s3://ci-cache/myproj --endpoint http://127.0.0.1:8333
          cachefs ls s3://ci-cache/myproj/go-mod
          cachefs ls --json s3://ci-cache | jq -r '.[] | select(.needs != []) | .key'
          cachefs ls file:///srv/cache

        One line per key: its last use (when a mount last used it as a pack, from its
        KEY.cachefs-used marker; - if never recorded), its last write, size and kind
        (object, pack v1/v2, tar.zst). A pack also shows its files and frames and which
        other packs it reads frames from: those must stay while it is used (docs/BUCKET.md).
        Reads each object's last 72 bytes, and each pack's table of contents.

        """ + EXITS.format(miss="no keys below the prefix"))
    _target(p)
    p.add_argument("--json", action="store_true", help="print JSON")


def _add_du(command: Command) -> None:
    """`cachefs du`: sizes from one LIST, so it is cheap enough to run on every bucket."""
    p = command("du", cmd_du, "sum a store's sizes by prefix", """
        examples:
          cachefs du s3://ci-cache
          cachefs du s3://ci-cache/myproj --depth 2
          cachefs du --json s3://ci-cache | jq '.bytes'

        One LIST of the prefix, nothing read. Groups are the first --depth key
        components below the prefix (default 1), largest first; cachefs's own objects
        (directory manifests, last-use markers) are counted, as they are billed too.

        """ + EXITS.format(miss="no keys below the prefix"))
    _target(p)
    p.add_argument("--depth", type=int, default=1, metavar="N",
                   help="key components to group by (default 1; 0: just the total)")
    p.add_argument("--json", action="store_true", help="print JSON")


def _add_prune(command: Command) -> None:
    """`cachefs prune` deletes, so its help says exactly what goes and what is kept, and that
    nothing is deleted without --yes."""
    p = command("prune", cmd_prune, "delete least recently used keys, never a pack in use", """
        examples:
          cachefs prune s3://ci-cache/myproj --older-than 7d          # dry run: a list
          cachefs prune s3://ci-cache/myproj --older-than 7d --yes    # deletes them
          cachefs prune s3://ci-cache --max-size 50G --keep 10 --yes
          cachefs prune s3://ci-cache/myproj/go-mod --keep 3          # all but the 3 newest

        Keys go least recently used first (last use from KEY.cachefs-used markers that
        mounts write, else the last write), as actions/cache evicts:
          --older-than AGE   keys not used for AGE (30m, 12h, 7d, 2w)
          --max-size SIZE    then more, until the prefix holds at most SIZE (500M, 50G)
          --keep N           never the N most recently used; alone: all but those N
        A pack that a kept pack reads frames from is kept, and the output says so:
        deleting it would break the pack that needs it. The whole bucket is read to find
        such references, since a pack outside PREFIX may need one inside. Without --yes
        nothing is deleted: the command prints what it would delete. Deletes go dependents
        first, so an interrupted prune never leaves a pack without its source.

        exit codes: 0 ok (or the dry run printed); 1 the prefix still holds more than
        --max-size after all that may go; 2 an error.""")
    _target(p)
    p.add_argument("--older-than", metavar="AGE", help="delete keys not used for AGE")
    p.add_argument("--max-size", metavar="SIZE",
                   help="delete least recently used keys until at most SIZE remain")
    p.add_argument("--keep", type=int, metavar="N",
                   help="never delete the N most recently used keys")
    p.add_argument("--dry-run", action="store_true",
                   help="only print what would be deleted (the default without --yes)")
    p.add_argument("--yes", action="store_true", help="delete")
    p.add_argument("--json", action="store_true", help="print the plan as JSON")


def _add_verify_store(command: Command) -> None:
    """`cachefs verify-store`: the check to run after a prune, that no kept pack lost a
    pack it reads frames from."""
    p = command("verify-store", cmd_verify_store,
                "check that every pack's references to other packs resolve", """
        examples:
          cachefs verify-store s3://ci-cache/myproj
          cachefs prune s3://ci-cache --older-than 7d --yes && cachefs verify-store s3://ci-cache

        Reads every pack's table of contents: each other pack it reads frames from must
        exist with the ETag it had when the pack was made, and be long enough. A broken
        pack is named on stderr with why (gone, replaced, too short, unreadable table);
        reading its files fails with EIO. Frames themselves are not downloaded.

        """ + EXITS.format(miss="some pack is broken (named on stderr)"))
    _target(p)
    p.add_argument("--json", action="store_true", help="print JSON")


def _target(p: argparse.ArgumentParser) -> None:
    p.add_argument("target", metavar="STORE[/PREFIX]",
                   help="s3://BUCKET[/PREFIX], or file:///DIR[#PREFIX]")
    config_flags(p, STORE_FLAGS)

