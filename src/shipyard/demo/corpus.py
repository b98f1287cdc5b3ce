"""Training text that every Python installation carries: the language reference topics
(`pydoc_data`) and the docstrings of standard-library modules, in a fixed order."""

from __future__ import annotations

import importlib
import inspect
import sys
import warnings

# Pure-Python, side-effect-free modules with rich docstrings. A fixed list keeps the corpus
# (and so the demo model) identical on every machine with the same Python version.
TRAINING_MODULES = (
    "abc argparse ast asyncio base64 bisect calendar cmd codecs collections colorsys "
    "concurrent.futures configparser contextlib copy csv dataclasses datetime decimal difflib "
    "dis email enum filecmp fnmatch fractions ftplib functools getopt gettext glob gzip hashlib "
    "heapq hmac html html.parser http.client http.server imaplib inspect io ipaddress itertools "
    "json logging lzma mailbox math mimetypes numbers operator optparse os pathlib pickle "
    "pkgutil platform plistlib poplib pprint queue quopri random re reprlib sched secrets "
    "selectors shelve shlex shutil signal smtplib socket socketserver sqlite3 statistics "
    "string struct subprocess tarfile tempfile textwrap threading timeit tokenize trace "
    "traceback types typing unittest urllib.parse urllib.request uuid wave weakref zipfile "
    "zoneinfo"
).split()


def docstrings(module_name: str) -> list[str]:
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            module = importlib.import_module(module_name)
    except Exception:
        return []
    texts = [inspect.getdoc(module) or ""]
    for name, member in sorted(vars(module).items()):
        if name.startswith("_") or getattr(member, "__module__", None) != module.__name__:
            continue
        if inspect.isclass(member) or inspect.isfunction(member):
            texts.append(inspect.getdoc(member) or "")
            if inspect.isclass(member):
                for attr, value in sorted(vars(member).items()):
                    if not attr.startswith("_") and inspect.isfunction(value):
                        texts.append(inspect.getdoc(value) or "")
    return [t for t in texts if len(t) > 40]


def build_corpus(max_chars: int | None = None) -> list[str]:
    """Documents, in a deterministic order."""
    from pydoc_data.topics import topics

    documents = [topics[key] for key in sorted(topics)]
    for module_name in TRAINING_MODULES:
        documents.extend(docstrings(module_name))
    if max_chars is not None:
        kept, total = [], 0
        for doc in documents:
            if total >= max_chars:
                break
            kept.append(doc[: max_chars - total])
            total += len(kept[-1])
        documents = kept
    return documents


def corpus_fingerprint() -> str:
    return f"python-{sys.version_info.major}.{sys.version_info.minor}"
