"""A file-based Go module proxy (GOPROXY=file://...) with a few modules made by the test."""

from __future__ import annotations

import json
import zipfile
from pathlib import Path

GO_MOD_HEADER = "go 1.19\n"


def _module(proxy: Path, path: str, version: str, files: dict[str, str] | dict[str, bytes],
            requires: tuple[tuple[str, str], ...] = (), go: str = GO_MOD_HEADER) -> None:
    """Module ``path`` at ``version`` in the proxy: list, .info, .mod and the zip of
    ``files`` (name -> body) with its go.mod (``go``: its go directive line)."""
    gomod = f"module {path}\n\n{go}" + "".join(
        f"\nrequire {r} {v}\n" for r, v in requires)
    d = proxy / path / "@v"
    d.mkdir(parents=True, exist_ok=True)
    (d / "list").write_text(version + "\n")
    (d / f"{version}.info").write_text(json.dumps({"Version": version,
                                                   "Time": "2024-01-01T00:00:00Z"}))
    (d / f"{version}.mod").write_text(gomod)
    with zipfile.ZipFile(d / f"{version}.zip", "w") as z:
        z.writestr(f"{path}@{version}/go.mod", gomod)
        for name, body in files.items():
            z.writestr(f"{path}@{version}/{name}", body)


def make_proxy(proxy: Path) -> None:
    many = {f"gen/f{i:03d}.go": f"package gen\n\nconst C{i} = {i}\n" for i in range(120)}
    _module(proxy, "example.com/util", "v1.2.0", {
        "util.go": "package util\n\nfunc Twice(s string) string { return s + s }\n",
        "sub/deep/deep.go": "package deep\n\nconst X = 1\n",
        "README.md": "util module\n",
        "testdata/big.txt": "x" * 200_000,
        **many,
    })
    _module(proxy, "example.com/greet", "v1.0.0", {
        "greet.go": 'package greet\n\nimport "example.com/util"\n\n'
                    'func Hello() string { return util.Twice("hi") }\n',
    }, requires=(("example.com/util", "v1.2.0"),))
    _module(proxy, "example.com/unused", "v0.1.0", {"u.go": "package unused\n"})


def make_app(app: Path) -> None:
    app.mkdir(parents=True, exist_ok=True)
    (app / "go.mod").write_text(
        "module example.com/app\n\ngo 1.19\n\nrequire example.com/greet v1.0.0\n\n"
        "require example.com/util v1.2.0 // indirect\n")
    (app / "main.go").write_text(
        'package main\n\nimport (\n\t"fmt"\n\t"example.com/greet"\n)\n\n'
        "func main() { fmt.Println(greet.Hello()) }\n")


def go_env(proxy: str, modcache: Path, home: Path) -> dict[str, str]:
    return {"GOPROXY": proxy, "GOSUMDB": "off", "GOFLAGS": "-mod=mod",
            "GOMODCACHE": str(modcache), "GOCACHE": str(home / "gocache"),
            "GOPATH": str(home / "gopath"), "HOME": str(home), "GOTOOLCHAIN": "local",
            "CGO_ENABLED": "0"}
