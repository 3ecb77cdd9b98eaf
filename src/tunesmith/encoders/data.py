"""Encoder data: query/positive pairs, BEIR retrieval folders, text/label files, raw text, passages
to retrieve from (eval.rag).

Every reader checks every line and raises one error naming the file, the line and the field of
the first problem (and how many lines have problems), the way `tunesmith validate` does for chat data.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from tunesmith.data.formats import BadJSON, LineError, csv_rows, json_records, json_type, read_data_text, read_examples
from tunesmith.errors import TunesmithError

PAIR_KEYS = (("query", "positive"), ("negative",))
LABEL_KEYS = (("text", "label"), ())
PASSAGE_KEYS = (("text",), ("id", "_id", "title"))
# BEIR's conventional qrels file for each role a split plays in a config.
BEIR_SPLITS = {"train": "train", "validation": "dev", "test": "test"}


@dataclass(frozen=True)
class Pair:
    query: str
    positive: str
    negative: str | None = None


@dataclass(frozen=True)
class LabelledText:
    text: str
    label: str
    line: int


@dataclass
class RetrievalSet:
    """A corpus, queries and graded relevance judgements (query id -> {doc id: grade > 0})."""

    corpus_ids: list[str]
    corpus: list[str]
    query_ids: list[str]
    queries: list[str]
    qrels: dict[str, dict[str, int]]

    def pairs(self) -> list[Pair]:
        """One training pair per (judged query, relevant document)."""
        text = dict(zip(self.corpus_ids, self.corpus, strict=True))
        asked = dict(zip(self.query_ids, self.queries, strict=True))
        return [Pair(asked[q], text[d]) for q in self.query_ids for d in self.qrels[q]]


def _raise_first(errors: list[LineError], what: str) -> None:
    if errors:
        lines = len({(e.path, e.line) for e in errors})
        raise TunesmithError(f"{errors[0]} ({lines} {what} line(s) with errors; fix them and rerun)")


def _string(obj: dict, key: str, problems: list[tuple[str, str]], required: bool = True) -> str | None:
    value = obj.get(key)
    if value is None and not required:
        return None
    if not isinstance(value, str):
        problems.append((key, f"expected a string, got {json_type(value)}"))
        return None
    if not value.strip():
        problems.append((key, "empty text"))
        return None
    return value


def _json_objects(path: str, keys: tuple[tuple[str, ...], tuple[str, ...]]):
    """(line, object, problems) for each record of a JSONL file, with unknown/missing keys as problems."""
    required, optional = keys
    for line, value in json_records(path, read_data_text(path)):
        if isinstance(value, BadJSON):
            yield line, None, [(None, str(value))]
        elif not isinstance(value, dict):
            yield line, None, [(None, f"expected a JSON object, got {json_type(value)}")]
        else:
            allowed = required + optional
            problems = [(k, "missing key") for k in required if k not in value]
            problems += [(k, f"unknown key (expected {', '.join(allowed)})") for k in value if k not in allowed]
            yield line, value, problems


def read_pairs_file(path: str) -> list[Pair]:
    """`{"query", "positive", "negative"?}` JSON Lines."""
    pairs, errors = [], []
    for line, obj, problems in _json_objects(path, PAIR_KEYS):
        if obj is not None and not problems:
            texts = [_string(obj, k, problems, required=k != "negative") for k in ("query", "positive", "negative")]
            if not problems:
                pairs.append(Pair(*texts))
        errors += [LineError(path, line, field, reason) for field, reason in problems]
    _raise_first(errors, "pair")
    if not pairs:
        raise TunesmithError(f"{path}: no pairs")
    return pairs


def _read_id_texts(path: Path) -> dict[str, str]:
    """BEIR corpus.jsonl / queries.jsonl: `_id`, `text` and an optional `title` (prepended, as BEIR does)."""
    out, errors = {}, []
    for line, obj, problems in _json_objects(str(path), (("_id", "text"), ("title", "metadata"))):
        if obj is not None and not problems:
            text = _string(obj, "text", problems)
            ident = obj["_id"]
            if not isinstance(ident, str) or not ident:
                problems.append(("_id", f"expected a non-empty string, got {json_type(ident)}"))
            elif ident in out:
                problems.append(("_id", f"duplicate id {ident!r}"))
            if not problems:
                title = obj.get("title")
                out[ident] = f"{title}. {text}" if isinstance(title, str) and title.strip() else text
        errors += [LineError(str(path), line, field, reason) for field, reason in problems]
    _raise_first(errors, path.name)
    return out


def _read_qrels(path: Path, corpus: dict[str, str], queries: dict[str, str]) -> dict[str, dict[str, int]]:
    """`query-id<TAB>corpus-id<TAB>score` with a header line; grade 0 means judged irrelevant."""
    qrels: dict[str, dict[str, int]] = {}
    errors = []
    for number, raw in enumerate(read_data_text(str(path)).split("\n"), 1):
        fields = raw.rstrip("\r").split("\t")
        if not raw.strip() or (number == 1 and fields[0] == "query-id"):
            continue
        if len(fields) != 3:
            errors.append(LineError(str(path), number, None, f"expected 3 tab-separated fields, got {len(fields)}"))
            continue
        query, doc, score = fields
        if query not in queries:
            errors.append(LineError(str(path), number, "query-id", f"{query!r} is not in queries.jsonl"))
        elif doc not in corpus:
            errors.append(LineError(str(path), number, "corpus-id", f"{doc!r} is not in corpus.jsonl"))
        elif not score.strip().lstrip("-").isdigit():
            errors.append(LineError(str(path), number, "score", f"expected an integer, got {score!r}"))
        elif int(score) > 0:
            qrels.setdefault(query, {})[doc] = int(score)
    _raise_first(errors, "qrels")
    if not qrels:
        raise TunesmithError(f"{path}: no relevance judgements with a score above 0")
    return qrels


def read_beir(folder: str, split: str) -> RetrievalSet:
    """A BEIR folder's corpus, the queries judged in `qrels/<split>.tsv` and their judgements."""
    root = Path(folder)
    for needed in ("corpus.jsonl", "queries.jsonl"):
        if not (root / needed).is_file():
            raise TunesmithError(f"{root} is not a BEIR folder: it has no {needed}")
    qrels_path = root / "qrels" / f"{split}.tsv"
    if not qrels_path.is_file():
        found = sorted(p.name for p in (root / "qrels").glob("*.tsv")) if (root / "qrels").is_dir() else []
        raise TunesmithError(f"{root}: no qrels/{split}.tsv (found: {', '.join(found) or 'none'})")
    corpus = _read_id_texts(root / "corpus.jsonl")
    queries = _read_id_texts(root / "queries.jsonl")
    qrels = _read_qrels(qrels_path, corpus, queries)
    query_ids = [q for q in queries if q in qrels]
    return RetrievalSet(list(corpus), list(corpus.values()), query_ids, [queries[q] for q in query_ids], qrels)


def read_pairs(path: str, role: str) -> list[Pair]:
    """Training pairs from a pairs JSONL file or a BEIR folder (its qrels for `role`'s split)."""
    if Path(path).is_dir():
        return read_beir(path, BEIR_SPLITS[role]).pairs()
    return read_pairs_file(path)


def read_labelled(path: str, columns: dict[str, str] | None = None) -> list[LabelledText]:
    """Text/label CSV (header; `columns` maps text/label to its column names) or `{"text", "label"}` JSONL."""
    if Path(path).suffix.lower() == ".csv":
        rows = _read_csv_columns(path, _csv_mapping(path, columns, ("text", "label")))
        return _non_empty([LabelledText(row["text"], row["label"].strip(), line) for line, row in rows], path)
    items, errors = [], []
    for line, obj, problems in _json_objects(path, LABEL_KEYS):
        if obj is not None and not problems:
            text = _string(obj, "text", problems)
            label = obj["label"]
            if isinstance(label, bool) or not isinstance(label, (str, int)) or str(label).strip() == "":
                problems.append(("label", f"expected a string or integer label, got {json_type(label)}"))
            if not problems:
                items.append(LabelledText(text, str(label), line))
        errors += [LineError(path, line, field, reason) for field, reason in problems]
    _raise_first(errors, "labelled")
    return _non_empty(items, path)


def _read_csv_columns(path: str, columns: dict[str, str]) -> list[tuple[int, dict[str, str]]]:
    """(line, {role: cell}) per CSV row; `columns` maps each role to its header name; empty cells are errors."""
    errors: list[LineError] = []
    header, csv_lines = csv_rows(path, read_data_text(path), errors)
    for role, column in columns.items():
        if column not in header:
            raise TunesmithError(f"{path}:1: column {column!r} (for {role}) is not in the header: {', '.join(header)}")
    index = {role: header.index(column) for role, column in columns.items()}
    rows = []
    for line, row in csv_lines:
        bad = [role for role in columns if not row[index[role]].strip()]
        errors += [LineError(path, line, columns[role], "empty value") for role in bad]
        if not bad:
            rows.append((line, {role: row[i] for role, i in index.items()}))
    _raise_first(errors, "CSV")
    return rows


def _csv_mapping(path: str, columns: dict[str, str] | None, roles: tuple[str, ...]) -> dict[str, str]:
    columns = columns or {role: role for role in roles}
    if set(columns) != set(roles):
        raise TunesmithError(
            f"{path}: the column mapping needs exactly {' and '.join(roles)}, got {', '.join(columns) or 'nothing'}"
        )
    return columns


def _non_empty(items: list, path: str) -> list:
    if not items:
        raise TunesmithError(f"{path}: no examples")
    return items


def read_texts(path: str, columns: dict[str, str] | None = None) -> list[str]:
    """Raw text for `mlm`: `.txt` paragraphs, `{"text"}` JSON Lines (the decoder's `text` format), or a
    CSV's text column (`columns` may name it: {text: abstract}; other columns are ignored), or a BEIR
    folder's corpus (domain-adaptive pre-training on the documents to be searched)."""
    if Path(path).is_dir():
        return list(_read_id_texts(Path(path) / "corpus.jsonl").values())
    if Path(path).suffix.lower() == ".csv":
        rows = _read_csv_columns(path, {"text": (columns or {}).get("text", "text")})
        return _non_empty([row["text"] for _, row in rows], path)
    loaded = read_examples(path, "text")
    _raise_first([e for e in loaded.errors if e.severity == "error"], "text")
    return _non_empty([e.text for e in loaded.examples], path)


@dataclass(frozen=True)
class Passages:
    """A retrieval corpus: ids and texts in file order."""

    ids: list[str]
    texts: list[str]


def _passage_id(obj: dict, problems: list[tuple[str, str]]) -> str | None:
    keys = [k for k in ("id", "_id") if k in obj]
    if len(keys) != 1:
        problems.append(("id", "missing key" if not keys else "give `id` or `_id`, not both"))
        return None
    ident = obj[keys[0]]
    if isinstance(ident, bool) or not isinstance(ident, (str, int)) or str(ident).strip() == "":
        problems.append((keys[0], f"expected a non-empty string or integer, got {json_type(ident)}"))
        return None
    return str(ident)


def read_passages(path: str) -> Passages:
    """Passages to retrieve from: JSON Lines `{"id", "text", "title"?}` (BEIR's `_id` too; a title is
    prepended as BEIR does), a BEIR folder (its corpus.jsonl), or a .txt file of blank-line separated
    passages, each known by the number of the line it starts on."""
    if Path(path).is_dir():
        corpus = _read_id_texts(Path(path) / "corpus.jsonl")
        return Passages(list(corpus), list(corpus.values()))
    if Path(path).suffix.lower() == ".txt":
        loaded = read_examples(path, "text")
        _raise_first([e for e in loaded.errors if e.severity == "error"], "passage")
        return Passages([str(e.line) for e in loaded.examples], [e.text for e in loaded.examples])
    ids, texts, seen, errors = [], [], set(), []
    for line, obj, problems in _json_objects(path, PASSAGE_KEYS):
        if obj is not None:
            ident = _passage_id(obj, problems)
            text = _string(obj, "text", problems) if "text" in obj else None
            if ident in seen:
                problems.append(("id", f"duplicate id {ident!r}"))
            if not problems:
                title = obj.get("title")
                seen.add(ident)
                ids.append(ident)
                texts.append(f"{title}. {text}" if isinstance(title, str) and title.strip() else text)
        errors += [LineError(path, line, field, reason) for field, reason in problems]
    _raise_first(errors, "passage")
    if not ids:
        raise TunesmithError(f"{path}: no passages")
    return Passages(ids, texts)
