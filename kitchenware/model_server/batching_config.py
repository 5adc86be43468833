"""Dynamic batching's settings, written as TF Serving writes them.

`BatchingConfig` holds TF Serving's BatchingParameters with TF Serving's
meaning for each field and refuses inconsistent ones. `parse_batching_parameters`
reads TF Serving's `--batching_parameters_file` (protobuf text format of
`BatchingParameters`), so the file shipped for the official server works here
too; unknown fields are an error, not ignored. The message type is built at run
time from a descriptor, so reading the file needs neither TensorFlow nor TF Serving.
"""

from __future__ import annotations

import dataclasses
import functools
from pathlib import Path

from google.protobuf import (
    descriptor_pb2,
    descriptor_pool,
    message_factory,
    text_format,
    wrappers_pb2,  # noqa: F401  (registers wrappers.proto in the pool)
)

from kitchenware.core.errors import KitchenwareError


@dataclasses.dataclass(frozen=True)
class BatchingConfig:
    """TF Serving's BatchingParameters, with TF Serving's meaning for each field."""

    max_batch_size: int = 32
    batch_timeout_micros: int = 5000
    max_enqueued_batches: int = 100
    num_batch_threads: int = 1
    thread_pool_name: str = "batch_threads"
    allowed_batch_sizes: tuple[int, ...] = ()
    # Accepted for compatibility: images of one signature all have one size here.
    pad_variable_length_inputs: bool = False
    # TF Serving's rule: a request is never larger than max_batch_size; with
    # splitting on, it may span several batches of max_execution_batch_size rows.
    enable_large_batch_splitting: bool = False
    max_execution_batch_size: int | None = None

    def __post_init__(self):
        def positive(name):
            if getattr(self, name) < 1:
                raise KitchenwareError(f"batching: {name} must be >= 1, got {getattr(self, name)}")

        for name in ("max_batch_size", "max_enqueued_batches", "num_batch_threads"):
            positive(name)
        if self.batch_timeout_micros < 0:
            raise KitchenwareError(
                f"batching: batch_timeout_micros must be >= 0, got {self.batch_timeout_micros}"
            )
        if self.max_execution_batch_size is not None:
            if not self.enable_large_batch_splitting:
                raise KitchenwareError(
                    "batching: max_execution_batch_size applies only with "
                    "enable_large_batch_splitting { value: true } (TF Serving ignores it otherwise)"
                )
            positive("max_execution_batch_size")
        sizes = self.allowed_batch_sizes
        if sizes:
            if list(sizes) != sorted(set(sizes)) or sizes[0] < 1:
                raise KitchenwareError(
                    f"batching: allowed_batch_sizes must be positive and increasing, got {list(sizes)}"
                )
            # TF Serving (bundle_factory_util.h) compares with max_batch_size, split or not.
            if sizes[-1] != self.max_batch_size:
                raise KitchenwareError(
                    f"batching: the last allowed_batch_sizes entry ({sizes[-1]}) must equal "
                    f"max_batch_size ({self.max_batch_size})"
                )

    @property
    def execution_batch_size(self) -> int:
        """Rows per model run: max_execution_batch_size when splitting, else max_batch_size."""
        if self.enable_large_batch_splitting and self.max_execution_batch_size:
            return self.max_execution_batch_size
        return self.max_batch_size

    @property
    def timeout_s(self) -> float:
        return self.batch_timeout_micros / 1e6

    def padded_size(self, rows: int) -> int:
        """The smallest allowed batch size that holds `rows` (rows itself when unrestricted)."""
        for size in self.allowed_batch_sizes:
            if size >= rows:
                return size
        return rows


# -- TF Serving's text format ------------------------------------------------
# (field, type, label); wrapper types are written `name { value: X }` in the file.
_FIELDS = [
    ("max_batch_size", "google.protobuf.Int64Value", "optional"),
    ("batch_timeout_micros", "google.protobuf.Int64Value", "optional"),
    ("max_enqueued_batches", "google.protobuf.Int64Value", "optional"),
    ("num_batch_threads", "google.protobuf.Int64Value", "optional"),
    ("thread_pool_name", "google.protobuf.StringValue", "optional"),
    ("allowed_batch_sizes", "int64", "repeated"),
    ("pad_variable_length_inputs", "bool", "optional"),
    ("enable_large_batch_splitting", "google.protobuf.BoolValue", "optional"),
    ("max_execution_batch_size", "google.protobuf.Int64Value", "optional"),
]


@functools.cache
def _batching_parameters_class():
    """BatchingParameters as a protobuf message class, built at run time (no TF Serving needed)."""
    f = descriptor_pb2.FieldDescriptorProto
    file = descriptor_pb2.FileDescriptorProto(
        name="kitchenware/batching_parameters.proto",
        package="kitchenware.serving",
        syntax="proto3",
        dependency=["google/protobuf/wrappers.proto"],
    )
    message = file.message_type.add(name="BatchingParameters")
    for number, (name, type_, label) in enumerate(_FIELDS, start=1):
        field = message.field.add(name=name, number=number)
        field.label = f.LABEL_REPEATED if label == "repeated" else f.LABEL_OPTIONAL
        if type_ == "int64":
            field.type = f.TYPE_INT64
        elif type_ == "bool":
            field.type = f.TYPE_BOOL
        else:
            field.type = f.TYPE_MESSAGE
            field.type_name = "." + type_
    pool = descriptor_pool.Default()
    try:
        descriptor = pool.FindMessageTypeByName("kitchenware.serving.BatchingParameters")
    except KeyError:
        descriptor = pool.Add(file).message_types_by_name["BatchingParameters"]
    return message_factory.GetMessageClass(descriptor)


def parse_batching_parameters(text: str, base: BatchingConfig | None = None) -> BatchingConfig:
    """Parse TF Serving's batching parameters text; fields not in `text` keep `base`'s values."""
    message = _batching_parameters_class()()
    try:
        text_format.Parse(text, message)
    except text_format.ParseError as exc:
        known = ", ".join(name for name, _, _ in _FIELDS)
        raise KitchenwareError(
            f"batching parameters: {exc} (TF Serving's fields are: {known})"
        ) from None
    values = {}
    for name, type_, label in _FIELDS:
        if label == "repeated":
            if len(getattr(message, name)):
                values[name] = tuple(int(v) for v in getattr(message, name))
        elif type_.startswith("google.protobuf."):
            if message.HasField(name):
                values[name] = getattr(message, name).value
        elif getattr(message, name):
            values[name] = getattr(message, name)
    return dataclasses.replace(base or BatchingConfig(), **values)


def load_batching_parameters(
    path: str | Path, base: BatchingConfig | None = None
) -> BatchingConfig:
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as exc:
        raise KitchenwareError(f"cannot read batching parameters file {path}: {exc}") from None
    try:
        return parse_batching_parameters(text, base)
    except KitchenwareError as exc:
        raise KitchenwareError(f"{path}: {exc}") from None
