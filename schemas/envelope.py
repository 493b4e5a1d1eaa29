"""What every event kind carries besides its own fields: the contract version a producer wrote
it against, and the top-level fields this version of the contract does not know.

`attributes` is not a wire field: decoding fills it with the unknown top-level fields of a
record (when the kind's policy is `keep`), it is stored in the `attributes` jsonb column, and
`schemas.codec.encode` writes its entries back at the top level. A producer sending a field
literally named "attributes" sends an unknown field like any other.
"""

from __future__ import annotations

from typing import Any, ClassVar

from pydantic import BaseModel, ConfigDict, Field
from pydantic.json_schema import SkipJsonSchema

from schemas.columns import Integer, JsonObject

# Unknown fields kept per record: bounded like any stored JSON (depth, size, no NUL, 64-bit integers).
MAX_ATTRIBUTES_BYTES = 64 * 1024
ATTRIBUTES = "attributes"


def SchemaVersion(known: int) -> Any:
    """The optional `schema_version` of a kind whose newest major version is `known`."""
    return Integer("int2", 1, known)


class Event(BaseModel):
    """Base of the event models. A kind that makes a breaking change raises its SCHEMA_VERSION
    and redeclares `schema_version` with `SchemaVersion(new)`."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    # The newest major version of the kind's contract this code knows; absent on the wire = 1.
    SCHEMA_VERSION: ClassVar[int] = 1
    event_kind: ClassVar[str]

    schema_version: SchemaVersion(1) | None = Field(  # type: ignore[valid-type]
        None,
        description=(
            "Major version of this kind's contract the producer wrote the event against (absent: 1). "
            "A version newer than the workers know goes to the dead-letter topic as unsupported_version, "
            "from where it can be replayed once they know it."
        ),
    )
    attributes: SkipJsonSchema[JsonObject(MAX_ATTRIBUTES_BYTES) | None] = Field(  # type: ignore[valid-type]
        None, exclude=True, description="Top-level fields the contract does not know, kept as they came."
    )
