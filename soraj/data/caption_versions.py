"""Caption versions of a dataset: the reader of a `soraj recaption` folder, and the per-sample
caption mix (config.data.caption_mix) over the caption fields a source's records carry."""

import json
import pathlib

import grain
import numpy as np

from soraj.data.video_io import read_video

CAPTIONS_FILE = "captions.jsonl"
DATASET_FILE = "dataset.json"
KINDS = ("shapes_tfds", "video_folder")
# What every recaptioned record must carry beside its key ("index"/"split" or "path").
REQUIRED_CAPTIONS = ("caption_original", "caption_dense")
DEFAULT_CAPTION_MIX = (("caption", 1.0),)  # today's behaviour: the record's own "caption"


# ---- The caption mix ----


def check_caption_mix(mix) -> tuple[tuple[str, float], ...]:
    """((field, odds), ...) with distinct str fields, odds in [0, 1] summing to 1; else a clear
    error. Returns the mix as a tuple of (str, float) pairs (configs hand in lists)."""
    try:
        pairs = tuple((field, float(odds)) for field, odds in mix)
    except (TypeError, ValueError) as error:
        raise ValueError(
            f"caption_mix must be pairs (field, odds), e.g. (('caption_dense', 0.95), "
            f"('caption_original', 0.05)); got {mix!r}"
        ) from error
    fields = [field for field, _ in pairs]
    if not pairs or not all(isinstance(f, str) and f for f in fields):
        raise ValueError(f"caption_mix needs at least one (field name, odds) pair, got {mix!r}")
    if len(set(fields)) != len(fields):
        raise ValueError(f"caption_mix names a field twice: {fields}")
    for field, odds in pairs:
        if not 0.0 <= odds <= 1.0:
            raise ValueError(f"caption_mix odds of {field!r} must be in [0, 1], got {odds}")
    total = sum(odds for _, odds in pairs)
    if abs(total - 1.0) > 1e-6:
        raise ValueError(f"caption_mix odds must sum to 1, got {total:.6g} from {mix!r}")
    return pairs


def caption_fields(source) -> tuple[str, ...]:
    """The caption fields of a source's records: its `caption_fields`, or else the str-valued
    keys naming a caption in record 0 (reading one record is cheap next to training)."""
    declared = getattr(source, "caption_fields", None)
    if declared is not None:
        return tuple(declared)
    record = source[0]
    return tuple(sorted(k for k, v in record.items() if "caption" in k and isinstance(v, str)))


def check_mix_fields(mix, source) -> None:
    """Every field of the mix is in the source's records; checked before training starts."""
    mix = check_caption_mix(mix)
    if mix == DEFAULT_CAPTION_MIX:
        return  # every source has "caption"; no record is read
    have = caption_fields(source)
    missing = [field for field, _ in mix if field not in have]
    if missing:
        raise ValueError(
            f"config.data.caption_mix names {', '.join(map(repr, missing))}, which the records "
            f"of {source!r} do not have; their caption fields: {', '.join(have) or 'none'}"
        )


def pick_caption(example: dict, mix, rng: np.random.Generator) -> str:
    """One caption of the example, drawn by the mix's odds from the example's rng. A one-field
    mix draws nothing, so the default leaves the rng stream (and every batch) as it was."""
    if len(mix) == 1:
        return example[mix[0][0]]
    cumulative = np.cumsum([odds for _, odds in mix])
    # side="right" skips fields of odds 0; the clip guards a sum that rounds below 1.
    chosen = min(int(np.searchsorted(cumulative, rng.random(), side="right")), len(mix) - 1)
    return example[mix[chosen][0]]


# ---- A `soraj recaption` folder ----


def _read_json(path: pathlib.Path, what: str):
    if not path.is_file():
        raise ValueError(f"{path.parent} is not a `soraj recaption` folder: it has no {what}")
    return json.loads(path.read_text())


def _read_records(path: pathlib.Path, key_fields: tuple[str, ...]) -> list[dict]:
    if not path.is_file():
        raise ValueError(f"{path.parent} is not a `soraj recaption` folder: no {CAPTIONS_FILE}")
    records = []
    for number, line in enumerate(path.read_text().splitlines(), start=1):
        if not line.strip():
            continue
        try:
            record = json.loads(line)
        except json.JSONDecodeError as error:
            raise ValueError(f"{path}:{number}: not a JSON line: {line[:80]!r}") from error
        needed = key_fields + REQUIRED_CAPTIONS
        missing = [k for k in needed if k not in record] if isinstance(record, dict) else needed
        if missing:
            raise ValueError(
                f"{path}:{number}: a record is an object with {', '.join(needed)}; "
                f"missing {', '.join(missing)}"
            )
        if not all(isinstance(record[k], str) for k in REQUIRED_CAPTIONS):
            raise ValueError(f"{path}:{number}: {', '.join(REQUIRED_CAPTIONS)} must be strings")
        records.append(record)
    if not records:
        raise ValueError(f"{path} holds no records")
    return records


def _is_caption(key: str, value) -> bool:
    return key.startswith("caption_") and isinstance(value, str)  # not a flag such as caption_ok


class RecaptionedSource(grain.sources.RandomAccessDataSource):
    """Records of a `soraj recaption` folder (captions.jsonl + dataset.json), each with its
    video read from the input dataset: record `index` of a split of the Shapes TFDS dataset, or
    a video file's first max_frames frames at native size. Items: {"video": uint8 (T, H, W, 3),
    "caption": the dense caption, every caption_* field of the record, "index" and "split" or
    "path"}; a Shapes record adds "caption_oracle", the exact dense caption of the clip.

    `split` keeps the Shapes records of one TFDS split (None: all); video records have none."""

    def __init__(self, root, max_frames: int, split: str | None = None):
        self.root, self.max_frames, self.split = pathlib.Path(root), max_frames, split
        info = _read_json(self.root / DATASET_FILE, DATASET_FILE)
        self.kind, self.input = info.get("kind"), pathlib.Path(str(info.get("input", "")))
        if self.kind not in KINDS:
            raise ValueError(
                f"{self.root / DATASET_FILE}: unknown kind {self.kind!r}; allowed: "
                f"{', '.join(KINDS)}"
            )
        keys = ("index", "split") if self.kind == "shapes_tfds" else ("path",)
        records = _read_records(self.root / CAPTIONS_FILE, keys)
        if self.kind == "shapes_tfds" and split is not None:
            splits = sorted({r["split"] for r in records})
            records = [r for r in records if r["split"] == split]
            if not records:
                raise ValueError(f"{self.root} has no records of split {split!r}; it has {splits}")
        self._records = records
        self._splits: dict = {}  # split → ShapesRecordSource, opened on first use per process
        fields = {k for r in records for k, v in r.items() if _is_caption(k, v)}
        if self.kind == "shapes_tfds":
            fields.add("caption_oracle")
            self._check_indices()
        self.caption_fields = ("caption", *sorted(fields))

    def _shapes(self, split: str):
        if split not in self._splits:
            # Imported here: the caption mix of every pipeline needs this module, TFDS only a
            # recaptioned Shapes folder.
            from soraj.data.tfds_shapes import load_shapes_dataset

            self._splits[split] = load_shapes_dataset(self.input, split)
        return self._splits[split]

    def _check_indices(self) -> None:
        for split in sorted({r["split"] for r in self._records}):
            size = len(self._shapes(split))
            bad = [r["index"] for r in self._records if r["split"] == split]
            bad = [i for i in bad if not (isinstance(i, int) and 0 <= i < size)]
            if bad:
                raise ValueError(
                    f"{self.root / CAPTIONS_FILE}: indices {bad[:5]} of split {split!r} are "
                    f"outside the {size} records of {self.input}"
                )

    def __len__(self) -> int:
        return len(self._records)

    def __getitem__(self, index: int) -> dict:
        record = self._records[index]
        captions = {k: v for k, v in record.items() if _is_caption(k, v)}
        item = {"caption": captions["caption_dense"], **captions}
        if self.kind == "shapes_tfds":
            clip = self._shapes(record["split"])[record["index"]]
            item.update(
                video=clip["video"],
                caption_oracle=clip["caption"],
                index=record["index"],
                split=record["split"],
            )
        else:
            path = pathlib.Path(record["path"])
            path = path if path.is_absolute() else self.input / path
            item.update(video=read_video(path, max_frames=self.max_frames)[0], path=str(path))
        return item

    # Opened TFDS readers stay behind when grain pickles the source into a worker.
    def __getstate__(self) -> dict:
        return {**self.__dict__, "_splits": {}}

    def __repr__(self) -> str:
        return (
            f"RecaptionedSource(root={str(self.root)!r}, kind={self.kind!r}, split={self.split!r})"
        )
