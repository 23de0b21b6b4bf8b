"""Real text that ships on the machine, collected as a training corpus with a manifest that says
where every text came from (nothing is downloaded):

    docs      long descriptions in installed Python packages' METADATA (their READMEs), and the
              README / .md / .rst / .txt files under Debian's /usr/share/doc (gzip ones unpacked)
    licences  /usr/share/common-licenses, and LICENSE / COPYING files inside installed packages

    python -m ruvdllm_export.convert.corpus OUT_DIR [--max-mb 8]

writes OUT_DIR/{docs,licences}/NNNNN.txt and OUT_DIR/manifest.jsonl, one line per file: its domain, origin
(`site-packages/<dist>/...` or `/usr/share/doc/<package>/...`), sha256, characters and split
(held-out by the same hash rule as training at --held-out 0.1, seed 0, so the manifest records
what training never saw).
Exact duplicates (the same licence in forty packages) are kept once.
"""

from __future__ import annotations

import argparse
import email.parser
import gzip
import hashlib
import json
import site
import sys
from pathlib import Path

from ruvdllm_export.convert.data import HELD_OUT, Document, is_held_out

DOC_SUFFIXES = (".md", ".rst", ".txt")
LICENCE_NAMES = ("LICENSE", "LICENCE", "COPYING")
MIN_CHARS = 400  # shorter files mostly just point elsewhere ("See the LICENSE file.")
MAX_CHARS = 60_000  # one huge changelog should not swamp the corpus


def _read(path: Path) -> str | None:
    try:
        raw = gzip.decompress(path.read_bytes()) if path.suffix == ".gz" else path.read_bytes()
        return raw.decode("utf-8")
    except (OSError, UnicodeDecodeError, EOFError, gzip.BadGzipFile):
        return None


def _metadata_body(path: Path) -> str | None:
    text = _read(path)
    if text is None:
        return None
    message = email.parser.Parser().parsestr(text)
    body = message.get_payload()
    return body if isinstance(body, str) else None


def site_packages_texts() -> list[tuple[str, str, str]]:
    """(domain, origin, text) from the installed Python packages."""
    found = []
    for root in map(Path, site.getsitepackages()):
        for info in sorted(root.glob("*.dist-info")):
            body = _metadata_body(info / "METADATA")
            if body:
                found.append(("docs", f"site-packages/{info.name}/METADATA", body))
            for licence in sorted(
                p for p in info.rglob("*") if p.is_file() and p.name.upper().startswith(LICENCE_NAMES)
            ):
                text = _read(licence)
                if text:
                    found.append(("licences", f"site-packages/{licence.relative_to(root)}", text))
    return found


def debian_texts(
    doc_root: Path = Path("/usr/share/doc"), licences: Path = Path("/usr/share/common-licenses")
) -> list:
    found = []
    for path in sorted(p for p in licences.glob("*") if p.is_file()):
        text = _read(path)
        if text:
            found.append(("licences", str(path), text))
    for path in sorted(p for p in doc_root.rglob("*") if p.is_file()):
        name = path.name.removesuffix(".gz")
        if name.upper().startswith("README") or name.endswith(DOC_SUFFIXES):
            text = _read(path)
            if text:
                found.append(("docs", str(path), text))
    return found


def build(out_dir: Path, max_mb: float, held_out: float, seed: int) -> dict:
    out_dir = Path(out_dir)
    seen: set[str] = set()
    entries = []
    budget = {"docs": max_mb * 1e6 / 2, "licences": max_mb * 1e6 / 2}
    for domain, origin, text in site_packages_texts() + debian_texts():
        text = text.strip()
        digest = hashlib.sha256(text.encode()).hexdigest()
        if len(text) < MIN_CHARS or digest in seen or budget[domain] <= 0:
            continue
        seen.add(digest)
        text = text[:MAX_CHARS]
        budget[domain] -= len(text)
        folder = out_dir / domain
        folder.mkdir(parents=True, exist_ok=True)
        name = f"{domain}/{len(entries):05d}.txt"
        (out_dir / name).write_text(text + "\n", encoding="utf-8")
        document = Document(text + "\n", name)  # the split hashes the text as training reads it
        entries.append(
            {
                "file": name,
                "domain": domain,
                "origin": origin,
                "sha256": digest,
                "chars": len(text),
                "split": "held-out" if is_held_out(document, held_out, seed) else "train",
            }
        )
    manifest = {"held_out_fraction": held_out, "seed": seed, "files": entries}
    (out_dir / "manifest.jsonl").write_text("".join(json.dumps(entry) + "\n" for entry in entries))
    return manifest


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("out_dir", type=Path)
    parser.add_argument("--max-mb", type=float, default=8.0, help="characters kept, in millions")
    parser.add_argument("--held-out", type=float, default=HELD_OUT)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    manifest = build(args.out_dir, args.max_mb, args.held_out, args.seed)
    for domain in ("docs", "licences"):
        files = [e for e in manifest["files"] if e["domain"] == domain]
        print(f"{domain}: {len(files)} files, {sum(e['chars'] for e in files):,} characters")
    return 0


if __name__ == "__main__":
    sys.exit(main())
