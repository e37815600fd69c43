"""The data converter of every Temporal client and worker here: pydantic JSON on the wire.

temporalio's PydanticPayloadConverter caches a TypeAdapter per type, but a workflow gets
a fresh converter instance per run, so each run rebuilt the schema of every dataclass it
decoded (~1 ms each; 6% of the worker's CPU in a 20 plans/s profile). One JSON converter
shared by all instances keeps one TypeAdapter per type for the life of the process.
"""
from __future__ import annotations

import dataclasses

from temporalio.contrib.pydantic import PydanticJSONPlainPayloadConverter
from temporalio.converter import (
    CompositePayloadConverter,
    DataConverter,
    DefaultFailureConverter,
    DefaultFailureConverterWithEncodedAttributes,
    DefaultPayloadConverter,
    JSONPlainPayloadConverter,
)

from workflows.codec import PLAIN_MARK, HistoryCodec, HistoryKeys

# The types are this project's few wire models and stages, so the cache needs no bound.
_SHARED_JSON = PydanticJSONPlainPayloadConverter(max_cached_type_adapters=None)


@dataclasses.dataclass(frozen=True)
class Unencrypted:
    """A value that reached this process in plain text while history encryption is on: written by a
    client without the history keys (workflows/codec.py PLAIN_MARK). The workflow refuses to run a plan
    given this way; a halt signal given this way still halts."""

    value: object


class PlanPayloadConverter(CompositePayloadConverter):
    def __init__(self) -> None:
        super().__init__(
            *(
                _SHARED_JSON if isinstance(converter, JSONPlainPayloadConverter) else converter
                for converter in DefaultPayloadConverter.default_encoding_payload_converters
            )
        )

    def from_payloads(self, payloads, type_hints=None):
        values = super().from_payloads(payloads, type_hints)
        return [Unencrypted(value) if PLAIN_MARK in payload.metadata else value for payload, value in zip(payloads, values)]


data_converter = DataConverter(payload_converter_class=PlanPayloadConverter)


def history_converter(keys: HistoryKeys | None, *, encrypt: bool = True) -> DataConverter:
    """The converter of every client and worker: `data_converter` with the history codec when keys are
    loaded. Encrypting, failures carry their message and stack trace as an (encrypted) payload too:
    an error text can quote the plan."""
    if keys is None:
        return data_converter
    return dataclasses.replace(
        data_converter,
        payload_codec=HistoryCodec(keys, encrypt=encrypt),
        failure_converter_class=DefaultFailureConverterWithEncodedAttributes if encrypt else DefaultFailureConverter,
    )
